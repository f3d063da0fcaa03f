"""Which format a path names, and the suffixes that name them.

The one place for the file suffixes of the formats :func:`hybrid.io.load` reads
and :func:`hybrid.io.save` writes; a path without one of them is DICOM (a
folder of instances, or a single instance).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FORMATS", "SUFFIXES", "VOLUME_SUFFIXES", "OUTPUT_SUFFIX", "format_of",
           "strip_suffix"]

FORMATS = ("dicom", "nifti", "hdf5", "npy", "npz")

#: Suffixes per format (lower case; the first is what outputs get).
SUFFIXES = {
    "nifti": (".nii.gz", ".nii"),
    "hdf5": (".h5", ".hdf5"),
    "npy": (".npy",),
    "npz": (".npz",),
    "dicom": (".dcm",),
}

#: Suffixes of the one-file volume formats (a DICOM series is a folder).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".hdf5", ".h5", ".npz", ".npy")

#: Suffix of an output written in each format (none: a DICOM series is a folder).
OUTPUT_SUFFIX = {"dicom": "", "nifti": ".nii.gz", "hdf5": ".h5", "npy": ".npy", "npz": ".npz"}


def format_of(path: str | os.PathLike) -> str:
    """The format a path names, from its suffix ("dicom" for folders and other files)."""
    name = Path(path).name.lower()
    for fmt in ("nifti", "hdf5", "npy", "npz"):
        if name.endswith(SUFFIXES[fmt]):
            return fmt
    return "dicom"


def strip_suffix(name: str) -> str:
    """``name`` without its format suffix (``.nii.gz``, ``.nii``, ``.h5``, … ``.dcm``), if any."""
    for suffix in VOLUME_SUFFIXES + SUFFIXES["dicom"]:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
