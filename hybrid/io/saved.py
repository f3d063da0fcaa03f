"""What :func:`hybrid.io.save` wrote."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Saved"]


@dataclass(frozen=True)
class Saved:
    """The result of :func:`hybrid.io.save`: where, in which format, and (DICOM) which series.

    Usable wherever the output path is: ``os.fspath(saved)``, ``Path(saved)``,
    ``hybrid.load(saved)`` and ``str(saved)`` give the path.

    Attributes
    ----------
    path : Path
        The output: a folder for DICOM, a file otherwise.
    format : str
        One of :data:`hybrid.io.FORMATS`.
    series_uid : str or None
        DICOM: the SeriesInstanceUID of the derived series written; else None.
    files : tuple of Path
        The files written (DICOM: the instances in order; otherwise ``(path,)``).
    """

    path: Path
    format: str
    series_uid: str | None = None
    files: tuple[Path, ...] = ()

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)
