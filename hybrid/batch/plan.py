"""Planning a batch: which series, which output path and format for each."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from hybrid.io.discover import find_series, inside
from hybrid.io.formats import OUTPUT_SUFFIX, format_of, strip_suffix

__all__ = ["OUTPUT_FORMATS", "plan_series", "short_hash"]

#: ``hybrid batch --format`` choices; "same" keeps the input's format.
OUTPUT_FORMATS = ("same", "dicom", "nifti", "hdf5", "npz")


def _out_format(source: Path, fmt: str) -> str:
    if fmt != "same":
        return fmt
    src_fmt = "dicom" if source.is_dir() else format_of(source)
    return {"npy": "hdf5"}.get(src_fmt, src_fmt)  # .npy has no spacing: keep it in HDF5


def _out_name(name: Path, fmt: str, tag: str = "") -> Path:
    return name.with_name(f"{strip_suffix(name.name)}{tag}{OUTPUT_SUFFIX[fmt]}")


def short_hash(text: str, n: int = 8) -> str:
    """The first ``n`` hex digits of the SHA-1 of ``text`` (names, Dask keys)."""
    return hashlib.sha1(text.encode()).hexdigest()[:n]


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
        if Path(arg).is_dir() and inside(out_dir, Path(arg)):
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
            out = _out_name(name, f, "-" + short_hash(str(src)))
        out = out_dir / out
        if out.resolve() == src or (src.is_dir() and inside(out, src)) or inside(src, out):
            raise ValueError(
                f"Expected outputs apart from the inputs; the output of {src} would be {out}. "
                "hybrid never writes over its input: choose another output folder.")
        jobs.append({"source": str(src), "output": str(out), "format": f})
    return jobs
