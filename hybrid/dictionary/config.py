"""What a dictionary is and accepts: its build configuration, the on-disk format constants,
the key normalisation and the array contract at its boundary.  No FAISS here."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybrid.patches import check_patch_size

__all__ = [
    "DictionaryConfig",
    "FAST_CPU",
    "FORMAT_VERSION",
    "NORMALISATION",
    "helmert_basis",
]

#: Version of the on-disk layout (index.faiss + payload.h5 + meta.json).
FORMAT_VERSION = 1
#: The key normalisation (see the package docstring); stored and checked in ``meta.json``.
NORMALISATION = "mean-helmert"
INDEX_FILE = "index.faiss"
PAYLOAD_FILE = "payload.h5"
META_FILE = "meta.json"

#: Faster CPU setting (more throughput for a little RMSE; measured in
#: experiments/results/dictionary_search.md): ``DictionaryConfig(**FAST_CPU)`` at build, or
#: ``d.set_search_params(FAST_CPU["search_params"])`` on such a dictionary.
FAST_CPU = {"factory": "IVF{nlist},PQ16x4fs,RFlat", "search_params": "nprobe=8,k_factor_rf=8"}


@dataclass(frozen=True)
class DictionaryConfig:
    """How a :class:`~hybrid.dictionary.PatchDictionary` is built.  Stored in ``meta.json``.

    Parameters
    ----------
    patch_size : int
        Odd side of the square patches (7).
    hu_scale : float
        Fixed HU scale dividing the mean-removed keys (100 HU).
    pca_dim : int or None
        Keep this many principal components of the (Helmert) keys, fitted
        on the *ND* patches (the subspace where structure lives), or None to
        keep all ``patch_size**2 - 1``.  The projection is stored with the
        dictionary and folded into one ``(patch_size**2, key_dim)`` matrix.
    factory : str
        FAISS ``index_factory`` string over the ``key_dim``-dimensional keys.
        ``{nlist}`` is replaced by a power of two near ``4 sqrt(n)`` (at most
        n / 39) and the resolved string is stored.  The default was chosen by
        ``experiments/bench_dictionary.py``.
    search_params : str
        ``faiss.ParameterSpace`` string applied after loading, e.g.
        ``"nprobe=16"`` or ``"nprobe=8,k_factor_rf=8"``; entries the index
        does not know are skipped.
    max_patches : int
        Size of the dictionary (entries).  The default (200 000) is the shipped
        dictionary's (``experiments/configs/shipped.json`` keeps every
        DictionaryConfig default); it stays inside the 40 MB budget on disk.
    train_stride : int
        Grid step of the candidate patch centres inside the body.
    hu_bands : tuple of float
        Inner edges (HU) of the bands of the local ND mean used to stratify.
    std_bins : tuple of float
        Inner edges (HU) of the bins of the local ND standard deviation.
    value_dtype : {"float16", "float32"}
        Storage type of the ND values (float16: <= 1 HU rounding below 2048 HU).
    n_heldout : int
        Sampled patches kept out of the index to calibrate the distance.
    seed : int
        Seed of the sampling (builds are reproducible).
    cpu_graph : int or None
        On CPU, search an HNSW graph with this many links per node (``M``)
        built over the stored exact keys when first needed, instead of the
        stored index (``efSearch`` comes from ``search_params``).  The graph
        is built single-threaded, so it is the same on every machine and
        every load (results are reproducible), once: it is cached on disk
        (:func:`~hybrid.dictionary.graph_cache_dir`).  It is not shipped
        because it would take the default dictionary over its 40 MB budget.
        Nodes are stored, and queries sent, in a locality (Morton) order of
        the leading key coordinates, so consecutive queries walk nearby
        memory; where the graph's answer is farther than noise explains
        (normalised distance > 1) the stored index takes a second look.
        Speed and recall per ``efSearch``: experiments/results/dictionary_search.md.
        None: search the stored index (what a GPU always does).
    """

    patch_size: int = 7
    hu_scale: float = 100.0
    pca_dim: int | None = 16
    factory: str = "IVF{nlist},Flat"
    search_params: str = "nprobe=16,efSearch=10"
    max_patches: int = 200_000
    train_stride: int = 1
    hu_bands: tuple[float, ...] = (-900.0, -500.0, -150.0, 150.0, 400.0)
    std_bins: tuple[float, ...] = (10.0, 25.0, 50.0, 100.0, 200.0)
    value_dtype: str = "float16"
    n_heldout: int = 2000
    seed: int = 0
    cpu_graph: int | None = 16

    def __post_init__(self) -> None:
        check_patch_size(self.patch_size)
        if self.patch_size < 3:
            raise ValueError(f"Expected patch_size >= 3; received {self.patch_size}.")
        if not (np.isfinite(self.hu_scale) and self.hu_scale > 0):
            raise ValueError(f"Expected a positive hu_scale; received {self.hu_scale!r}.")
        if self.max_patches < 1 or self.train_stride < 1 or self.n_heldout < 0:
            raise ValueError(
                "Expected max_patches >= 1, train_stride >= 1, n_heldout >= 0; received "
                f"{self.max_patches}, {self.train_stride}, {self.n_heldout}."
            )
        if self.pca_dim is not None and not (1 <= self.pca_dim <= self.patch_size**2 - 1):
            raise ValueError(
                f"Invalid value for argument `pca_dim`. Expected None or an integer in "
                f"[1, {self.patch_size**2 - 1}]. Received pca_dim={self.pca_dim!r}."
            )
        if self.cpu_graph is not None and not (
            isinstance(self.cpu_graph, (int, np.integer)) and 4 <= self.cpu_graph <= 128
        ):
            raise ValueError(
                f"Invalid value for argument `cpu_graph`. Expected None or an integer in [4, 128] "
                f"(HNSW links per node). Received cpu_graph={self.cpu_graph!r}."
            )
        if self.value_dtype not in ("float16", "float32"):
            raise ValueError(
                f"Invalid value for argument `value_dtype`. Expected 'float16' or 'float32'. "
                f"Received value_dtype={self.value_dtype!r}."
            )
        for name in ("hu_bands", "std_bins"):
            edges = tuple(float(e) for e in getattr(self, name))
            if list(edges) != sorted(edges):
                raise ValueError(f"Expected increasing {name}; received {edges}.")
            object.__setattr__(self, name, edges)

    @property
    def key_dim(self) -> int:
        return int(self.pca_dim) if self.pca_dim else self.patch_size**2 - 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hu_bands"], d["std_bins"] = list(self.hu_bands), list(self.std_bins)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DictionaryConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(
            **{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        )


def helmert_basis(n: int) -> np.ndarray:
    """Orthonormal basis (rows) of the vectors of length ``n`` summing to zero.

    Row ``k`` (``k = 1 .. n-1``) of the Helmert matrix is
    ``[1, ..., 1, -k, 0, ..., 0] / sqrt(k (k + 1))`` (k ones).  ``H @ p``
    therefore ignores the mean of ``p`` and ``|H p| = |p - mean(p)|``.

    Returns
    -------
    ndarray of shape (n - 1, n), float64
    """
    h = np.zeros((n - 1, n))
    for k in range(1, n):
        h[k - 1, :k] = 1.0
        h[k - 1, k] = -k
        h[k - 1] /= math.sqrt(k * (k + 1))
    return h


# --------------------------------------------------------------------------- inputs


def positive_int(value: Any, name: str, what: str = "") -> int:
    """``value`` as an int >= 1 (not a bool), or the ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a positive integer{what}. "
            f"Received {name}={value!r}."
        )
    return int(value)


