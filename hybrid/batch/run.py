"""Running a batch on Dask: the cluster or client, one task per series, the summary.

By default a :class:`distributed.LocalCluster` of worker processes on this
machine; with ``scheduler=`` a running Dask scheduler, whose workers may sit on
many machines sharing the file system.  Dask is imported when a batch runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hybrid._version import __version__
from hybrid.batch.manifest import (
    MANIFEST_NAME,
    Manifest,
    config_key,
    is_done,
    locked,
    remove_leftovers,
    stat_digest,
)
from hybrid.batch.plan import plan_series, short_hash

__all__ = ["BatchSummary", "run_batch"]


# --------------------------------------------------------------------------- summary
@dataclasses.dataclass
class BatchSummary:
    """What a batch did.  ``ok``: every series is done (now or before).

    ``wall_s`` is the whole run; ``startup_s`` the part spent starting the cluster (or
    connecting) and loading the models on the workers.
    """

    out_dir: str
    manifest: str
    total: int
    done: int
    skipped: int
    failed: int
    slices: int
    wall_s: float
    startup_s: float
    workers: int
    failures: list[dict[str, str]]
    records: list[dict[str, Any]] = dataclasses.field(repr=False)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def series_per_min(self) -> float:
        return 60.0 * self.done / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def slices_per_s(self) -> float:
        return self.slices / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("records")
        d.update(ok=self.ok, series_per_min=round(self.series_per_min, 3),
                 slices_per_s=round(self.slices_per_s, 3))
        return d

    def __str__(self) -> str:
        lines = [f"batch: {self.done} done, {self.skipped} already done, {self.failed} failed "
                 f"of {self.total} series; {self.slices} slices in {self.wall_s:.1f} s "
                 f"({self.series_per_min:.2f} series/min, {self.slices_per_s:.2f} slices/s, "
                 f"{self.workers} worker(s), {self.startup_s:.1f} s of it starting them)",
                 f"manifest: {self.manifest}"]
        lines += [f"failed: {f['source']}: {f['error']}" for f in self.failures]
        return "\n".join(lines)


# --------------------------------------------------------------------------- running
def _default_workers(threads_per_worker: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, threads_per_worker))


@contextlib.contextmanager
def _client(scheduler: Any, workers: int | None, threads: int) -> Iterator[tuple[Any, int]]:
    from distributed import Client, LocalCluster

    from hybrid._logs import quiet_loggers
    from hybrid.batch.worker import thread_env

    quiet_loggers("distributed")  # its scheduler and nannies log each start and stop at INFO

    if scheduler is not None and hasattr(scheduler, "submit"):  # a Client already
        yield scheduler, len(scheduler.scheduler_info().get("workers", {}))
        return
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ValueError(
                f"Expected a running Dask scheduler at {scheduler}; could not connect ({exc}). "
                "Start one (`dask scheduler`, then `dask worker ADDRESS` per machine) or leave "
                "out --scheduler for a local cluster.") from exc
        with client:
            try:
                client.wait_for_workers(1, timeout=60)
            except TimeoutError:
                raise ValueError(
                    f"Expected at least one Dask worker connected to {scheduler}; none joined in "
                    "60 s. Start workers with `dask worker ADDRESS --nthreads 1`.") from None
            yield client, len(client.scheduler_info().get("workers", {}))
        return
    n = int(workers) if workers else _default_workers(threads)
    # one task at a time per worker process; its numeric libraries get `threads` threads
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                      dashboard_address=None, env=thread_env(threads),
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client, n


#: Folder of ``out_dir`` that holds the per-series reports and their index page.
REPORTS_DIR = "reports"


def report_path(out_dir: Path, output: Path) -> Path:
    """``out_dir/reports/<output's path below out_dir, suffix dropped, / as __>.html``."""
    from hybrid.io.formats import strip_suffix

    rel = output.relative_to(out_dir)
    return out_dir / REPORTS_DIR / (strip_suffix("__".join(rel.parts)) + ".html")


