"""What runs on the Dask workers: the per-worker model plugin and the one-series task.

Imported only by :func:`hybrid.batch.run_batch` (and, by reference, on the
workers): it imports ``distributed`` at the top, which ``import hybrid`` and
``hybrid --help`` must not pay for.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker

log = logging.getLogger("hybrid.batch")

PLUGIN_PREFIX = "hybrid-enhancer-"

#: Enhancers loaded in this process outside a plugin (a worker that lacks it), by config key.
_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that cap the numeric libraries at ``threads`` threads."""
    return {k: str(int(threads)) for k in _THREAD_ENV}


def limit_threads(threads: int) -> None:
    """Cap OpenMP/BLAS, TensorFlow and FAISS of this process at ``threads`` threads.

    Call before the models load: TensorFlow accepts its limit only before its first op
    (afterwards the existing setting stays and a note is logged).
    """
    os.environ.update(thread_env(threads))
    from hybrid.cnn.models import set_threads
    from hybrid.dictionary import set_search_threads

    set_search_threads(int(threads))
    if not set_threads(int(threads)):
        log.info("TensorFlow had already started; its thread pools keep their size")


def load_enhancer(assets: dict[str, str | None], options: dict[str, Any], threads: int):
    """An :class:`hybrid.Enhancer` with ``threads`` compute threads."""
    from hybrid.pipeline import Enhancer

    limit_threads(threads)
    enhancer = Enhancer(cnn=assets.get("cnn"), dictionary=assets.get("dictionary"),
                               blender=assets.get("blender"), **options)
    if enhancer.dictionary is not None:
        enhancer.dictionary.n_threads = int(threads)
    # a first-time search graph is built now, under the start-up notice, not in a task
    return enhancer.prepare(progress=False)


class EnhancerPlugin(WorkerPlugin):
    """Loads the models once per worker (when it joins), with its threads capped.

    Registered under ``hybrid-enhancer-<config key>`` with ``idempotent = True``: a
    second batch with the same models on the same cluster reuses the loaded ones.
    """

    idempotent = True

    def __init__(self, key: str, assets: dict[str, str | None], options: dict[str, Any],
                 threads: int) -> None:
        self.key, self.assets, self.options, self.threads = key, assets, options, int(threads)
        self.enhancer: Any = None
        self.error: str | None = None

    @property
    def name(self) -> str:  # distributed reads the plugin's name from here
        return PLUGIN_PREFIX + self.key

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["enhancer"] = None  # never ship loaded models
        return state

    async def setup(self, worker) -> None:
        # the models of another configuration are dropped (a task needing them reloads)
        for name, other in list(worker.plugins.items()):
            if name.startswith(PLUGIN_PREFIX) and other is not self and hasattr(other, "enhancer"):
                other.enhancer = None
        loop = asyncio.get_running_loop()
        try:  # in a thread: the worker keeps answering the scheduler while TensorFlow loads
            self.enhancer = await loop.run_in_executor(
                None, load_enhancer, self.assets, self.options, self.threads)
        except Exception as exc:  # reported by every task that needs it, not here
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("hybrid batch: models not loaded on %s: %s", worker.address, self.error)

    def teardown(self, worker) -> None:
        self.enhancer = None


def _enhancer(key: str, assets: dict, options: dict, threads: int):
    try:
        plugin = get_worker().plugins.get(PLUGIN_PREFIX + key)
    except ValueError:  # not on a worker (a local call)
        plugin = None
    if plugin is not None and plugin.enhancer is not None:
        return plugin.enhancer
    if plugin is not None and plugin.error:
        raise RuntimeError(f"the models could not be loaded on this worker: {plugin.error}")
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE.clear()
            _CACHE[key] = load_enhancer(assets, options, threads)
        return _CACHE[key]


def _noise(array, mask) -> float | None:
    from hybrid.physics import estimate_noise_hu

    try:
        return round(float(estimate_noise_hu(array, mask=mask)), 2)
    except ValueError:  # too little soft tissue (tiny or odd image): not estimated
        return None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def enhance_series(job: dict[str, Any], key: str, assets: dict[str, str | None],
                   options: dict[str, Any], threads: int,
                   dose_fraction: float | None = None) -> dict[str, Any]:
    """Enhance one series and write it atomically; return its manifest record.

    Never raises for a bad series: the record says ``status: "failed"`` and why.  A
    worker that dies mid-series leaves no output (the write is atomic) and Dask runs
    the task again elsewhere; an output left by a run killed after writing is replaced.
    """
    from hybrid.batch.manifest import output_digest
    from hybrid.io import load, save, save_options
    from hybrid.lung import body_mask

    rec: dict[str, Any] = dict(job)
    try:
        host = get_worker().address
    except ValueError:
        host = socket.gethostname()
    rec.update(status="failed", worker=host, started_at=_now(), error=None)
    t0 = time.perf_counter()
    try:
        enhancer = _enhancer(key, assets, options, threads)
        t1 = time.perf_counter()
        vol = load(job["source"])
        t2 = time.perf_counter()
        body = body_mask(vol)
        rec["series_uid"] = vol.provenance.series_uid
        rec["shape_zyx"] = list(vol.shape)
        rec["slices"] = int(vol.shape[0])
        rec["noise_before_hu"] = _noise(vol.array, body)
        c2 = time.process_time()
        res = enhancer.enhance(vol, dose_fraction=dose_fraction, progress=False,
                               return_maps=bool(job.get("report")))
        out, maps = res if job.get("report") else (res, None)
        t3, c3 = time.perf_counter(), time.process_time()
        rec["noise_after_hu"] = _noise(out.array, body)
        rec["input"] = dict(enhancer.last_info["input"])  # what it looked like, what was done
        fmt = job["format"]
        extra = {"transfer_syntax": job.get("transfer_syntax", "source")} if fmt == "dicom" else {}
        saved = save(out, job["output"], format=fmt, overwrite=True, **save_options(out, fmt),
                     **extra)
        t4 = time.perf_counter()
        if fmt == "dicom":
            rec["output_series_uid"] = saved.series_uid
        rec["output_sha256"] = output_digest(saved.path)
        if job.get("report"):
            from hybrid.series_report import write_report

            Path(job["report"]).parent.mkdir(parents=True, exist_ok=True)
            write_report(job["report"], vol, out, maps, enhancer.last_info, overwrite=True)
        rec["timings_s"] = {"models": round(t1 - t0, 3), "load": round(t2 - t1, 3),
                            "enhance": round(t3 - t2, 3), "save": round(t4 - t3, 3),
                            # CPU seconds of this worker process while enhancing (all threads)
                            "enhance_cpu": round(c3 - c2, 3),
                            "total": round(time.perf_counter() - t0, 3)}
        rec["status"] = "done"
    except Exception as exc:  # one bad series must not stop the others
        rec["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        rec.setdefault("timings_s", {"total": round(time.perf_counter() - t0, 3)})
    rec["finished_at"] = _now()
    return rec
