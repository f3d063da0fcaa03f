"""Super-resolution patch dictionary: low-dose 7x7 patch -> normal-dose 7x7 patch.

A :class:`PatchDictionary` stores pairs (key, value) cut from paired
ultra-low-dose (ULD) and normal-dose (ND) images of the same anatomy: the key
is the normalised ULD patch, the value the ND patch at the same place.  To
restore an image, every body pixel's ULD patch (on a ``stride`` grid) looks up
its nearest key(s) in a FAISS index; the values are put back by overlap-add
(the mean of the overlapping predicted patches).  Together with the proposal
the dictionary returns a per-pixel nearest-neighbour distance, normalised so
that a blender can threshold it (see :meth:`PatchDictionary.propose`).

The package, by job: :mod:`~hybrid.dictionary.config` (configuration, format,
normalisation), :mod:`~hybrid.dictionary.build` (sampling, strata, keys),
:mod:`~hybrid.dictionary.index` (FAISS: index, GPU, CPU graph, threads),
:mod:`~hybrid.dictionary.store` (the folder on disk, its checks) and
:mod:`~hybrid.dictionary.query` (patches -> search -> overlap-add).  FAISS is
imported only inside the functions that need it, so ``import hybrid`` stays
light.  Every measurement quoted below is in
``experiments/results/dictionary_search.md``, with where it came from.

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
    one ``(49, 16)`` projection stored with the dictionary.  16 components
    keep most of the ND structure variance for a small cost in proposal RMSE
    and make the search 3x cheaper.  Why numpy and not a ``"PCA16,..."``
    factory prefix: in the 48-d noisy key space the nearest neighbours of a
    ULD patch are near-ties, so no approximate index reaches a useful
    recall@1 against exact 48-d search; in the 16-d space the contrast is
    higher and the index, its exact reference and the reported distances all
    live in the same space.  A ``"PCA..."`` prefix in ``factory`` still
    works, as an extra reduction.
Index
    ``"IVF{nlist},Flat"`` with ``nprobe=16``, chosen by
    ``experiments/bench_dictionary.py``.  :data:`FAST_CPU` (fast-scan PQ with
    refinement) is faster for a little RMSE although its recall@1 is low:
    with near-tied neighbours a "wrong" neighbour is almost as good, so
    recall@1 is a poor guide here; choose with the RMSE.  On CPU the search
    uses an HNSW graph over the stored keys (``DictionaryConfig.cpu_graph``);
    on a GPU, IVF-Flat is moved there as is.
Distance
    The proposal's uncertainty map: for each query patch ``delta = sqrt(D /
    D_noise)``, where ``D`` is the squared distance from its key to the
    nearest key and ``D_noise`` the expected squared distance between the
    keys of two independent noise realisations of the same patch (measured at
    build time from the ULD/ND pairs, ``meta["noise"]``); per pixel, the mean
    ``delta`` of the patches covering it.  ``delta`` about 1 or below: the
    match is as good as the noise allows; several: a pattern the dictionary
    has not seen (threshold near 1).  ``meta["distance"]`` holds the median on
    held-out training patches.
Diversity
    Training candidates are taken on a ``train_stride`` grid inside the body
    and stratified by HU band of the local ND mean (air, lung, fat, soft
    tissue, dense, bone) x local ND standard deviation (flat ... edge).  The
    patch budget is shared by water-filling: strata with few patches (edges,
    bone, vessels) are kept whole, large flat ones (air, water) are
    subsampled to what is left.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrid._parallel import available_cores
from hybrid.artifacts import digest as artifact_digest
from hybrid.dictionary import build as _build
from hybrid.dictionary import store as _store
from hybrid.dictionary.config import (
    FAST_CPU,
    FORMAT_VERSION,
    NORMALISATION,
    DictionaryConfig,
    helmert_basis,
    positive_int,
)
from hybrid.dictionary.index import DictionaryIndex, graph_cache_dir, set_search_threads
from hybrid.dictionary.query import QuerySettings, propose
from hybrid.dictionary.store import DictionaryMismatchError, Payload
from hybrid.proposal import Proposal

__all__ = [
    "DictionaryConfig",
    "PatchDictionary",
    "QuerySettings",
    "DictionaryMismatchError",
    "helmert_basis",
    "graph_cache_dir",
    "set_search_threads",
    "FORMAT_VERSION",
    "NORMALISATION",
    "FAST_CPU",
]





class PatchDictionary:
    """Pairs of normalised ULD patches (keys) and ND patches (values), searched by FAISS.

    Build one with :meth:`build`, store it with :meth:`save`, read it with
    :meth:`load`, choose how it proposes with :meth:`with_settings` and use it
    with :meth:`propose`.  Do not call the constructor directly.

    Attributes
    ----------
    config : DictionaryConfig
        How it was built.
    meta : dict
        The content of ``meta.json`` (factory string, counts, noise, ...).
    values, key_mean, key_norm, projection : ndarray
        The payload: ND values ``nd_patch - mean(uld_patch)`` (n, patch_size**2),
        ULD patch means and norms (n,), key projection (:class:`~.store.Payload`).
    stride, k, bandwidth, batch_patches, fill_distance
        The settings of :meth:`propose` (read-only; see :class:`QuerySettings`):
        ``stride=1, k=1, bandwidth=1.0, batch_patches=2**19, fill_distance=inf``
        unless changed with :meth:`with_settings`.
    n_threads : int or None
        FAISS OpenMP threads for search (None: the process setting,
        :func:`set_search_threads`).

    Examples
    --------
    >>> import numpy as np
    >>> from hybrid.dictionary import PatchDictionary, DictionaryConfig
    >>> rng = np.random.default_rng(0)
    >>> nd = np.where(np.add.outer(np.arange(64), np.arange(64)) % 16 < 8, 40.0, -800.0)
    >>> uld = nd + rng.normal(0, 30, nd.shape)
    >>> cfg = DictionaryConfig(factory="Flat", max_patches=5000, n_heldout=0)
    >>> d = PatchDictionary.build([(uld, nd, None)], config=cfg).with_settings(stride=2)
    >>> p = d.propose(uld)
    >>> p.image.shape, p.name, d.stride
    ((64, 64), 'dictionary', 2)
    """

    name = "dictionary"

    def __init__(self, *, index: DictionaryIndex, payload: Payload,
                 n_threads: int | None = None, settings: QuerySettings | None = None) -> None:
        self._index = index  # shared by every copy made by with_settings
        self._payload = payload
        self._settings = settings if settings is not None else QuerySettings()
        self.n_threads = n_threads

    config = property(lambda self: self._index.config, doc="How it was built (DictionaryConfig).")
    meta = property(lambda self: self._index.meta, doc="The content of meta.json.")
    values = property(lambda self: self._payload.values)
    key_mean = property(lambda self: self._payload.key_mean)
    key_norm = property(lambda self: self._payload.key_norm)
    projection = property(lambda self: self._payload.projection)
    stride = property(lambda self: self._settings.stride)
    k = property(lambda self: self._settings.k)
    bandwidth = property(lambda self: self._settings.bandwidth)
    batch_patches = property(lambda self: self._settings.batch_patches)
    fill_distance = property(lambda self: self._settings.fill_distance)

    factory = property(lambda self: self.meta["factory"],
                       doc="The FAISS factory string of the index (resolved, as stored).")
    patch_size = property(lambda self: self.config.patch_size)

    #: the proposer contract (hybrid.proposal): its name, and the input returned outside the body
    name = "dictionary"
    outside_body = "input"

    @property
    def digest(self) -> str | None:
        """The artifact digest (:func:`hybrid.artifacts.digest` of its data files) once saved
        or loaded; None for a dictionary only built in memory."""
        files = self.meta.get("files")
        return artifact_digest(files) if files else None

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __repr__(self) -> str:
        s = self._settings
        return (
            f"PatchDictionary(n={len(self)}, patch_size={self.patch_size}, factory={self.factory!r}, "
            f"cpu_graph={self.config.cpu_graph!r}, noise_sigma_hu={self.meta['noise']['sigma_hu']:.1f}, "
            f"stride={s.stride!r}, k={s.k}, bandwidth={s.bandwidth!r}, "
            f"batch_patches={s.batch_patches}, fill_distance={s.fill_distance!r})"
        )

    def with_settings(self, **settings: Any) -> PatchDictionary:
        """A copy that proposes with ``settings`` changed (see :class:`QuerySettings`).

        ``settings``: any of ``stride`` (int or (y, x), each in [1, patch_size]),
        ``k`` (int >= 1), ``bandwidth`` (> 0, inf allowed), ``batch_patches``
        (int >= 1) and ``fill_distance`` (a number, inf allowed); ValueError for
        an unknown name (the message lists the valid ones) or an invalid value.
        Cheap: the copy shares this dictionary's index, search graph, payload
        and metadata (so :meth:`set_search_params` and :meth:`set_cpu_graph`
        on either act on both); this one is unchanged.
        """
        new = self._settings.changed(self.patch_size, **settings)
        return PatchDictionary(index=self._index, payload=self._payload,
                               n_threads=self.n_threads, settings=new)

    # ------------------------------------------------------------------ build, save, load

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
        n_threads, device
            As in :meth:`load` (building always runs on CPU).
        verbose : bool, optional
            Print progress.

        Returns
        -------
        PatchDictionary
            With the default settings (see :meth:`with_settings`).
        """
        cfg = config if config is not None else DictionaryConfig()
        if not isinstance(cfg, DictionaryConfig):
            raise ValueError(
                f"Expected config to be a DictionaryConfig; received {type(cfg).__name__}."
            )
        n_threads = n_threads if n_threads is not None else available_cores()
        index, payload = _build.build(pairs, cfg, name=name, n_threads=n_threads, device=device)
        d = cls(index=index, payload=payload, n_threads=n_threads)
        if verbose:
            print(f"built {d!r} from {d.meta['counts']['candidates']} candidates in "
                  f"{d.meta['build']['seconds_index']:.1f} s (index)")
        return d

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the dictionary to the folder ``path`` atomically (:mod:`hybrid.dictionary.store`:
        ``index.faiss``, ``payload.h5``, ``meta.json`` with the SHA-256 of the other two);
        ``overwrite`` replaces an existing folder.  Returns ``path``."""
        files = _store.write(path, self._index.index, self._payload, self.meta,
                             overwrite=overwrite)
        self.meta["files"] = files
        return Path(path)

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
            Metadata the caller requires, e.g. ``{"patch_size": 7, "normalisation":
            {"hu_scale": 100.0}}``, compared key by key (nested mappings too); any
            difference raises :class:`DictionaryMismatchError`.  The format version
            and the normalisation type are always checked.
        device : {"auto", "cpu", "gpu"}, optional
            "auto": all GPUs if FAISS sees one (``faiss.index_cpu_to_all_gpus``; an
            index without a GPU version, like fast-scan PQ, is replaced there by
            exact search of the stored keys), else CPU.
        n_threads : int, optional
            FAISS OpenMP threads for search (default: the cores this process may use).
        verify : bool, optional
            Check the SHA-256 of the data files against ``meta.json``.

        Returns
        -------
        PatchDictionary
            With the default settings (see :meth:`with_settings`).
        """
        index, payload, meta = _store.read(path, expect=expect, verify=verify)
        config = DictionaryConfig.from_dict(meta["config"])
        return cls(index=DictionaryIndex(index, config=config, meta=meta, device=device),
                   payload=payload,
                   n_threads=n_threads if n_threads is not None else available_cores())

    # ------------------------------------------------------------------ search

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

    def search(self, patches: np.ndarray, *, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest entries of ULD ``patches`` (n, patch_size**2), in HU, row-major.

        Returns
        -------
        distance, ids : ndarray of shape (n, k), float32 and int64
            Normalised distances (see :meth:`propose`) and entry numbers; inf and -1
            where fewer than k were found.
        """
        k = positive_int(k, "k")
        keys = self.keys_of(patches)
        if not np.isfinite(keys).all():
            raise ValueError("Expected finite patches; received NaN/inf values.")
        dist, ids = self._search(keys, k)
        delta = self._index.normalise(dist)
        delta[ids < 0] = np.inf
        return delta, ids

    def _search(self, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared distances and ids of the nearest entries of ``(n, key_dim)`` keys."""
        return self._index.search(keys, k, self.n_threads)

    def prepare(self, *, progress: bool = False) -> None:
        """Ready the search index now (on CPU: read or build the search graph, with a notice
        on stderr while a build runs when ``progress``) instead of on the first search."""
        self._index.prepare(progress=progress)

    def _cpu_graph(self) -> Any:
        """The CPU search graph, built (or read from the cache) now; experiments time it."""
        return self._index.cpu_graph()

    def stored_keys(self) -> np.ndarray | None:
        """The exact keys ``(n, key_dim)`` float32, if the index keeps them, else None.

        Available for ``Flat``, ``IVF...,Flat``, ``HNSW..`` (flat storage) and
        any index ending in ``RFlat``; None for lossy codes (PQ, SQ) without
        refinement or with a ``PCA`` prefix.
        """
        return self._index.stored_keys()

    def set_search_params(self, params: str) -> None:
        """Change the search-time parameters, e.g. ``"nprobe=32"`` (more recall, slower).

        ``params`` is a ``faiss.ParameterSpace`` string; it replaces
        ``meta["search_params"]`` (saved with the dictionary).  Entries the
        index does not know are ignored.  Copies made by :meth:`with_settings`
        share the index, and so the change.
        """
        if not isinstance(params, str):
            raise ValueError(
                f"Expected search parameters as a string like 'nprobe=16'; received {type(params).__name__}."
            )
        self._index.set_search_params(params)

    def set_cpu_graph(self, m: int | None) -> None:
        """Search on CPU an HNSW graph with ``m`` links per node, or (None) the stored index.

        Changes ``config.cpu_graph`` (saved with the dictionary; shared with
        the copies made by :meth:`with_settings`); see :class:`DictionaryConfig`
        for what the graph is and what it buys.
        """
        self._index.set_cpu_graph(m)

    # ------------------------------------------------------------------ propose

    def propose(self, volume: Any, *, lung_mask: Any = None, body_mask: Any = None) -> Proposal:
        """Restore a slice or a volume from the dictionary, with this dictionary's settings.

        Parameters
        ----------
        volume : Volume or ndarray of shape (Z, Y, X) or (Y, X)
            The ULD image in HU.  Not modified.  A 2-D slice gives the same
            image as a one-slice volume.
        lung_mask : ndarray of bool, optional
            Accepted for the proposer contract (:mod:`hybrid.proposal`) and
            ignored: the dictionary treats lung and body alike.
        body_mask : ndarray of bool, same shape, optional
            Pixels to restore (default: all).  Outside it the input is returned.

        Returns
        -------
        Proposal
            ``image``: the proposed ND image, float32, the input's shape;
            ``uncertainty`` (``kind="nn_distance"``): the per-pixel normalised
            nearest-neighbour distance (package docstring, "Distance"): about 1
            or below, as good a match as the noise allows; several, a pattern
            the dictionary has not seen; ``fill_distance`` (inf) outside the
            body, so a blender's weight there is 0.  ``name``: "dictionary".
        """
        return propose(volume, body_mask, settings=self._settings, index=self._index,
                       payload=self._payload, patch_size=self.patch_size,
                       n_threads=self.n_threads)