def run_batch(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    scheduler: Any = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    format: str = "same",
    transfer_syntax: str = "source",
    cnn: str | os.PathLike | None = None,
    dictionary: str | os.PathLike | None = None,
    blender: str | os.PathLike | None = None,
    stride: int | tuple[int, int] | None = None,
    dose_fraction: float | None = None,
    retries: int = 1,
    progress: bool = True,
    report: bool = False,
) -> BatchSummary:
    """Enhance many series on Dask, one task per series; resumable.

    Parameters
    ----------
    inputs : path or sequence of paths
        Series (DICOM folders, .nii/.nii.gz/.h5/.npz/.npy files) or folders of them.
    out_dir : path
        Where outputs and ``manifest.jsonl`` go (created).  Outputs are named after
        the inputs (see :func:`plan_series`).
    scheduler : str or distributed.Client, optional
        Address of a running Dask scheduler (``tcp://host:8786``) or a Client.
        None: a LocalCluster of ``workers`` processes, closed at the end.
    workers : int, optional
        LocalCluster size (default: cores // threads_per_worker).  Ignored with
        ``scheduler``.
    threads_per_worker : int
        Compute threads (TensorFlow, FAISS, OpenMP/BLAS) of each worker; every
        worker runs one series at a time.
    format : {"same", "dicom", "nifti", "hdf5", "npz"}
        Output format; "same" keeps the input's (a .npy input gives HDF5).
    transfer_syntax : str
        DICOM outputs' transfer syntax (:func:`hybrid.io.dicom.write_series`): "source"
        keeps each input's; part of the configuration (a change redoes the series).
    cnn, dictionary, blender : path, optional
        Other models than the shipped ones (as ``hybrid.Enhancer`` takes them);
        the paths must be readable by the workers.
    stride, dose_fraction
        As for :class:`hybrid.Enhancer` / :meth:`hybrid.Enhancer.enhance`.
    retries : int
        Dask retries of a task that raised (a series that fails cleanly is recorded,
        not retried).  A task whose worker died is re-run by the scheduler
        (``distributed.scheduler.allowed-failures``, 3 by default).
    progress : bool
        A tqdm bar on stderr over finished series.
    report : bool
        Also write one HTML report per series (:mod:`hybrid.series_report`) to
        ``out_dir/reports/`` and an ``index.html`` there over every series of the
        manifest.  A series recorded done without its report is enhanced again.

    Returns
    -------
    BatchSummary
        Counts, failures (source and error), slices and wall time of this run;
        ``records`` holds this run's manifest lines.
    """
    t_start = time.perf_counter()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("Expected at least one INPUT (a series or a folder of series); "
                         "received none.")
    if int(threads_per_worker) < 1 or (workers is not None and int(workers) < 1):
        raise ValueError(f"Expected workers and threads_per_worker >= 1; received "
                         f"workers={workers}, threads_per_worker={threads_per_worker}.")
    from hybrid.pipeline import SHIPPED, default_asset_paths

    if isinstance(dictionary, str) and dictionary == SHIPPED:  # the workers get its folder
        dictionary = default_asset_paths()["dictionary"]
    assets = {"cnn": cnn, "dictionary": dictionary, "blender": blender}
    for name, value in assets.items():
        if value is not None:
            path = Path(value).resolve()
            if not path.exists():
                raise FileNotFoundError(f"Expected the {name} model at {path}; it does not exist.")
            assets[name] = str(path)
    if stride is not None:
        from hybrid.patches import check_stride

        sy, sx = check_stride(stride)
        stride = sy if sy == sx else [sy, sx]  # JSON-able: part of the manifest's config key
    options: dict[str, Any] = {} if stride is None else {"stride": stride}
    from tqdm.auto import tqdm

    from hybrid._progress import working

    with working(f"hybrid batch: finding the series in {len(inputs)} input(s)", enabled=progress):
        jobs = plan_series(inputs, out_dir, format)
    out_path = Path(out_dir).resolve()
    out_path.mkdir(parents=True, exist_ok=True)
    from hybrid.io.transfer import syntax_for_writing

    syntax_for_writing(transfer_syntax, None)  # a bad name fails here, not in every task
    config = config_key(assets, {**options, "transfer_syntax": transfer_syntax}, dose_fraction)

    with locked(out_path):
        manifest = Manifest(out_path / MANIFEST_NAME)
        todo, skipped = [], 0
        for job in tqdm(jobs, desc="hybrid batch: checking the manifest", unit="series",
                        disable=not progress or len(jobs) < 50, leave=False):
            job["input_fingerprint"] = stat_digest(Path(job["source"]))
            job["config"] = config
            job["hybrid_version"] = __version__
            job["transfer_syntax"] = transfer_syntax
            job["report"] = str(report_path(out_path, Path(job["output"]))) if report else None
            if is_done(manifest.get(job["source"]), job, job["input_fingerprint"], config) and (
                    not report or Path(job["report"]).is_file()):
                skipped += 1
            else:
                todo.append(job)
                remove_leftovers(Path(job["output"]))
        manifest.rewrite()
        records: list[dict[str, Any]] = []
        n_workers, startup = 0, 0.0
        if todo:
            records, n_workers, startup = _run(todo, manifest, scheduler, workers,
                                               int(threads_per_worker), config, assets, options,
                                               dose_fraction, retries, progress)
            for job in todo:
                remove_leftovers(Path(job["output"]))
        manifest.rewrite()
        if report:
            from hybrid.series_report import write_index

            write_index(out_path / REPORTS_DIR / "index.html",
                        [manifest.get(job["source"]) or job for job in jobs])
    failures = [{"source": r["source"], "error": r.get("error") or "?"}
                for r in records if r["status"] != "done"]
    done = [r for r in records if r["status"] == "done"]
    return BatchSummary(
        out_dir=str(out_path), manifest=str(manifest.path), total=len(jobs), done=len(done),
        skipped=skipped, failed=len(failures), slices=sum(int(r.get("slices") or 0) for r in done),
        wall_s=round(time.perf_counter() - t_start, 3), startup_s=round(startup, 3),
        workers=n_workers, failures=failures, records=records)


