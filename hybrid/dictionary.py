"""Super-resolution patch dictionary: low-dose 7x7 patch -> normal-dose 7x7 patch.

A :class:`PatchDictionary` stores pairs (key, value) cut from paired
ultra-low-dose (ULD) and normal-dose (ND) images of the same anatomy: the key
is the normalised ULD patch, the value the ND patch at the same place.  To
restore an image, every body pixel's ULD patch (on a ``stride`` grid) looks up
its nearest key(s) in a FAISS index; the values are put back by overlap-add
(the mean of the overlapping predicted patches).  Together with the proposal
the dictionary returns a per-pixel nearest-neighbour distance, normalised so
that a blender can threshold it (see :meth:`PatchDictionary.propose`).

FAISS is imported only inside the functions of this module that need it, so
``import hybrid`` stays light.

Normalisation (``"mean-helmert"``)
    A patch ``p`` (49 HU values) becomes the key ``H p / hu_scale`` where the
    rows of ``H`` (48 x 49) are the orthonormal Helmert basis of the vectors
    orthogonal to the constant patch.  That is exactly "subtract the patch
    mean" expressed in 48 coordinates: distances between keys are the HU
    distances between mean-removed patches (divided by ``hu_scale``), so a
    match is about structure, not absolute level, and nothing is lost (the
    49th, constant coordinate is the mean, kept separately).  48 also divides
    by 4, 8, 12, 16, 24, as FAISS product quantisers need.  The value stored
    is ``nd_patch - mean(uld_patch)``; a query adds its own ULD patch mean
    back, so a patch of lung parenchyma seen at -850 HU restores to the level
    measured in the query, not in the training patient.  We scale by a
    *fixed* ``hu_scale`` (100 HU) rather than by each patch's standard
    deviation: per-patch contrast normalisation would blow pure noise in flat
    regions up to the size of an edge and destroy the meaning of the
    distance, which the blender needs.
Dimension reduction
    ``pca_dim=16`` principal components of the Helmert keys, fitted in numpy
    on the *ND* patches (the subspace where structure lives; for white noise
    the same as fitting on ULD keys) and folded with the Helmert basis into
    one ``(49, 16)`` projection stored with the dictionary.  On synthetic
    chest slices (ULD noise 40 HU) 16 components hold 87 % of the ND
    structure variance and cost 1.3 HU of proposal RMSE (15.6 -> 16.9 HU vs
    48-d exact search) while making the search 3x cheaper.  Why numpy and not
    a ``"PCA16,..."`` factory prefix: in the 48-d noisy key space the
    nearest neighbours of a ULD patch are near-ties (median 2nd/1st
    distance ratio 1.03), so no approximate index reaches a useful recall@1
    against exact 48-d search (IVF-Flat nprobe 32: 0.84); in the 16-d space
    the contrast is higher (1.06, 10th/1st 1.24) and the index, its exact
    reference and the reported distances all live in the same space.  A
    ``"PCA..."`` prefix in ``factory`` still works, as an extra reduction.
Index
    ``"IVF{nlist},Flat"`` with ``nprobe=16``, chosen by
    ``experiments/bench_dictionary.py`` (150 k entries, synthetic 512 x 512
    slices, ULD noise 40 HU, 2 shared cores): recall@1 0.88 against exact
    search, proposal RMSE at stride 2 of 9.2 HU (exact 16-d search 9.1,
    exact 48-d 8.2, ULD input 40.1), 33-80 k queries/s depending on the
    machine's load (exact search 16 k/s), 14 MB on disk.  ``FAST_CPU``
    (fast-scan PQ with refinement) is 4x faster (129 k/s) for +1 HU RMSE
    although its recall@1 is only 0.08: with near-tied neighbours a
    "wrong" neighbour is almost as good, so recall@1 is a poor guide here;
    choose with the RMSE.  HNSW32 reaches recall 0.995 but is 4x larger
    (53 MB) and no faster.  On a GPU, IVF-Flat is moved there as is.
Diversity
    Training candidates are taken on a ``train_stride`` grid inside the body
    and stratified by HU band of the local ND mean (air, lung, fat, soft
    tissue, dense, bone) x local ND standard deviation (flat ... edge).  The
    patch budget is shared by water-filling: strata with few patches (edges,
    bone, vessels) are kept whole, large flat ones (air, water) are
    subsampled to what is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybrid._parallel import available_cores, thread_map
from hybrid.io._atomic import atomic_file, sha256_file
from hybrid.patches import (
    check_patch_size,
    check_stride,
    extract_patches,
    grid_centers,
    overlap_add,
)
from hybrid.proposal import Proposal
from hybrid.volume import Volume, as_hu_array

__all__ = [
    "DictionaryConfig",
    "PatchDictionary",
    "DictionaryMismatchError",
    "helmert_basis",
    "FORMAT_VERSION",
    "FAST_CPU",
]

#: Version of the on-disk layout (index.faiss + payload.h5 + meta.json).
FORMAT_VERSION = 1
NORMALISATION = "mean-helmert"
_INDEX_FILE = "index.faiss"
_PAYLOAD_FILE = "payload.h5"
_META_FILE = "meta.json"


#: Faster CPU setting (4x the default's throughput for about +1 HU RMSE on the
#: benchmark): ``DictionaryConfig(**FAST_CPU)`` at build, or
#: ``d.set_search_params(FAST_CPU["search_params"])`` on such a dictionary.
FAST_CPU = {"factory": "IVF{nlist},PQ16x4fs,RFlat", "search_params": "nprobe=8,k_factor_rf=8"}


class DictionaryMismatchError(ValueError):
    """A stored dictionary does not match what the caller expects."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DictionaryConfig:
    """How a :class:`PatchDictionary` is built.  Stored in ``meta.json``.

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
        FAISS ``index_factory`` string over the ``key_dim``-dimensional keys.  ``{nlist}`` is replaced by a power of two near
        ``4 sqrt(n)`` (at most n / 39) and the resolved string is stored.
        The default was chosen by ``experiments/bench_dictionary.py``.
    search_params : str
        ``faiss.ParameterSpace`` string applied after loading, e.g.
        ``"nprobe=16"`` or ``"nprobe=8,k_factor_rf=8"``; entries the index
        does not know are skipped.
    max_patches : int
        Size of the dictionary (entries).  150 000 entries with float16
        values and the default index take 14 MB on disk (budget: 40 MB).
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
        is built single-threaded (efConstruction 200), so it is the same on
        every machine and every load (results are reproducible); it takes
        about 30 s for 200 k entries, once: it is cached on disk
        (:func:`graph_cache_dir`).  It is not shipped because it would take
        the default dictionary over its 40 MB budget (38 MB for the graph
        alone).  Nodes are stored, and queries sent, in a locality (Morton)
        order of the leading key coordinates, so consecutive queries walk
        nearby memory; where the graph's answer is farther than noise
        explains (normalised distance > 1) the stored index takes a second
        look.  Measured on 395 k body patches of a real 2 % chest series at
        stride 2 (2 shared cores, same run): efSearch 10: 351 k queries/s,
        recall@1 0.878, L2 excess 0.82 % against exact search (held-out
        hybrid RMSE within 0.01 % of efSearch 16); efSearch 16: 249 k/s,
        recall 0.933, excess 0.40 %; the previous graph (build order,
        efConstruction 40, efSearch 16): 208 k/s, recall 0.862, excess
        1.06 %.  efSearch 11-14 were slower than 16 in FAISS 1.15.1 on this
        CPU.  None: search the stored index (what a GPU always does).
    """

    patch_size: int = 7
    hu_scale: float = 100.0
    pca_dim: int | None = 16
    factory: str = "IVF{nlist},Flat"
    search_params: str = "nprobe=16,efSearch=10"
    max_patches: int = 150_000
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


