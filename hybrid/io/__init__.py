"""Reading and writing volumes: DICOM series, NIfTI, HDF5, NumPy.

Only this package converts stored values to HU and back.

=================  ==========================================================
path               read as
=================  ==========================================================
folder             DICOM series (searched recursively; one series or
                   ``series_uid=``)
``*.dcm`` / other  a one-file DICOM series
``*.nii[.gz]``     NIfTI (nibabel), reoriented to (z, y, x)
``*.h5 *.hdf5``    the project's HDF5 layout (see :mod:`hybrid.io.hdf5`)
``*.npy``          a bare (z, y, x) HU array; spacing 1 mm unless given
``*.npz``          arrays ``volume`` (HU) and ``spacing`` (z, y, x) mm
=================  ==========================================================
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hybrid.io._atomic import atomic_file
from hybrid.io.derivation import save_options
from hybrid.io.formats import FORMATS, format_of
from hybrid.io.saved import Saved
from hybrid.volume import Provenance, Volume

__all__ = ["load", "save", "Saved", "FORMATS", "format_of", "save_options"]


def load(
    path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> Volume:
    """Load a CT volume in HU from a DICOM folder, NIfTI, HDF5 or NumPy file.

    Parameters
    ----------
    path : path-like
        What to read; the format follows from the path (see module docs).
    series_uid : str, optional
        DICOM only: which series to read when a folder holds several.
    spacing : tuple of 3 float, optional
        ``.npy`` only: voxel spacing (z, y, x) in mm (default 1 mm).

    Returns
    -------
    Volume
        float32 HU, axes (z, y, x), spacing in mm, provenance.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Expected a DICOM folder or a .nii/.nii.gz/.h5/.npy/.npz file; nothing exists at {path}."
        )
    fmt = "dicom" if path.is_dir() else format_of(path)
    if fmt == "dicom":
        from hybrid.io.dicom import read_series

        return read_series(path, series_uid=series_uid)
    if fmt == "nifti":
        from hybrid.io.nifti import read_nifti

        return read_nifti(path)
    if fmt == "hdf5":
        from hybrid.io.hdf5 import read_hdf5

        return read_hdf5(path)
    prov = Provenance(source=str(path))
    if fmt == "npy":
        arr = np.load(path, allow_pickle=False)
        return Volume(arr, spacing or (1.0, 1.0, 1.0), prov)
    with np.load(path, allow_pickle=False) as z:
        if "volume" not in z:
            raise ValueError(
                f"Expected an array named 'volume' in {path}; received {sorted(z.files)}. "
                "Save with np.savez(path, volume=hu, spacing=(dz, dy, dx))."
            )
        sp = tuple(float(s) for s in z["spacing"]) if "spacing" in z else (spacing or (1.0, 1.0, 1.0))
        return Volume(z["volume"], sp, prov)


def save(
    volume: Volume,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    overwrite: bool = False,
    **options,
) -> Saved:
    """Write a Volume atomically; never over its own source, never silently over a file.

    Parameters
    ----------
    volume : Volume
    path : path-like
        Destination: a folder for DICOM, a file otherwise.
    format : {"dicom", "nifti", "hdf5", "npy", "npz"}, optional
        Default: from the path's suffix (a path without a known suffix is DICOM).
    overwrite : bool
        Replace an existing output (atomically).  The volume's own source is
        never overwritten.
    **options
        Passed to the writer (DICOM: ``description``, ``derivation``,
        ``series_number``, ``transfer_syntax``; :func:`hybrid.io.save_options` makes
        those of an enhanced volume).

    Returns
    -------
    Saved
        The path, format, files and (DICOM) the new SeriesInstanceUID; usable as
        the path (``os.fspath``, ``Path(saved)``, ``hybrid.load(saved)``).
    """
    if not isinstance(volume, Volume):
        raise TypeError(
            f"Expected a hybrid.Volume; received {type(volume).__name__}. "
            "Wrap arrays as hybrid.Volume(array, spacing=(dz, dy, dx))."
        )
    path = Path(path)
    fmt = format or format_of(path)
    if fmt not in FORMATS:
        raise ValueError(f"Expected format one of {FORMATS}; received {fmt!r}.")
    src = volume.provenance.source
    if src and Path(src).resolve() == path.resolve():
        raise ValueError(
            f"Expected an output path other than the input; received the volume's own source {path}. "
            "hybrid never overwrites its input: choose another output path."
        )
    if fmt == "dicom":
        from hybrid.io.dicom import write_series

        return write_series(volume, path, overwrite=overwrite, **options)
    if fmt == "nifti":
        from hybrid.io.nifti import write_nifti

        written = write_nifti(volume, path, overwrite=overwrite)
    elif fmt == "hdf5":
        from hybrid.io.hdf5 import write_hdf5

        written = write_hdf5(volume, path, overwrite=overwrite, **options)
    else:
        written = _write_numpy(volume, path, fmt=fmt, overwrite=overwrite)
    return Saved(path=Path(written), format=fmt, files=(Path(written),))


def _write_numpy(volume: Volume, path: Path, *, fmt: str, overwrite: bool) -> Path:
    with atomic_file(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:
            if fmt == "npy":
                np.save(fh, volume.array)
            else:
                np.savez_compressed(fh, volume=volume.array, spacing=np.asarray(volume.spacing))
    return path