def _run(todo, manifest, scheduler, workers, threads, config, assets, options, dose_fraction,
         retries, progress) -> tuple[list[dict[str, Any]], int, float]:
    from distributed import as_completed
    from tqdm.auto import tqdm

    from hybrid._progress import working
    from hybrid.batch.worker import EnhancerPlugin, enhance_series

    records = []
    run = uuid.uuid4().hex[:8]
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        where = ("the local Dask workers" if scheduler is None else "the given Dask client"
                 if hasattr(scheduler, "submit") else f"Dask at {scheduler}")
        with working(f"hybrid batch: starting {where}, loading the models in each",
                     enabled=progress):
            client, n_workers = stack.enter_context(_client(scheduler, workers, threads))
            client.register_plugin(EnhancerPlugin(config, assets, options, threads))
        startup = time.perf_counter() - t0
        futures = {}
        for job in todo:
            key = f"hybrid-enhance-{short_hash(job['source'], 12)}-{run}"
            fut = client.submit(enhance_series, job, config, assets, options, threads,
                                dose_fraction, key=key, pure=False, retries=retries)
            futures[fut] = job
        bar = tqdm(total=len(futures), desc="hybrid batch", unit="series", disable=not progress)
        failed = 0
        try:
            for fut in as_completed(list(futures)):
                job = futures.pop(fut)
                try:
                    rec = fut.result()
                except Exception as exc:  # the task died too often (KilledWorker) or raised
                    rec = dict(job, status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
                fut.release()  # forget it: a later worker loss must not recompute it
                del fut
                manifest.append(rec)
                records.append(rec)
                failed += rec["status"] != "done"
                bar.update(1)
                bar.set_postfix(failed=failed)
        finally:
            bar.close()
            for fut in futures:  # interrupted: cancel what is left
                fut.cancel()
    return records, n_workers, startup