# --------------------------------------------------------------------------- helpers


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


@contextlib.contextmanager
def _faiss_threads(n_threads: int | None) -> Iterator[None]:
    """Run FAISS with ``n_threads`` OpenMP threads, restoring the setting after."""
    import faiss

    if n_threads is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(n_threads)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _auto_nlist(n: int) -> int:
    target = 4.0 * math.sqrt(max(n, 1))
    nlist = 2 ** max(0, round(math.log2(target)))
    while nlist > 1 and n < 39 * nlist:  # FAISS wants >= 39 training points per centroid
        nlist //= 2
    return int(nlist)


def _as_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, Volume):
        return x.array
    return as_hu_array(x, name=name)


def _as_stack(x: Any, name: str) -> np.ndarray:
    arr = _as_array(x, name)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3:
        raise ValueError(
            f"Expected {name} as a 2-D slice (y, x) or a 3-D volume (z, y, x); received shape "
            f"{arr.shape} (rank {arr.ndim}). Pass a hybrid.Volume or an array with axes (z, y, x)."
        )
    if min(arr.shape) < 1:
        raise ValueError(f"Expected a non-empty {name}; received shape {arr.shape}.")
    return arr


def _as_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask.array if isinstance(mask, Volume) else mask)
    if m.ndim == 2 and len(shape) == 3:
        m = m[np.newaxis]
    if m.shape != tuple(shape):
        raise ValueError(
            f"Expected {name} of shape {tuple(shape)} (the image's); received {m.shape}."
        )
    if m.dtype != bool:
        if m.dtype.kind not in "biuf" or not np.isin(np.unique(m), (0, 1)).all():
            raise ValueError(
                f"Expected a boolean {name} (or 0/1 values); received dtype {m.dtype}."
            )
        m = m.astype(bool)
    return m


