"""The FAISS side of a dictionary: the index factory, search parameters and threads, the
GPU, the CPU HNSW graph (its locality order and on-disk cache) and the second look in
the stored index.  FAISS is imported inside the functions, never at module import."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.dictionary.config import INDEX_FILE, DictionaryConfig, positive_int
from hybrid.io._atomic import atomic_file

__all__ = ["DictionaryIndex", "graph_cache_dir", "set_search_threads"]

#: HNSW build effort of the CPU graph (FAISS's default is 40): a better graph for the
#: same search speed, for a one-off single-threaded build cached on disk (measured in
#: experiments/results/dictionary_search.md).
_GRAPH_EF_CONSTRUCTION = 200
#: Normalised distance above which a CPU-graph answer is checked against the stored index.
_RECHECK_DISTANCE = 1.0
#: Version of the node order of the CPU graph (part of its cache key).
_GRAPH_ORDER = "morton4x4"


def set_search_threads(n: int) -> None:
    """Set the OpenMP threads FAISS uses in this process (``faiss.omp_set_num_threads``).

    A dictionary whose ``n_threads`` is not None sets its own count around
    each search (and restores this one after).
    """
    n = positive_int(n, "n", " (FAISS threads)")
    import faiss

    faiss.omp_set_num_threads(n)


@contextlib.contextmanager
def faiss_threads(n_threads: int | None) -> Iterator[None]:
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


# --------------------------------------------------------------------------- building


def _auto_nlist(n: int) -> int:
    target = 4.0 * math.sqrt(max(n, 1))
    nlist = 2 ** max(0, round(math.log2(target)))
    while nlist > 1 and n < 39 * nlist:  # FAISS wants >= 39 training points per centroid
        nlist //= 2
    return int(nlist)


def resolve_factory(factory: str, n: int) -> str:
    """``factory`` with ``{nlist}`` replaced for ``n`` entries (see ``DictionaryConfig.factory``)."""
    return factory.replace("{nlist}", str(_auto_nlist(n)))


def pca_dim_of(factory: str) -> int | None:
    """The output dimension of a ``PCA..`` prefix of a factory string, or None."""
    for part in factory.split(","):
        part = part.strip()
        for prefix in ("PCAWR", "PCAR", "PCAW", "PCA"):
            if part.startswith(prefix) and part[len(prefix) :].isdigit():
                return int(part[len(prefix) :])
    return None


def make_index(keys: np.ndarray, factory: str, n_threads: int | None) -> Any:
    """A CPU index of the resolved ``factory``, trained on and filled with ``keys``."""
    import faiss

    try:
        index = faiss.index_factory(keys.shape[1], factory)
    except RuntimeError as exc:
        raise ValueError(
            f"Invalid FAISS factory string {factory!r} for {keys.shape[1]}-d keys: {exc}. "
            "Use e.g. 'Flat', 'HNSW32' or 'IVF{nlist},PQ8x4fs,RFlat' (PQ sizes must divide the dimension)."
        ) from exc
    with faiss_threads(n_threads):
        if not index.is_trained:
            index.train(keys)
        index.add(keys)
    return index


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


def _reports_reduced_distances(index: Any) -> bool:
    """Whether ``index`` returns distances in a space reduced from the keys' (a FAISS
    ``PCA..`` prefix without a final refinement)."""
    import faiss

    top = _unwrap(index)[0]
    return isinstance(top, faiss.IndexPreTransform) and not isinstance(top, faiss.IndexRefine)


def index_space_distance2(index: Any, a: np.ndarray, b: np.ndarray, full: float) -> float:
    """Mean squared distance ``2 |a - b|^2`` as ``index`` reports it: ``full`` (given, in
    key space) unless a ``PCA..`` prefix maps the keys first."""
    import faiss

    if not _reports_reduced_distances(index):
        return full
    top = _unwrap(index)[0]
    for i in range(top.chain.size()):
        vt = faiss.downcast_VectorTransform(top.chain.at(i))
        a, b = vt.apply(np.ascontiguousarray(a)), vt.apply(np.ascontiguousarray(b))
    return float(2.0 * np.mean(np.sum((a - b) ** 2, axis=1)))


def stored_keys(index: Any) -> np.ndarray | None:
    """The exact keys ``(n, d)`` float32 an index keeps, or None (see
    :meth:`~hybrid.dictionary.PatchDictionary.stored_keys`)."""
    import faiss

    chain = _unwrap(index)
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


def apply_search_params(index: Any, params: str, *, gpu: bool = False) -> None:
    """Set a ``faiss.ParameterSpace`` string on ``index``, skipping entries it does not know."""
    import faiss

    ps = (
        faiss.GpuParameterSpace()
        if gpu and hasattr(faiss, "GpuParameterSpace")
        else faiss.ParameterSpace()
    )
    for item in filter(None, (s.strip() for s in (params or "").split(","))):
        try:
            ps.set_index_parameters(index, item)
        except RuntimeError:
            pass  # e.g. nprobe on a flat index: not applicable


# --------------------------------------------------------------------------- the CPU graph


def _locality_range(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1st and 99th percentiles of the first 4 key coordinates (the leading PCs)."""
    lead = keys[:, :4].astype(np.float64)
    return np.percentile(lead, 1, axis=0), np.percentile(lead, 99, axis=0)


