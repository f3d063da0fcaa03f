"""Enhance many series at once on Dask (``dask.distributed``): ``hybrid batch``.

One Dask task per series (a DICOM folder, a NIfTI, HDF5 or NumPy file).  By
default a :class:`distributed.LocalCluster` of worker processes on this machine;
with ``scheduler=`` (CLI ``--scheduler``) a running Dask scheduler, whose
workers may sit on many machines sharing the file system.  Each worker loads
the models once (a worker plugin) with its compute threads capped, so workers
do not oversubscribe the cores.

Every finished series gets a line in ``DIR/manifest.jsonl`` (see
:data:`MANIFEST_FIELDS`); outputs are written atomically.  Re-running the same
command skips the series whose output is present and matches the recorded
SHA-256 (same models, same input), and redoes the others; a failing series is
recorded and does not stop the rest.  One run per output folder at a time
(a lock file says so).

``import hybrid.batch`` stays light: Dask, TensorFlow and FAISS are imported
when a batch runs (and on the workers).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hybrid.io import format_of
from hybrid.io._atomic import atomic_file, sha256_file

__all__ = ["run_batch", "BatchSummary", "Manifest", "plan_series", "output_digest", "add_cli",
           "MANIFEST_NAME", "MANIFEST_FIELDS"]

log = logging.getLogger("hybrid.batch")

MANIFEST_NAME = "manifest.jsonl"
LOCK_NAME = ".hybrid-batch.lock"

#: What a manifest line holds (one JSON object per series; the last line of a source wins).
MANIFEST_FIELDS = {
    "source": "the input series (absolute path)",
    "output": "the enhanced output (absolute path; a folder for DICOM)",
    "format": "output format: dicom, nifti, hdf5 or npz",
    "status": "done or failed",
    "error": "why it failed (exception type and message), else null",
    "series_uid": "the input's SeriesInstanceUID (DICOM input), else null",
    "output_series_uid": "the derived series' UID (DICOM output)",
    "shape_zyx": "volume shape", "slices": "number of slices",
    "noise_before_hu": "estimated noise of the input in the body (HU), null if not estimable",
    "noise_after_hu": "the same on the output",
    "timings_s": "seconds: models (0 when preloaded), load, enhance, save, total; "
                 "enhance_cpu: CPU seconds of the worker while enhancing",
    "started_at": "UTC start time", "finished_at": "UTC end time",
    "worker": "the Dask worker that ran it",
    "output_sha256": "SHA-256 of the output (of its files' digests for a folder)",
    "input_fingerprint": "size/mtime digest of the input (a changed input is redone)",
    "config": "digest of the models and settings (other models: redone)",
    "hybrid_version": "hybrid version",
}

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".hdf5", ".h5", ".npz", ".npy")
_STRIP_SUFFIXES = _VOLUME_SUFFIXES + (".dcm",)
_OUT_SUFFIX = {"dicom": "", "nifti": ".nii.gz", "hdf5": ".h5", "npz": ".npz"}
OUTPUT_FORMATS = ("same", "dicom", "nifti", "hdf5", "npz")


# --------------------------------------------------------------------------- finding series
def _is_dicom_file(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if path.suffix.lower() == ".dcm":
        return True
    if path.suffix.lower() in (".json", ".txt", ".md", ".csv", ".png", ".jpg", ".xml"):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _is_series_folder(folder: Path) -> bool:
    """A folder holding DICOM files directly (hybrid.load reads it, recursively)."""
    files = (p for p in folder.iterdir() if p.is_file())
    return any(_is_dicom_file(p) for _, p in zip(range(50), files))


def _is_volume_file(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.lower().endswith(_VOLUME_SUFFIXES)


def _walk(folder: Path) -> Iterator[Path]:
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            if _is_series_folder(child):
                yield child
            else:
                yield from _walk(child)
        elif _is_volume_file(child):
            yield child


def find_series(inputs: Iterable[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """``(source, name)`` per series: a file or DICOM folder as given, or what a folder holds.

    A folder that holds DICOM files is one series; any other folder is searched
    for series (NIfTI/HDF5/NumPy files, DICOM folders), whose ``name`` is then their
    path relative to it (the outputs mirror that tree).
    """
    found: list[tuple[Path, Path]] = []
    for arg in inputs:
        path = Path(arg)
        if not path.exists():
            raise FileNotFoundError(
                f"Expected each INPUT to be a DICOM folder, a .nii/.nii.gz/.h5/.npz/.npy file or "
                f"a folder of them; nothing exists at {path}. Check the path (quote globs).")
        if path.is_file() or _is_series_folder(path):
            found.append((path, Path(path.name)))
            continue
        inside = [(p, p.relative_to(path)) for p in _walk(path)]
        if not inside:
            raise ValueError(
                f"Expected {path} to be a DICOM series folder or to hold series (DICOM folders, "
                f".nii/.nii.gz/.h5/.npz/.npy files); it holds none. Pass the series themselves.")
        found.extend(inside)
    return found


def _out_format(source: Path, fmt: str) -> str:
    if fmt != "same":
        return fmt
    src_fmt = "dicom" if source.is_dir() else format_of(source)
    return {"npy": "hdf5"}.get(src_fmt, src_fmt)  # .npy has no spacing: keep it in HDF5


def _out_name(name: Path, fmt: str, tag: str = "") -> Path:
    base = name.name
    for suffix in _STRIP_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return name.with_name(f"{base}{tag}{_OUT_SUFFIX[fmt]}")


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def _inside(path: Path, folder: Path) -> bool:
    from hybrid.cli import _inside as inside

    return inside(path, folder)


def plan_series(inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                fmt: str = "same") -> list[dict[str, str]]:
    """The jobs of a batch: ``{"source", "output", "format"}`` per series (absolute paths).

    Outputs are ``out_dir/<name>`` with the format's suffix (none for DICOM).  Two
    series of the same name get ``-<hash of the source>`` appended, so the outputs of
    a batch are always the same paths for the same inputs.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing input, a folder without series, an output folder inside an input
        folder, or an output that would be an input.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"Expected format one of {OUTPUT_FORMATS}; received {fmt!r}.")
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out_dir = Path(out_dir).resolve()
    for arg in inputs:
        if Path(arg).is_dir() and _inside(out_dir, Path(arg)):
            raise ValueError(
                f"Expected --out outside the inputs; received {out_dir}, inside the input folder "
                f"{arg}. hybrid never writes into its input: choose another output folder.")
    series: dict[Path, Path] = {}
    for src, name in find_series(inputs):
        series.setdefault(src.resolve(), name)  # the same series twice: once
    planned = [(src, _out_format(src, fmt), name) for src, name in series.items()]
    outs = Counter(_out_name(name, f) for _, f, name in planned)
    jobs = []
    for src, f, name in planned:
        out = _out_name(name, f)
        if outs[out] > 1:
            out = _out_name(name, f, "-" + _short_hash(str(src)))
        out = out_dir / out
        if out.resolve() == src or (src.is_dir() and _inside(out, src)) or _inside(src, out):
            raise ValueError(
                f"Expected outputs apart from the inputs; the output of {src} would be {out}. "
                "hybrid never writes over its input: choose another output folder.")
        jobs.append({"source": str(src), "output": str(out), "format": f})
    return jobs