def _local_mean_std(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import uniform_filter

    img = image.astype(np.float64)
    m = uniform_filter(img, size, mode="reflect")
    m2 = uniform_filter(img * img, size, mode="reflect")
    return m, np.sqrt(np.maximum(m2 - m * m, 0.0))


def _strata(nd: np.ndarray, centers: np.ndarray, cfg: DictionaryConfig) -> np.ndarray:
    mean, std = _local_mean_std(nd, cfg.patch_size)
    cy, cx = centers[:, 0], centers[:, 1]
    band = np.searchsorted(cfg.hu_bands, mean[cy, cx])
    sbin = np.searchsorted(cfg.std_bins, std[cy, cx])
    return band * (len(cfg.std_bins) + 1) + sbin


def _water_fill(counts: np.ndarray, budget: int) -> np.ndarray:
    """Per-stratum quotas summing to <= budget: small strata whole, the rest equal shares."""
    quota = np.zeros_like(counts, dtype=np.float64)
    remaining = counts.astype(np.float64).copy()
    left = float(budget)
    active = remaining > 0
    while active.any() and left > 0.5:
        share = left / active.sum()
        small = active & (remaining <= share)
        if small.any():
            quota[small] += remaining[small]
            left -= remaining[small].sum()
            remaining[small] = 0
            active &= ~small
        else:
            quota[active] += share
            left = 0.0
    return quota


def _package_version() -> str:
    try:
        from hybrid import __version__

        return str(__version__)
    except Exception:  # pragma: no cover
        return "unknown"


def _unwrap(index: Any) -> list[Any]:
    """The chain of (downcast) FAISS indexes from the top: refine -> pretransform -> ivf."""
    import faiss

    chain = []
    x = faiss.downcast_index(index)
    while True:
        chain.append(x)
        if isinstance(x, faiss.IndexRefine):
            x = faiss.downcast_index(x.base_index)
        elif isinstance(x, faiss.IndexPreTransform):
            x = faiss.downcast_index(x.index)
        else:
            return chain


# --------------------------------------------------------------------------- dictionary


class PatchDictionary:
    """Pairs of normalised ULD patches (keys) and ND patches (values), searched by FAISS.

    Build one with :meth:`build`, store it with :meth:`save`, read it with
    :meth:`load`, and use it with :meth:`propose`.  Do not call the
    constructor directly.

    Attributes
    ----------
    config : DictionaryConfig
        How it was built.
    meta : dict
        The content of ``meta.json`` (factory string, counts, noise, ...).
    values : ndarray of shape (n, patch_size**2), float16 or float32
        ``nd_patch - mean(uld_patch)`` of each entry, in HU.
    key_mean : ndarray of shape (n,), float32
        Mean (HU) of the ULD patch of each entry.
    key_norm : ndarray of shape (n,), float32
        ``|uld_patch - mean|`` (HU) of each entry: how much structure it has.

    Examples
    --------
    >>> import numpy as np
    >>> from hybrid.dictionary import PatchDictionary, DictionaryConfig
    >>> rng = np.random.default_rng(0)
    >>> nd = np.where(np.add.outer(np.arange(64), np.arange(64)) % 16 < 8, 40.0, -800.0)
    >>> uld = nd + rng.normal(0, 30, nd.shape)
    >>> cfg = DictionaryConfig(factory="Flat", max_patches=5000, n_heldout=0)
    >>> d = PatchDictionary.build([(uld, nd, None)], config=cfg)
    >>> p = d.propose(uld)
    >>> p.image.shape, p.name
    ((64, 64), 'dictionary')
    """

    def __init__(
        self,
        *,
        config: DictionaryConfig,
        index: Any,
        values: np.ndarray,
        key_mean: np.ndarray,
        key_norm: np.ndarray,
        projection: np.ndarray,
        meta: dict[str, Any],
        n_threads: int | None = None,
        device: str = "auto",
    ) -> None:
        self.config = config
        self.meta = meta
        self.values = values
        self.key_mean = key_mean
        self.key_norm = key_norm
        self._index = index  # CPU index (what is saved)
        self._search_index: Any = None  # CPU or GPU index used for search
        self._search_space = "index"
        self._graph: Any = None  # the CPU search graph (when config.cpu_graph), its entry
        self._graph_ids: np.ndarray | None = None  # number per node, and the locality range
        self._locality: tuple[np.ndarray, np.ndarray] | None = None
        self._values32: tuple[np.ndarray, np.ndarray] | None = None  # (values, as float32)
        self._proj_mean: tuple[np.ndarray, np.ndarray] | None = None
        self.n_threads = n_threads
        self.device = _check_device(device)
        self.projection = np.ascontiguousarray(projection, dtype=np.float32)  # (size**2, key_dim)
        self._apply_search_params(index)

    # ------------------------------------------------------------------ properties

    @property
    def factory(self) -> str:
        """The FAISS factory string of the index (resolved, as stored)."""
        return self.meta["factory"]

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __repr__(self) -> str:
        return (
            f"PatchDictionary(n={len(self)}, patch_size={self.patch_size}, factory={self.factory!r}, "
            f"cpu_graph={self.config.cpu_graph!r}, noise_sigma_hu={self.meta['noise']['sigma_hu']:.1f})"
        )

    # ------------------------------------------------------------------ keys

    def keys_of(self, patches: np.ndarray) -> np.ndarray:
        """Keys of flattened ULD patches: ``(n, key_dim)`` float32, C-contiguous.

        ``key = patch @ projection``: Helmert (mean removal) / hu_scale, then PCA.
        """
        p = np.asarray(patches, dtype=np.float32)
        if p.ndim != 2 or p.shape[1] != self.patch_size**2:
            raise ValueError(
                f"Expected patches of shape (n, {self.patch_size**2}); received {p.shape}."
            )
        return np.ascontiguousarray(p @ self.projection)

    # ------------------------------------------------------------------ build

    @classmethod
    def build(
        cls,
        pairs: Sequence[tuple[Any, Any, Any]],
        *,
        config: DictionaryConfig | None = None,
        name: str = "dictionary",
        n_threads: int | None = None,
        device: str = "auto",
        verbose: bool = False,
    ) -> PatchDictionary:
        """Build a dictionary from paired ULD / ND data.

        Parameters
        ----------
        pairs : sequence of (uld, nd, body_mask)
            One tuple per patient: ``uld`` and ``nd`` as arrays (z, y, x) or
            (y, x) in HU, or :class:`hybrid.Volume`; ``body_mask`` a boolean
            array of the same shape, or None for the whole image.
        config : DictionaryConfig, optional
            Build settings (defaults: :class:`DictionaryConfig`).
        name : str, optional
            Name stored in the metadata.
        n_threads : int, optional
            FAISS OpenMP threads (default: the cores this process may use).
        device : {"auto", "cpu", "gpu"}, optional
            Where to search (see :meth:`load`).  Building always runs on CPU.
        verbose : bool, optional
            Print progress.

        Returns
        -------
        PatchDictionary
        """
        import faiss

        cfg = config if config is not None else DictionaryConfig()
        if not isinstance(cfg, DictionaryConfig):
            raise ValueError(
                f"Expected config to be a DictionaryConfig; received {type(cfg).__name__}."
            )
        pairs = _check_pairs(pairs)
        n_threads = n_threads if n_threads is not None else available_cores()
        rng = np.random.default_rng(cfg.seed)
        size = cfg.patch_size
        n_strata = (len(cfg.hu_bands) + 1) * (len(cfg.std_bins) + 1)

        # pass 1: count candidate centres per stratum, estimate the noise
        counts = np.zeros(n_strata, dtype=np.int64)
        noise_samples = []
        manifest = hashlib.sha256()
        n_slices = 0
        for uld, nd, mask in pairs:
            manifest.update(np.asarray(uld.shape, np.int64).tobytes())
            manifest.update(hashlib.sha256(np.ascontiguousarray(uld).tobytes()).digest())
            manifest.update(hashlib.sha256(np.ascontiguousarray(nd).tobytes()).digest())
            manifest.update(hashlib.sha256(np.packbits(mask)).digest())
            for z in range(uld.shape[0]):
                if not mask[z].any():
                    continue
                n_slices += 1
                c = _train_centers(mask[z], cfg)
                counts += np.bincount(_strata(nd[z], c, cfg), minlength=n_strata)
                diff = (uld[z] - nd[z])[mask[z]]
                noise_samples.append(rng.choice(diff, size=min(diff.size, 4096), replace=False))
        n_candidates = int(counts.sum())
        if n_candidates == 0:
            raise ValueError(
                "Expected some body pixels to build a dictionary from; received empty body masks. "
                "Pass body masks that mark the patient (or None for whole images)."
            )
        diff = np.concatenate(noise_samples)
        sigma_hu = float(1.4826 * np.median(np.abs(diff - np.median(diff))))

        # pass 2: keep each candidate with its stratum's probability
        budget = cfg.max_patches + cfg.n_heldout
        # small margin: sampling is Bernoulli; the surplus is trimmed below
        quota = np.minimum(_water_fill(counts, budget) * 1.02 + 8, counts)
        keep_p = np.divide(quota, counts, out=np.zeros_like(quota), where=counts > 0)
        uld_parts, nd_parts, strata_parts = [], [], []
        for uld, nd, mask in pairs:
            for z in range(uld.shape[0]):
                if not mask[z].any():
                    continue
                c = _train_centers(mask[z], cfg)
                s = _strata(nd[z], c, cfg)
                keep = rng.random(len(c)) < keep_p[s]
                c = c[keep]
                uld_parts.append(extract_patches(uld[z], c, size=size))
                nd_parts.append(extract_patches(nd[z], c, size=size))
                strata_parts.append(s[keep])
        uld_p = np.concatenate(uld_parts)
        nd_p = np.concatenate(nd_parts)
        strata = np.concatenate(strata_parts)
        del uld_parts, nd_parts, strata_parts
        order = rng.permutation(len(uld_p))
        n_held = min(cfg.n_heldout, len(order) // 10) if cfg.n_heldout else 0
        held, order = order[:n_held], order[n_held:]
        order = np.sort(order[: cfg.max_patches])  # sorted: entries keep slice order

        helm = helmert_basis(size * size).T / cfg.hu_scale  # (49, 48), float64
        pca_info = None
        if cfg.pca_dim:
            nk = nd_p[order] @ helm
            cov = np.cov(nk, rowvar=False)
            evals, evecs = np.linalg.eigh(cov)
            evals, evecs = evals[::-1], evecs[:, ::-1][:, : cfg.pca_dim]
            # fixed signs: the largest component of each axis is positive
            evecs *= np.sign(evecs[np.abs(evecs).argmax(axis=0), np.arange(cfg.pca_dim)])
            helm = helm @ evecs
            pca_info = {
                "dim": int(cfg.pca_dim),
                "fitted_on": "nd keys",
                "explained_nd_variance": float(
                    evals[: cfg.pca_dim].sum() / max(evals.sum(), 1e-12)
                ),
            }
        proj = helm.astype(np.float32)
        keys = np.ascontiguousarray(uld_p[order] @ proj)
        key_mean = uld_p[order].mean(axis=1, dtype=np.float64).astype(np.float32)
        values = (nd_p[order] - key_mean[:, None]).astype(cfg.value_dtype)
        key_norm = np.linalg.norm(uld_p[order] - key_mean[:, None], axis=1).astype(np.float32)
        n = len(keys)

        factory = cfg.factory.replace("{nlist}", str(_auto_nlist(n)))
        try:
            index = faiss.index_factory(cfg.key_dim, factory)
        except RuntimeError as exc:
            raise ValueError(
                f"Invalid FAISS factory string {factory!r} for {cfg.key_dim}-d keys: {exc}. "
                "Use e.g. 'Flat', 'HNSW32' or 'IVF{nlist},PQ8x4fs,RFlat' (PQ sizes must divide the dimension)."
            ) from exc
        t0 = time.perf_counter()
        with _faiss_threads(n_threads):
            if not index.is_trained:
                index.train(keys)
            index.add(keys)
        build_s = time.perf_counter() - t0

        # noise distance: squared key distance between two noise realisations of one patch
        ndk = (nd_p[order][: min(n, 20000)] @ proj).astype(np.float32)
        uk = keys[: len(ndk)]
        noise_d2_full = float(2.0 * np.mean(np.sum((uk - ndk) ** 2, axis=1)))
        noise_d2_index = noise_d2_full
        chain = _unwrap(index)
        if not isinstance(chain[0], faiss.IndexRefine) and isinstance(
            chain[0], faiss.IndexPreTransform
        ):
            tu, tn = uk, ndk
            for i in range(chain[0].chain.size()):
                vt = faiss.downcast_VectorTransform(chain[0].chain.at(i))
                tu, tn = vt.apply(np.ascontiguousarray(tu)), vt.apply(np.ascontiguousarray(tn))
            noise_d2_index = float(2.0 * np.mean(np.sum((tu - tn) ** 2, axis=1)))

        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "patch_size": size,
            "key_dim": cfg.key_dim,
            "normalisation": {"type": NORMALISATION, "hu_scale": cfg.hu_scale},
            "factory": factory,
            "search_params": cfg.search_params,
            "pca": pca_info,
            "faiss_pca": _pca_dim(factory),
            "config": cfg.to_dict(),
            "noise": {
                "sigma_hu": sigma_hu,
                "distance2_full": noise_d2_full,
                "distance2_index": noise_d2_index,
            },
            "distance": {
                "definition": "sqrt(squared key distance / expected squared key distance between two "
                "noise realisations of the same patch); ~1 = as close as the noise allows, "
                "overlap-added over the patches covering each pixel",
            },
            "counts": {
                "entries": n,
                "candidates": n_candidates,
                "heldout": int(n_held),
                "strata_candidates": counts.tolist(),
                "strata_entries": np.bincount(strata[order], minlength=n_strata).tolist(),
            },
            "source": {
                "manifest_sha256": manifest.hexdigest(),
                "patients": len(pairs),
                "slices": n_slices,
            },
            "build": {
                "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "seconds_index": round(build_s, 3),
                "package_version": _package_version(),
                "faiss_version": faiss.__version__,
                "numpy_version": np.__version__,
            },
        }
        d = cls(
            config=cfg,
            index=index,
            values=values,
            key_mean=key_mean,
            key_norm=key_norm,
            projection=proj,
            meta=meta,
            n_threads=n_threads,
            device=device,
        )
        if n_held:
            hk = np.ascontiguousarray(uld_p[held] @ proj)
            dist, _ = d._search(hk, 1)
            delta = d._normalise(dist[:, 0])
            meta["distance"]["heldout_median"] = float(np.median(delta))
            meta["distance"]["heldout_p90"] = float(np.percentile(delta, 90))
        if verbose:
            print(f"built {d!r} from {n_candidates} candidates in {build_s:.1f} s (index)")
        return d

    # ------------------------------------------------------------------ search

    def _apply_search_params(self, index: Any, *, gpu: bool = False) -> None:
        import faiss

        params = self.meta.get("search_params") or ""
        ps = (
            faiss.GpuParameterSpace()
            if gpu and hasattr(faiss, "GpuParameterSpace")
            else faiss.ParameterSpace()
        )
        for item in filter(None, (s.strip() for s in params.split(","))):
            try:
                ps.set_index_parameters(index, item)
            except RuntimeError:
                pass  # e.g. nprobe on a flat index: not applicable

    def set_search_params(self, params: str) -> None:
        """Change the search-time parameters, e.g. ``"nprobe=32"`` (more recall, slower).

        ``params`` is a ``faiss.ParameterSpace`` string; it replaces
        ``meta["search_params"]`` (saved with the dictionary).  Entries the
        index does not know are ignored.
        """
        if not isinstance(params, str):
            raise ValueError(
                f"Expected search parameters as a string like 'nprobe=16'; received {type(params).__name__}."
            )
        self.meta["search_params"] = params
        self._apply_search_params(self._index)
        self._search_index = None  # rebuilt (and re-moved to the GPU) on the next search

    def set_cpu_graph(self, m: int | None) -> None:
        """Search on CPU an HNSW graph with ``m`` links per node, or (None) the stored index.

        Changes ``config.cpu_graph`` (saved with the dictionary); see
        :class:`DictionaryConfig` for what the graph is and what it buys.
        """
        self.config = dataclasses.replace(self.config, cpu_graph=m)  # validates m
        if isinstance(self.meta.get("config"), dict):
            self.meta["config"]["cpu_graph"] = m
        self._search_index = None
        self._graph = self._graph_ids = self._locality = None

    def _ensure_search_index(self) -> Any:
        if self._search_index is not None:
            return self._search_index
        import faiss

        chain = _unwrap(self._index)
        # space of the distances the index returns: the stored keys', unless a
        # FAISS "PCA.." prefix without a final refinement reduces them further
        exact_space = isinstance(chain[0], faiss.IndexRefine) or not isinstance(
            chain[0], faiss.IndexPreTransform
        )
        self._search_index, self._search_space = self._index, "full" if exact_space else "index"
        want_gpu = self.device == "gpu" or (self.device == "auto" and _num_gpus() > 0)
        if not want_gpu and self.config.cpu_graph:
            graph = self._graph if self._graph is not None else self._cpu_graph()
            if graph is not None:
                self._graph = graph
                self._apply_search_params(graph)
                self._search_index, self._search_space = graph, "full"
        if want_gpu:
            if _num_gpus() == 0:
                raise RuntimeError(
                    "Expected a CUDA GPU for device='gpu'; faiss sees none. Install faiss-gpu-cu12 "
                    "(pip install 'hybrid-ct[gpu]') or use device='cpu'/'auto'."
                )
            try:
                gpu = faiss.index_cpu_to_all_gpus(self._index)
                self._apply_search_params(gpu, gpu=True)
                self._search_index = gpu
            except (RuntimeError, AttributeError) as exc:
                keys = self.stored_keys()
                if keys is None:
                    warnings.warn(
                        f"FAISS cannot move index {self.factory!r} to the GPU ({exc}); searching on CPU.",
                        stacklevel=3,
                    )
                else:  # fast-scan PQ has no GPU version: exact search of the stored keys instead
                    flat = faiss.IndexFlatL2(keys.shape[1])
                    flat.add(keys)
                    self._search_index = faiss.index_cpu_to_all_gpus(flat)
                    self._search_space = "full"
        return self._search_index

    def _cpu_graph(self) -> Any:
        """The HNSW graph over the stored keys (see ``DictionaryConfig.cpu_graph``), or None
        where the index keeps no exact keys.  Loaded from the cache when there.

        The graph's nodes are the entries in :func:`_locality_code` order
        (``self._graph_ids[node]`` is the entry number), and :meth:`_search`
        sends queries in the same order: consecutive queries then walk nodes
        that lie close together in memory, which is most of the speed-up of
        this search over a graph in build order (measured 1.2-1.4x).
        """
        import faiss

        keys = self.stored_keys()
        if keys is None:
            return None
        m = int(self.config.cpu_graph)
        lo, hi = _locality_range(keys)
        order = np.argsort(_locality_code(keys, lo, hi), kind="stable")
        digest = self.meta.get("files", {}).get(_INDEX_FILE)
        cache = None
        if digest:
            tag = hashlib.sha256(f"{digest}/HNSW{m}/ef{_GRAPH_EF_CONSTRUCTION}/{_GRAPH_ORDER}/"
                                 f"{faiss.__version__}".encode()).hexdigest()[:24]
            folder = graph_cache_dir()
            cache = folder / f"hnsw-{tag}.faiss" if folder is not None else None
        graph = None
        if cache is not None and cache.is_file():
            try:
                graph = faiss.read_index(str(cache))
            except RuntimeError:  # a damaged cache file: build again
                graph = None
            if graph is not None and graph.ntotal != len(self):
                graph = None
        if graph is None:
            graph = faiss.IndexHNSWFlat(keys.shape[1], m)
            graph.hnsw.efConstruction = _GRAPH_EF_CONSTRUCTION
            with _faiss_threads(1):  # one thread: the same graph on every machine and load
                graph.add(np.ascontiguousarray(keys[order]))
            if cache is not None:
                try:
                    with atomic_file(cache) as tmp:
                        faiss.write_index(graph, str(tmp))
                except OSError:  # a read-only home: fine, the graph lives in memory
                    pass
        self._graph_ids = order.astype(np.int64)
        self._locality = (lo, hi)
        return graph

    def stored_keys(self) -> np.ndarray | None:
        """The exact keys ``(n, key_dim)`` float32, if the index keeps them, else None.

        Available for ``Flat``, ``IVF...,Flat``, ``HNSW..`` (flat storage) and
        any index ending in ``RFlat``; None for lossy codes (PQ, SQ) without
        refinement or with a ``PCA`` prefix.
        """
        import faiss

        chain = _unwrap(self._index)
        top = chain[0]
        if isinstance(top, faiss.IndexRefine):
            flat = faiss.downcast_index(top.refine_index)
            if isinstance(flat, faiss.IndexFlat):
                codes = faiss.vector_to_array(flat.codes)
                return np.ascontiguousarray(codes.view(np.float32).reshape(flat.ntotal, flat.d))
            return None
        if len(chain) != 1:
            return None
        if isinstance(top, faiss.IndexFlat):
            codes = faiss.vector_to_array(top.codes)
            return np.ascontiguousarray(codes.view(np.float32).reshape(top.ntotal, top.d))
        if isinstance(top, faiss.IndexHNSWFlat):
            return top.reconstruct_n(0, top.ntotal)
        if isinstance(top, faiss.IndexIVFFlat):
            from faiss.contrib.inspect_tools import get_invlist

            keys = np.empty((top.ntotal, top.d), dtype=np.float32)
            for list_no in range(top.nlist):  # raw float32 vectors in each inverted list
                ids, codes = get_invlist(top.invlists, list_no)
                keys[ids] = codes.view(np.float32).reshape(len(ids), top.d)
            return keys
        return None

    def _search(self, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._ensure_search_index()
        if self._graph_ids is None or index is not self._graph:
            with _faiss_threads(self.n_threads):
                return index.search(keys, k)
        # the CPU graph: queries in locality order (see _cpu_graph), answers in the caller's
        order = np.argsort(_locality_code(keys, *self._locality), kind="stable")
        with _faiss_threads(self.n_threads):
            d_sorted, n_sorted = index.search(np.ascontiguousarray(keys[order]), k)
        dist = np.empty_like(d_sorted)
        ids = np.empty_like(n_sorted)
        dist[order] = d_sorted
        ids[order] = np.where(n_sorted >= 0, self._graph_ids[np.maximum(n_sorted, 0)], -1)
        # Second look where the graph's answer is farther than noise explains (normalised
        # distance > 1): a greedy graph walk can miss a small, isolated cluster of keys
        # (strong edges), while the stored IVF index probes by centroid.  On real 2 % chest
        # CT no query gets here; on the suite's synthetic patients ~8 % do, and the L2
        # excess drops from 14 % to 0.3 %.
        far = np.flatnonzero(self._normalise(dist[:, 0]) > _RECHECK_DISTANCE)
        if len(far) and index is not self._index:
            with _faiss_threads(self.n_threads):
                d2, n2 = self._index.search(np.ascontiguousarray(keys[far]), k)
            better = (n2[:, 0] >= 0) & (d2[:, 0] < dist[far, 0])
            dist[far[better]], ids[far[better]] = d2[better], n2[better]
        return dist, ids

    def _normalise(self, dist2: np.ndarray) -> np.ndarray:
        noise = self.meta["noise"]
        if self._search_space == "full":
            ref = noise["distance2_full"]
        else:
            ref = noise["distance2_index"]
        return np.sqrt(np.maximum(dist2, 0.0) / max(ref, 1e-12)).astype(np.float32)

    def search(self, patches: np.ndarray, *, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Nearest entries of flattened ULD patches.

        Parameters
        ----------
        patches : ndarray of shape (n, patch_size**2)
            ULD patches in HU (row-major flattened).
        k : int, optional
            Neighbours per patch.

        Returns
        -------
        distance : ndarray of shape (n, k), float32
            Normalised distance (see :meth:`propose`); inf where fewer than k were found.
        ids : ndarray of shape (n, k), int64
            Entry numbers (-1 where none was found).
        """
        k = _check_k(k)
        keys = self.keys_of(patches)
        if not np.isfinite(keys).all():
            raise ValueError("Expected finite patches; received NaN/inf values.")
        dist, ids = self._search(keys, k)
        delta = self._normalise(dist)
        delta[ids < 0] = np.inf
        return delta, ids

    # ------------------------------------------------------------------ propose

    def propose(
        self,
        volume_or_array: Any,
        *,
        body_mask: Any = None,
        stride: int = 1,
        k: int = 1,
        bandwidth: float = 1.0,
        batch_patches: int = 1 << 19,
        fill_distance: float = np.inf,
    ) -> Proposal:
        """Restore a slice or a volume from the dictionary.

        Parameters
        ----------
        volume_or_array : Volume or ndarray of shape (Z, Y, X) or (Y, X)
            The ULD image in HU.
        body_mask : ndarray of bool, same shape, optional
            Pixels to restore (default: all).  Outside it the input is returned.
        stride : int, optional
            Query a patch every ``stride`` pixels (<= patch_size); the
            overlap-add fills the pixels in between.  2-3 is ~4-9x faster
            than 1 at a small cost in quality.
        k : int, optional
            Neighbours per patch.  With ``k > 1`` the values are averaged
            with weights ``exp(-(delta_j**2 - delta_1**2) / bandwidth)`` of
            their normalised distances ``delta_j`` (best neighbour weight 1).
        bandwidth : float, optional
            Width of that kernel in squared normalised distance; ``inf``
            gives the plain mean of the k values.
        batch_patches : int, optional
            Upper bound on the patches searched at once (memory bound: about
            ``batch_patches * (4 * 49 * (2 + k))`` bytes), whatever the number
            of slices.
        fill_distance : float, optional
            Distance reported outside the body (default inf: "no match").

        Returns
        -------
        Proposal
            ``image``: the proposed ND image, float32, same shape as the
            input.  ``confidence``: the per-pixel normalised nearest-neighbour
            distance: for each patch ``delta = sqrt(D / D_noise)`` where ``D``
            is the squared distance from its key to the nearest key, and
            ``D_noise`` the expected squared distance between the keys of two
            independent noise realisations of the same patch (measured at
            build time from the ULD/ND pairs, ``meta["noise"]``); per pixel,
            the mean ``delta`` of the patches covering it.  ``delta`` about 1
            or below: the match is as good as the noise allows; several: a
            pattern the dictionary has not seen.  ``meta["distance"]`` holds
            the median on held-out training patches.  On the benchmark's
            synthetic 512 x 512 slices (stride 2, 150 k entries) the half of
            the body below 0.43 had RMSE 4.7 HU, 0.55-0.99 about 10 HU, and
            the 1 % above 0.99 67 HU: threshold near 1.  Outside the body
            it is ``fill_distance`` (inf), so a blender's weight there is 0.
            ``name``: "dictionary".
        """
        k = _check_k(k)
        check_stride(stride, patch_size=self.patch_size)
        if not (bandwidth > 0):
            raise ValueError(f"Expected a positive bandwidth; received {bandwidth!r}.")
        if isinstance(volume_or_array, Volume):
            arr = volume_or_array.array
        else:
            arr = _as_array(volume_or_array, "volume_or_array")
        squeeze = arr.ndim == 2
        stack = _as_stack(arr, "volume_or_array")
        mask = _as_mask(body_mask, stack.shape, "body_mask")
        size = self.patch_size
        out = stack.copy()
        dist_out = np.full(stack.shape, fill_distance, dtype=np.float32)

        # group slices into batches of at most batch_patches query patches
        batch: list[tuple[int, np.ndarray]] = []
        n_batch = 0
        for z in range(stack.shape[0]):
            if not mask[z].any():
                continue
            c = grid_centers(mask[z].shape, stride=stride, mask=mask[z], size=size)
            if batch and n_batch + len(c) > batch_patches:
                self._propose_batch(stack, mask, batch, out, dist_out, k, bandwidth)
                batch, n_batch = [], 0
            batch.append((z, c))
            n_batch += len(c)
        if batch:
            self._propose_batch(stack, mask, batch, out, dist_out, k, bandwidth)
        if squeeze:
            out, dist_out = out[0], dist_out[0]
        return Proposal(image=out, uncertainty=dist_out, kind="nn_distance", name="dictionary")

    def _projection_and_mean(self) -> np.ndarray:
        """``(patch_size**2, key_dim + 1)``: the key projection, then the mean weights."""
        if self._proj_mean is None or self._proj_mean[0] is not self.projection:
            n = self.projection.shape[0]
            full = np.hstack([self.projection, np.full((n, 1), 1.0 / n, dtype=np.float32)])
            self._proj_mean = (self.projection, np.ascontiguousarray(full, dtype=np.float32))
        return self._proj_mean[1]

    def _values_f32(self) -> np.ndarray:
        """The values as float32, converted once (a gather of float32 rows is 2-5x faster
        than gathering float16 rows and converting them, batch after batch)."""
        if self._values32 is None or self._values32[0] is not self.values:
            self._values32 = (self.values, np.ascontiguousarray(self.values, dtype=np.float32))
        return self._values32[1]

    def _propose_batch(self, stack, mask, batch, out, dist_out, k, bandwidth) -> None:
        size = self.patch_size
        patches = np.concatenate([extract_patches(stack[z], c, size=size) for z, c in batch])
        # keys and patch means in one product: [projection | 1/49] (means in float32: < 0.001 HU)
        both = patches @ self._projection_and_mean()
        keys = np.ascontiguousarray(both[:, :-1])
        means = both[:, -1]
        dist2, ids = self._search(keys, k)
        delta = self._normalise(dist2)
        found = ids >= 0
        delta[~found] = np.inf
        safe = np.where(found, ids, 0)
        if k == 1:
            pred = np.take(self._values_f32(), safe[:, 0], axis=0)
        else:
            d2 = delta.astype(np.float64) ** 2
            w = (
                np.exp(-(d2 - d2[:, :1]) / bandwidth)
                if np.isfinite(bandwidth)
                else np.ones_like(d2)
            )
            w[~found] = 0.0
            wsum = w.sum(axis=1, keepdims=True)
            w = np.divide(w, wsum, out=np.zeros_like(w), where=wsum > 0)
            pred = np.einsum(
                "nk,nkd->nd", w.astype(np.float32), self._values_f32()[safe]
            )
        pred += means[:, None]
        none = ~found[:, 0]
        if none.any():  # no neighbour at all (sparse IVF lists): keep the input patch
            pred[none] = patches[none]
        best = delta[:, 0]
        starts = np.cumsum([0] + [len(c) for _, c in batch])

        def put_back(i: int) -> None:  # slices are independent: threads, same result
            z, c = batch[i]
            sl = slice(starts[i], starts[i + 1])
            img, wmap = overlap_add(pred[sl], c, stack[z].shape, size=size)
            dmap, _ = overlap_add(best[sl], c, stack[z].shape, size=size)
            sel = mask[z] & (wmap > 0)
            out[z][sel] = img[sel]
            dist_out[z][sel] = dmap[sel]

        thread_map(put_back, range(len(batch)))

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the dictionary to a folder, atomically.

        The folder (e.g. ``dictionaries/<name>/``) holds ``index.faiss`` (the
        CPU index, ``faiss.write_index``), ``payload.h5`` (``values``,
        ``key_mean``, ``key_norm``) and ``meta.json`` (factory string,
        patch size, normalisation, PCA, noise, counts, source manifest hash,
        build date, versions, SHA-256 of the two data files).  It is written
        to a temporary folder beside ``path`` and renamed into place.

        Returns
        -------
        Path
            The folder written.
        """
        import faiss
        import h5py

        from hybrid.io._atomic import atomic_dir

        path = Path(path)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            faiss.write_index(self._index, str(tmp / _INDEX_FILE))
            with h5py.File(tmp / _PAYLOAD_FILE, "w") as f:
                kw = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
                f.create_dataset(
                    "values",
                    data=self.values,
                    chunks=(min(len(self), 8192), self.values.shape[1]),
                    **kw,
                )
                f.create_dataset("key_mean", data=self.key_mean, **kw)
                f.create_dataset("key_norm", data=self.key_norm, **kw)
                f.create_dataset("projection", data=self.projection)
                f.attrs["format_version"] = FORMAT_VERSION
            meta = dict(self.meta)
            meta["files"] = {n: sha256_file(tmp / n) for n in (_INDEX_FILE, _PAYLOAD_FILE)}
            (tmp / _META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self.meta = meta
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        expect: Mapping[str, Any] | None = None,
        device: str = "auto",
        n_threads: int | None = None,
        verify: bool = True,
    ) -> PatchDictionary:
        """Read a dictionary folder written by :meth:`save`, checking it.

        Parameters
        ----------
        path : str or PathLike
            The dictionary folder.
        expect : mapping, optional
            Metadata the caller requires, e.g. ``{"patch_size": 7,
            "normalisation": {"type": "mean-helmert", "hu_scale": 100.0}}``.
            Nested mappings are compared key by key; any difference raises
            :class:`DictionaryMismatchError`.  The format version and the
            normalisation type are always checked.
        device : {"auto", "cpu", "gpu"}, optional
            "auto" searches on all GPUs if FAISS sees one
            (``faiss.index_cpu_to_all_gpus``; indexes without a GPU version,
            like fast-scan PQ, are replaced there by exact search of the
            stored keys), on CPU otherwise.
        n_threads : int, optional
            FAISS OpenMP threads for search (default: the cores this process may use).
        verify : bool, optional
            Check the SHA-256 of the data files against ``meta.json``.

        Returns
        -------
        PatchDictionary
        """
        import faiss
        import h5py

        path = Path(path)
        meta_path = path / _META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"Expected a dictionary folder with {_META_FILE}, {_INDEX_FILE} and {_PAYLOAD_FILE}; "
                f"{meta_path} does not exist. Build one with PatchDictionary.build(...).save(path)."
            )
        meta = json.loads(meta_path.read_text())
        _check_meta(meta, expect, path)
        if verify:
            for fname, digest in meta.get("files", {}).items():
                if sha256_file(path / fname) != digest:
                    raise DictionaryMismatchError(
                        f"Dictionary file {path / fname} does not match the SHA-256 in {meta_path} "
                        "(changed or corrupt). Rebuild or re-copy the dictionary folder."
                    )
        index = faiss.read_index(str(path / _INDEX_FILE))
        with h5py.File(path / _PAYLOAD_FILE, "r") as f:
            values = f["values"][...]
            key_mean = f["key_mean"][...]
            key_norm = f["key_norm"][...]
            projection = f["projection"][...]
        n = meta["counts"]["entries"]
        size = meta["patch_size"]
        key_dim = meta["key_dim"]
        if (
            index.ntotal != n
            or index.d != key_dim
            or values.shape != (n, size * size)
            or projection.shape != (size * size, key_dim)
        ):
            raise DictionaryMismatchError(
                f"Dictionary at {path} is inconsistent: meta says {n} entries of patch size {size} and "
                f"{key_dim}-d keys; index has {index.ntotal} keys of dimension {index.d}, values have "
                f"shape {values.shape}, projection {projection.shape}. Rebuild it."
            )
        return cls(
            config=DictionaryConfig.from_dict(meta["config"]),
            index=index,
            values=values,
            key_mean=key_mean,
            key_norm=key_norm,
            projection=projection,
            meta=meta,
            n_threads=n_threads if n_threads is not None else available_cores(),
            device=device,
        )


# --------------------------------------------------------------------------- checks


#: HNSW build effort of the CPU graph: 200 against FAISS's default 40 gives a better
#: graph (HNSW16 efSearch 12: recall@1 0.933 vs 0.884, L2 excess 0.35 % vs 0.79 %, same
#: speed) for a one-off ~30 s single-threaded build, cached on disk.
_GRAPH_EF_CONSTRUCTION = 200
#: Normalised distance above which a CPU-graph answer is checked against the stored index.
_RECHECK_DISTANCE = 1.0
#: Version of the node order of the CPU graph (part of its cache key).
_GRAPH_ORDER = "morton4x4"


def _locality_range(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1st and 99th percentiles of the first 4 key coordinates (the leading PCs)."""
    lead = keys[:, :4].astype(np.float64)
    return np.percentile(lead, 1, axis=0), np.percentile(lead, 99, axis=0)


def _locality_code(keys: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Morton (Z-order) code of the first 4 key coordinates, 4 bits each.

    Keys with close codes are close in the leading principal components, so
    sorting by it groups queries (and graph nodes) by region of key space.
    uint16, so that ``argsort(kind="stable")`` is a radix sort (0.2 ms for
    26 k queries).
    """
    lead = keys[:, : len(lo)]
    scale = (16.0 / np.maximum(hi - lo, 1e-12)).astype(np.float32)
    q = np.clip(((lead - lo.astype(np.float32)) * scale).astype(np.int32), 0, 15)
    code = np.zeros(len(keys), dtype=np.int32)
    for bit in range(3, -1, -1):
        for j in range(q.shape[1]):
            code = (code << 1) | ((q[:, j] >> bit) & 1)
    return code.astype(np.uint16)


def graph_cache_dir() -> Path | None:
    """Where CPU search graphs are cached: ``$HYBRID_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/hybrid`` or ``~/.cache/hybrid``; ``HYBRID_CACHE_DIR=""`` turns
    the cache off (None).  Only derived data lives there: deleting it is safe."""
    env = os.environ.get("HYBRID_CACHE_DIR")
    if env is not None:
        return Path(env) if env else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hybrid"


def _num_gpus() -> int:
    import faiss

    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # pragma: no cover
        return 0


def _check_device(device: str) -> str:
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(
            f"Invalid value for argument `device`. Expected 'auto', 'cpu' or 'gpu'. Received device={device!r}."
        )
    return device


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(
            f"Invalid value for argument `k`. Expected a positive integer. Received k={k!r}."
        )
    return int(k)


def _pca_dim(factory: str) -> int | None:
    for part in factory.split(","):
        part = part.strip()
        for prefix in ("PCAWR", "PCAR", "PCAW", "PCA"):
            if part.startswith(prefix) and part[len(prefix) :].isdigit():
                return int(part[len(prefix) :])
    return None


def _train_centers(mask2d: np.ndarray, cfg: DictionaryConfig) -> np.ndarray:
    # the same centres a query uses: every window that touches the body
    return grid_centers(mask2d.shape, stride=cfg.train_stride, mask=mask2d, size=cfg.patch_size)


def _check_pairs(pairs: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if isinstance(pairs, tuple) and len(pairs) == 3 and not isinstance(pairs[0], tuple):
        pairs = [pairs]
    try:
        items = list(pairs)
    except TypeError as exc:
        raise ValueError(
            f"Expected a list of (uld, nd, body_mask) tuples; received {type(pairs).__name__}."
        ) from exc
    if not items:
        raise ValueError("Expected at least one (uld, nd, body_mask) tuple; received none.")
    out = []
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 3):
            raise ValueError(
                f"Expected pair {i} as a tuple (uld, nd, body_mask); received {type(item).__name__}"
                f"{' of length ' + str(len(item)) if isinstance(item, (tuple, list)) else ''}. "
                "Use None as body_mask for whole images."
            )
        uld = _as_stack(item[0], f"uld of pair {i}")
        nd = _as_stack(item[1], f"nd of pair {i}")
        if uld.shape != nd.shape:
            raise ValueError(
                f"Expected uld and nd of pair {i} with the same shape; received {uld.shape} and {nd.shape}."
            )
        out.append((uld, nd, _as_mask(item[2], uld.shape, f"body_mask of pair {i}")))
    return out


def _subset_mismatch(stored: Any, wanted: Any, prefix: str) -> list[str]:
    if isinstance(wanted, Mapping):
        if not isinstance(stored, Mapping):
            return [f"{prefix}: stored {stored!r}, expected a mapping {dict(wanted)!r}"]
        out = []
        for k, v in wanted.items():
            out += _subset_mismatch(stored.get(k, "<absent>"), v, f"{prefix}.{k}")
        return out
    if isinstance(wanted, float) or isinstance(stored, float):
        try:
            if math.isclose(float(stored), float(wanted), rel_tol=1e-9):
                return []
        except (TypeError, ValueError):
            pass
    return [] if stored == wanted else [f"{prefix}: stored {stored!r}, expected {wanted!r}"]


def _check_meta(meta: Mapping[str, Any], expect: Mapping[str, Any] | None, path: Path) -> None:
    problems = []
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        problems.append(f"format_version: stored {version!r}, this code reads {FORMAT_VERSION}")
    norm = meta.get("normalisation", {})
    if norm.get("type") != NORMALISATION:
        problems.append(
            f"normalisation.type: stored {norm.get('type')!r}, this code uses {NORMALISATION!r}"
        )
    for key, wanted in (expect or {}).items():
        if key not in meta:
            problems.append(f"{key}: absent from meta.json (known: {', '.join(sorted(meta))})")
            continue
        problems += _subset_mismatch(meta[key], wanted, key)
    if problems:
        raise DictionaryMismatchError(
            f"Dictionary at {path} does not match what is expected:\n  - "
            + "\n  - ".join(problems)
            + "\nLoad a dictionary built with matching settings, or rebuild it "
            "(PatchDictionary.build(..., config=DictionaryConfig(...)).save(path))."
        )
