"""Finding series on disk: DICOM sniffing, series folders, volume files, path containment.

Light on purpose (no pydicom): a DICOM file is recognised by its ``.dcm``
suffix or the ``DICM`` magic at byte 128; a *series folder* holds such files
directly (:func:`hybrid.io.load` then reads it, recursively).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from hybrid.io.formats import VOLUME_SUFFIXES

__all__ = ["is_dicom_file", "is_series_folder", "is_volume_file", "walk_series", "find_series",
           "inside"]

#: Suffixes never taken for DICOM (sidecar files beside a series).
_NOT_DICOM = (".json", ".txt", ".md", ".csv", ".png", ".jpg", ".xml")
#: A folder is a series folder when one of its first this many files is DICOM.
_SNIFF_FILES = 50


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or a file with the DICOM preamble magic (hidden files never)."""
    path = Path(path)
    if path.name.startswith("."):
        return False
    if path.suffix.lower() == ".dcm":
        return True
    if path.suffix.lower() in _NOT_DICOM:
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def is_series_folder(folder: Path) -> bool:
    """A folder holding DICOM files directly (:func:`hybrid.io.load` reads it, recursively)."""
    files = (p for p in Path(folder).iterdir() if p.is_file())
    return any(is_dicom_file(p) for _, p in zip(range(_SNIFF_FILES), files))


def is_volume_file(path: Path) -> bool:
    """A NIfTI, HDF5 or NumPy file by its suffix (hidden files never)."""
    path = Path(path)
    return not path.name.startswith(".") and path.name.lower().endswith(VOLUME_SUFFIXES)


def walk_series(folder: Path) -> Iterator[Path]:
    """The series under ``folder`` in sorted order: DICOM series folders and volume files."""
    for child in sorted(Path(folder).iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            if is_series_folder(child):
                yield child
            else:
                yield from walk_series(child)
        elif is_volume_file(child):
            yield child


def find_series(inputs: Iterable[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """``(source, name)`` per series: a file or DICOM folder as given, or what a folder holds.

    A folder that holds DICOM files is one series; any other folder is searched
    for series (NIfTI/HDF5/NumPy files, DICOM folders), whose ``name`` is then their
    path relative to it (outputs can mirror that tree).

    Raises
    ------
    FileNotFoundError
        An input does not exist.
    ValueError
        A folder holds no series.
    """
    found: list[tuple[Path, Path]] = []
    for arg in inputs:
        path = Path(arg)
        if not path.exists():
            raise FileNotFoundError(
                f"Expected each INPUT to be a DICOM folder, a .nii/.nii.gz/.h5/.npz/.npy file or "
                f"a folder of them; nothing exists at {path}. Check the path (quote globs).")
        if path.is_file() or is_series_folder(path):
            found.append((path, Path(path.name)))
            continue
        held = [(p, p.relative_to(path)) for p in walk_series(path)]
        if not held:
            raise ValueError(
                f"Expected {path} to be a DICOM series folder or to hold series (DICOM folders, "
                f".nii/.nii.gz/.h5/.npz/.npy files); it holds none. Pass the series themselves.")
        found.extend(held)
    return found


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved)."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False