# --------------------------------------------------------------------------- digests
def output_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file; of a folder, over its files' relative paths and SHA-256s."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def _stat_digest(path: Path) -> str:
    """Cheap identity of a file or folder: names, sizes, modification times."""
    if path is None or not path.exists():
        return "absent"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0"
                 f"{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _config_key(assets: dict[str, str | None], options: dict[str, Any],
                dose_fraction: float | None) -> str:
    from hybrid import __version__
    from hybrid.pipeline import default_asset_paths

    defaults = default_asset_paths()
    parts: dict[str, Any] = {"version": __version__, "options": options, "dose": dose_fraction}
    for name in ("cnn", "dictionary", "blender"):
        path = Path(assets[name]) if assets.get(name) else defaults[name]
        parts[name] = [str(path), _stat_digest(path)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- manifest
class Manifest:
    """``DIR/manifest.jsonl``: one JSON line per finished series; the last line of a source wins.

    Lines are appended (flushed and fsynced) as series finish; at the start and end of a
    run the file is rewritten atomically with one line per source.  A line cut short by a
    crash is ignored (that series is redone).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        self.records[rec["source"]] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        log.warning("%s line %d unreadable (cut short?): ignored", self.path, n)

    def get(self, source: str) -> dict[str, Any] | None:
        return self.records.get(source)

    def append(self, rec: dict[str, Any]) -> None:
        self.records[rec["source"]] = rec
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def rewrite(self) -> None:
        """One line per source, atomically; untouched when that is what the file holds."""
        text = "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in self.records.values())
        if self.path.exists() and self.path.read_text(encoding="utf-8") == text:
            return
        with atomic_file(self.path, overwrite=True) as tmp:
            tmp.write_text(text, encoding="utf-8")


def _is_done(rec: dict[str, Any] | None, job: dict[str, str], fingerprint: str,
             config: str) -> bool:
    """Done and valid: recorded done, same output/models/input, output present and intact."""
    if not rec or rec.get("status") != "done":
        return False
    if (rec.get("output") != job["output"] or rec.get("format") != job["format"]
            or rec.get("config") != config or rec.get("input_fingerprint") != fingerprint):
        return False
    out = Path(job["output"])
    return out.exists() and output_digest(out) == rec.get("output_sha256")


def _remove_leftovers(output: Path) -> int:
    """Remove what a killed writer left beside ``output`` (hybrid.io._atomic's temporaries)."""
    n = 0
    if not output.parent.is_dir():
        return 0
    for p in output.parent.glob(f".{output.name}.*"):
        if p.name.endswith((".tmp", ".old")):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            n += 1
    return n


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    import fcntl

    with open(out_dir / LOCK_NAME, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"Expected one hybrid batch per output folder; another one is writing to "
                f"{out_dir}. Wait for it to finish or choose another --out.") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


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

    from hybrid.batch.worker import thread_env

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


def run_batch(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    scheduler: Any = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    format: str = "same",
    cnn: str | os.PathLike | None = None,
    dictionary: str | os.PathLike | None = None,
    blender: str | os.PathLike | None = None,
    stride: int | tuple[int, int] | None = None,
    dose_fraction: float | None = None,
    retries: int = 1,
    progress: bool = True,
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
    jobs = plan_series(inputs, out_dir, format)
    out_path = Path(out_dir).resolve()
    out_path.mkdir(parents=True, exist_ok=True)
    config = _config_key(assets, options, dose_fraction)

    from hybrid import __version__

    with _locked(out_path):
        manifest = Manifest(out_path / MANIFEST_NAME)
        todo, skipped = [], 0
        for job in jobs:
            job["input_fingerprint"] = _stat_digest(Path(job["source"]))
            job["config"] = config
            job["hybrid_version"] = __version__
            if _is_done(manifest.get(job["source"]), job, job["input_fingerprint"], config):
                skipped += 1
            else:
                todo.append(job)
                _remove_leftovers(Path(job["output"]))
        manifest.rewrite()
        records: list[dict[str, Any]] = []
        n_workers, startup = 0, 0.0
        if todo:
            records, n_workers, startup = _run(todo, manifest, scheduler, workers, int(threads_per_worker),
                                      config, assets, options, dose_fraction, retries, progress)
            for job in todo:
                _remove_leftovers(Path(job["output"]))
        manifest.rewrite()
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

    from hybrid.batch.worker import EnhancerPlugin, enhance_series

    records = []
    run = uuid.uuid4().hex[:8]
    t0 = time.perf_counter()
    with _client(scheduler, workers, threads) as (client, n_workers):
        client.register_plugin(EnhancerPlugin(config, assets, options, threads))
        startup = time.perf_counter() - t0
        futures = {}
        for job in todo:
            key = f"hybrid-enhance-{_short_hash(job['source'], 12)}-{run}"
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


# --------------------------------------------------------------------------- CLI
def _cmd_batch(args: argparse.Namespace) -> int:
    summary = run_batch(
        args.inputs, args.out, scheduler=args.scheduler, workers=args.workers,
        threads_per_worker=args.threads_per_worker, format=args.format, cnn=args.cnn,
        dictionary=args.dictionary, blender=args.blender, dose_fraction=args.dose_fraction,
        progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary)
    return 0 if summary.ok else 1


def add_cli(sub: Any) -> None:
    """Register ``hybrid batch`` on the ``hybrid`` command's subparsers."""
    p = sub.add_parser(
        "batch", help="enhance many series on Dask (local processes or a cluster), resumable",
        description="Enhance many ultra-low-dose CT series, one Dask task per series, on a local "
                    "cluster of worker processes or on a running Dask scheduler. Writes "
                    "DIR/manifest.jsonl; re-running the same command skips what is done.",
        epilog="INPUTS: DICOM series folders, .nii/.nii.gz/.h5/.npz/.npy files, or folders "
               "holding them (searched recursively; the outputs mirror their tree). Outputs "
               "keep the input's format unless --format says otherwise. Exit codes: 0 all series "
               "done, 1 some failed (listed, and in the manifest), 2 bad input. Cluster: run "
               "`dask scheduler` on one machine and `dask worker tcp://HOST:8786 --nworkers N "
               "--nthreads 1` on each, then pass --scheduler tcp://HOST:8786 (all must see the "
               "same file paths). Custom models: --cnn DIR, --dictionary DIR, --blender FILE.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="a series (DICOM folder, .nii[.gz], .h5, .npz, .npy) or a folder of them")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output folder (outputs and manifest.jsonl)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="a running Dask scheduler (tcp://host:8786); default: a local cluster")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local worker processes (default: cores / threads per worker)")
    p.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                   help="compute threads of each worker (TensorFlow, FAISS, BLAS; default 1)")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default="same",
                   help="output format (default: the input's; .npy input gives HDF5)")
    p.add_argument("--dose-fraction", type=float, metavar="F",
                   help="the scans' dose relative to normal dose; recorded, informational")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cnn", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--dictionary", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--blender", type=Path, metavar="FILE", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_batch)
