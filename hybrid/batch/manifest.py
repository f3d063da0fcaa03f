"""The batch manifest (``DIR/manifest.jsonl``), output digests, the per-folder lock.

A series counts as done when its manifest line says so *and* its output is
present with the recorded SHA-256, written from the same input (size/mtime
fingerprint) with the same models and settings (config key).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hybrid._version import __version__
from hybrid.io._atomic import atomic_file, sha256_file

__all__ = ["MANIFEST_NAME", "LOCK_NAME", "MANIFEST_FIELDS", "Manifest", "output_digest",
           "stat_digest", "config_key", "is_done", "remove_leftovers", "locked"]

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


def stat_digest(path: Path | None) -> str:
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


def config_key(assets: dict[str, str | None], options: dict[str, Any],
               dose_fraction: float | None) -> str:
    """Digest of the version, models (path and stat digest), settings and dose fraction."""
    from hybrid.pipeline import default_asset_paths

    defaults = default_asset_paths()
    parts: dict[str, Any] = {"version": __version__, "options": options, "dose": dose_fraction}
    for name in ("cnn", "dictionary", "blender"):
        value = assets.get(name)
        if name == "dictionary" and not value:  # no dictionary (the default)
            parts[name] = None
            continue
        path = Path(value) if value else defaults[name]
        parts[name] = [str(path), stat_digest(path)]
    # the workers' Enhancer takes the shipped noise-aware pair when the blender has its rule
    parts["noise_aware"] = [str(defaults["noise_aware"]), stat_digest(defaults["noise_aware"])]
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


def is_done(rec: dict[str, Any] | None, job: dict[str, str], fingerprint: str,
            config: str) -> bool:
    """Done and valid: recorded done, same output/models/input, output present and intact."""
    if not rec or rec.get("status") != "done":
        return False
    if (rec.get("output") != job["output"] or rec.get("format") != job["format"]
            or rec.get("config") != config or rec.get("input_fingerprint") != fingerprint):
        return False
    out = Path(job["output"])
    return out.exists() and output_digest(out) == rec.get("output_sha256")


def remove_leftovers(output: Path) -> int:
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
def locked(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir``'s lock file for one batch (ValueError when another holds it)."""
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