def _locality_code(keys: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Morton (Z-order) code of the first 4 key coordinates, 4 bits each.

    Keys with close codes are close in the leading principal components, so
    sorting by it groups queries (and graph nodes) by region of key space.
    uint16, so that ``argsort(kind="stable")`` is a radix sort.
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


def _graph_cache_file(index_digest: str | None, m: int) -> Path | None:
    import faiss

    folder = graph_cache_dir()
    if not index_digest or folder is None:
        return None
    tag = hashlib.sha256(f"{index_digest}/HNSW{m}/ef{_GRAPH_EF_CONSTRUCTION}/{_GRAPH_ORDER}/"
                         f"{faiss.__version__}".encode()).hexdigest()[:24]
    return folder / f"hnsw-{tag}.faiss"


def build_cpu_graph(
    keys: np.ndarray, m: int, index_digest: str | None
) -> tuple[Any, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The HNSW graph over ``keys`` (see ``DictionaryConfig.cpu_graph``), read from the cache
    when there (keyed by the SHA-256 of the saved index), else built and cached.

    The graph's nodes are the entries in :func:`_locality_code` order; returns the graph,
    the entry number of each node, and the locality range the queries are coded with.
    """
    import faiss

    lo, hi = _locality_range(keys)
    order = np.argsort(_locality_code(keys, lo, hi), kind="stable")
    cache = _graph_cache_file(index_digest, m)
    graph = None
    if cache is not None and cache.is_file():
        try:
            graph = faiss.read_index(str(cache))
        except RuntimeError:  # a damaged cache file: build again
            graph = None
        if graph is not None and graph.ntotal != len(keys):
            graph = None
    if graph is None:
        graph = faiss.IndexHNSWFlat(keys.shape[1], m)
        graph.hnsw.efConstruction = _GRAPH_EF_CONSTRUCTION
        with faiss_threads(1):  # one thread: the same graph on every machine and load
            graph.add(np.ascontiguousarray(keys[order]))
        if cache is not None:
            try:
                with atomic_file(cache) as tmp:
                    faiss.write_index(graph, str(tmp))
            except OSError:  # a read-only home: fine, the graph lives in memory
                pass
    return graph, order.astype(np.int64), (lo, hi)


# --------------------------------------------------------------------------- search


def _num_gpus() -> int:
    import faiss

    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # pragma: no cover
        return 0


def check_device(device: str) -> str:
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(
            f"Invalid value for argument `device`. Expected 'auto', 'cpu' or 'gpu'. Received device={device!r}."
        )
    return device


class DictionaryIndex:
    """The searchable side of a dictionary, shared by every copy of it.

    Holds the stored CPU index (what is saved), the index actually searched (the
    same, its GPU copy, or the CPU graph) and the dictionary's ``config`` and ``meta``
    (read for the search parameters, the noise scale of the distances and the index
    digest that keys the graph cache).  Built lazily on the first search.
    """

    def __init__(self, index: Any, *, config: DictionaryConfig, meta: dict[str, Any],
                 device: str = "auto") -> None:
        self.index = index
        self.config = config
        self.meta = meta
        self.device = check_device(device)
        self._search_index: Any = None  # CPU or GPU index used for search
        self._space = "index"  # space of the distances it returns: "full" (keys') or "index"
        self._graph: Any = None  # the CPU graph, the entry of each node, the locality range
        self._graph_ids: np.ndarray | None = None
        self._locality: tuple[np.ndarray, np.ndarray] | None = None
        apply_search_params(index, meta.get("search_params") or "")

    def set_search_params(self, params: str) -> None:
        self.meta["search_params"] = params
        apply_search_params(self.index, params)
        self._search_index = None  # rebuilt (and re-moved to the GPU) on the next search

    def set_cpu_graph(self, m: int | None) -> None:
        self.config = dataclasses.replace(self.config, cpu_graph=m)  # validates m
        if isinstance(self.meta.get("config"), dict):
            self.meta["config"]["cpu_graph"] = m
        self._search_index = None
        self._graph = self._graph_ids = self._locality = None

    def stored_keys(self) -> np.ndarray | None:
        return stored_keys(self.index)

    def cpu_graph(self) -> Any:
        """The CPU graph (built or read from the cache), or None where the index keeps no
        exact keys."""
        keys = self.stored_keys()
        if keys is None:
            return None
        digest = self.meta.get("files", {}).get(INDEX_FILE)
        graph, self._graph_ids, self._locality = build_cpu_graph(
            keys, int(self.config.cpu_graph), digest)
        return graph

    def _wants_gpu(self) -> bool:
        """Whether searches run on a GPU: asked for, or "auto" with one visible."""
        return self.device == "gpu" or (self.device == "auto" and _num_gpus() > 0)

    def will_build_graph(self) -> bool:
        """Whether the first CPU search builds the graph (single-threaded, tens of seconds
        for the shipped dictionary): a CPU search with ``cpu_graph`` set, exact keys
        stored, and no copy in the cache (:func:`graph_cache_dir`)."""
        if self._search_index is not None or not self.config.cpu_graph or self._wants_gpu():
            return False
        if self._graph is not None or self.stored_keys() is None:
            return False
        cache = _graph_cache_file(self.meta.get("files", {}).get(INDEX_FILE),
                                  int(self.config.cpu_graph))
        return cache is None or not cache.is_file()

    def prepare(self, *, progress: bool = False) -> None:
        """Make the index ready to search now rather than on the first search; where that
        builds the CPU graph, say so on stderr while it runs (``progress``)."""
        from hybrid._progress import working

        folder = graph_cache_dir()
        where = f"cached in {folder}" if folder is not None else "not cached: HYBRID_CACHE_DIR=''"
        with working("hybrid: building the patch dictionary's search graph for this machine "
                     f"(once; {where})", enabled=progress and self.will_build_graph(), after=0):
            self._ensure_search_index()

    def _ensure_search_index(self) -> Any:
        if self._search_index is not None:
            return self._search_index
        import faiss

        self._search_index = self.index
        self._space = "index" if _reports_reduced_distances(self.index) else "full"
        want_gpu = self._wants_gpu()
        if not want_gpu and self.config.cpu_graph:
            graph = self._graph if self._graph is not None else self.cpu_graph()
            if graph is not None:
                self._graph = graph
                apply_search_params(graph, self.meta.get("search_params") or "")
                self._search_index, self._space = graph, "full"
        if want_gpu:
            self._move_to_gpu(faiss)
        return self._search_index

    def _move_to_gpu(self, faiss: Any) -> None:
        if _num_gpus() == 0:
            raise RuntimeError(
                "Expected a CUDA GPU for device='gpu'; faiss sees none. Install faiss-gpu-cu12 "
                "(pip install 'hybrid-ct[gpu]') or use device='cpu'/'auto'."
            )
        try:
            gpu = faiss.index_cpu_to_all_gpus(self.index)
            apply_search_params(gpu, self.meta.get("search_params") or "", gpu=True)
            self._search_index = gpu
        except (RuntimeError, AttributeError) as exc:
            keys = self.stored_keys()
            if keys is None:
                warnings.warn(
                    f"FAISS cannot move index {self.meta.get('factory')!r} to the GPU ({exc}); "
                    "searching on CPU.",
                    stacklevel=4,
                )
            else:  # fast-scan PQ has no GPU version: exact search of the stored keys instead
                flat = faiss.IndexFlatL2(keys.shape[1])
                flat.add(keys)
                self._search_index = faiss.index_cpu_to_all_gpus(flat)
                self._space = "full"

    def search(self, keys: np.ndarray, k: int, n_threads: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Squared key distances and entry numbers ``(n, k)`` of the nearest entries."""
        index = self._ensure_search_index()
        if self._graph_ids is None or index is not self._graph:
            with faiss_threads(n_threads):
                return index.search(keys, k)
        # the CPU graph: queries in locality order, answers in the caller's
        order = np.argsort(_locality_code(keys, *self._locality), kind="stable")
        with faiss_threads(n_threads):
            d_sorted, n_sorted = index.search(np.ascontiguousarray(keys[order]), k)
        dist = np.empty_like(d_sorted)
        ids = np.empty_like(n_sorted)
        dist[order] = d_sorted
        ids[order] = np.where(n_sorted >= 0, self._graph_ids[np.maximum(n_sorted, 0)], -1)
        # Second look where the graph's answer is farther than noise explains: a greedy
        # graph walk can miss a small, isolated cluster of keys (strong edges), while the
        # stored IVF index probes by centroid (how often: experiments/results/dictionary_search.md).
        far = np.flatnonzero(self.normalise(dist[:, 0]) > _RECHECK_DISTANCE)
        if len(far) and index is not self.index:
            with faiss_threads(n_threads):
                d2, n2 = self.index.search(np.ascontiguousarray(keys[far]), k)
            better = (n2[:, 0] >= 0) & (d2[:, 0] < dist[far, 0])
            dist[far[better]], ids[far[better]] = d2[better], n2[better]
        return dist, ids

    def normalise(self, dist2: np.ndarray) -> np.ndarray:
        """Squared key distances -> normalised distances ``sqrt(D / D_noise)``, float32."""
        noise = self.meta["noise"]
        ref = noise["distance2_full"] if self._space == "full" else noise["distance2_index"]
        return np.sqrt(np.maximum(dist2, 0.0) / max(ref, 1e-12)).astype(np.float32)
