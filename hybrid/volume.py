"""The one array contract of the project: a CT volume in Hounsfield units.

A :class:`Volume` is a float32 array with axes ``(z, y, x)``, the voxel
spacing ``(z, y, x)`` in millimetres and the provenance needed to trace it
back to its source (and to write a derived DICOM series next to it).

Only :mod:`hybrid.io` converts stored values to HU and back; everything else
works on Volumes or on plain float32 arrays in HU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Volume", "Provenance", "as_hu_array", "as_bool_mask", "as_stack", "as_mask",
           "check_pairs", "grown_bbox"]


@dataclass(frozen=True)
class Provenance:
    """Where a volume came from.

    Parameters
    ----------
    source : str or None
        Path of the file or folder it was read from.
    modality : str
        DICOM modality ("CT" for everything this product accepts).
    series_uid : str or None
        SeriesInstanceUID of the source series, if any.
    kernel : str or None
        Reconstruction kernel (DICOM ConvolutionKernel), if known.
    description : str or None
        SeriesDescription of the source, if any.
    slice_headers : tuple of dict
        One dict per slice (in the volume's z order) holding the DICOM
        attributes needed to write a derived series: SOP and study UIDs,
        positions, orientation, rescale, bits.  Empty for non-DICOM sources.
    derived_from : tuple of str
        Processing steps applied since the source (e.g. ``"hybrid.enhance 0.1.0"``).
    transfer_syntax : str or None
        TransferSyntaxUID of the source's DICOM files (a derived series is written in it,
        or in its lossless sibling, unless told otherwise: :mod:`hybrid.io.transfer`).
    """

    source: str | None = None
    modality: str = "CT"
    series_uid: str | None = None
    kernel: str | None = None
    description: str | None = None
    slice_headers: tuple[dict[str, Any], ...] = ()
    derived_from: tuple[str, ...] = ()
    transfer_syntax: str | None = None


def as_hu_array(array: Any, *, name: str = "array") -> np.ndarray:
    """Return ``array`` as a finite float32 array, or raise a clear error."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"Expected a numeric {name} in HU; received dtype {arr.dtype}. "
            "Convert the data to numbers (e.g. np.asarray(x, dtype=np.float32))."
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(
            f"Expected finite HU values in {name}; received {bad} NaN/inf value(s) "
            f"out of {arr.size}. Replace them (e.g. np.nan_to_num(x, nan=-1000.0)) before use."
        )
    return arr


def as_bool_mask(mask: Any, *, name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a bool array (0/1 numbers accepted), or raise a clear error."""
    m = np.asarray(mask)
    if m.dtype != bool:
        if m.dtype.kind in "biuf" and np.isin(m, (0, 1)).all():
            m = m.astype(bool)
        else:
            raise ValueError(
                f"Expected `{name}` as a boolean array; received dtype {m.dtype}"
                + (" with values other than 0 and 1" if m.dtype.kind in "biuf" else "")
                + ". Pass e.g. `labels > 0` or `mask.astype(bool)`."
            )
    return m


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume in HU with axes (z, y, x) and spacing (z, y, x) in mm.

    Parameters
    ----------
    array : ndarray of shape (Z, Y, X)
        Values in Hounsfield units; stored as float32.
    spacing : tuple of 3 float
        Voxel spacing (z, y, x) in millimetres, all strictly positive.
    provenance : Provenance
        Source, modality, series UID, kernel and per-slice headers.

    Examples
    --------
    >>> import numpy as np
    >>> v = Volume(np.full((2, 4, 4), -1000.0), spacing=(2.5, 0.7, 0.7))
    >>> v.shape, v.array.dtype
    ((2, 4, 4), dtype('float32'))
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        arr = as_hu_array(self.array, name="Volume.array")
        if arr.ndim != 3:
            raise ValueError(
                f"Expected a 3-D array with axes (z, y, x); received shape {arr.shape} "
                f"(rank {arr.ndim}). For one slice use array[np.newaxis]."
            )
        if min(arr.shape) < 1:
            raise ValueError(f"Expected a non-empty volume; received shape {arr.shape}.")
        try:
            spacing = tuple(float(s) for s in self.spacing)
        except TypeError as exc:
            raise ValueError(
                f"Expected spacing as 3 numbers (z, y, x) in mm; received {self.spacing!r}."
            ) from exc
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(
                f"Expected 3 strictly positive spacings (z, y, x) in mm; received {self.spacing!r}."
            )
        if not isinstance(self.provenance, Provenance):
            raise ValueError(
                f"Expected provenance to be a hybrid.Provenance; received {type(self.provenance).__name__}."
            )
        headers = self.provenance.slice_headers
        if headers and len(headers) != arr.shape[0]:
            raise ValueError(
                f"Expected one slice header per slice; received {len(headers)} headers "
                f"for {arr.shape[0]} slices."
            )
        object.__setattr__(self, "array", np.ascontiguousarray(arr))
        object.__setattr__(self, "spacing", spacing)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.array.shape  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.array.shape[0]

    @property
    def slice_thickness_mm(self) -> float:
        """The slice thickness in mm: the median DICOM SliceThickness of its slices where
        every slice header records a positive one (an overlapping reconstruction's slices
        are thicker than their spacing), else the z spacing."""
        vals = []
        for h in self.provenance.slice_headers:
            try:
                vals.append(float(h.get("SliceThickness")))
            except (TypeError, ValueError):
                return self.spacing[0]
        ok = bool(vals) and all(np.isfinite(v) and v > 0 for v in vals)
        return float(np.median(vals)) if ok else self.spacing[0]

    def __repr__(self) -> str:
        src = self.provenance.source or "<array>"
        return (
            f"Volume(shape={self.shape}, spacing={tuple(round(s, 4) for s in self.spacing)}, "
            f"modality={self.provenance.modality!r}, source={src!r})"
        )

    def with_array(self, array: np.ndarray, step: str | None = None) -> Volume:
        """A new Volume with the same spacing and provenance and another array.

        ``step`` (e.g. ``"hybrid.enhance 0.1.0"``) is appended to
        ``provenance.derived_from``.  The shape must not change.
        """
        array = np.asarray(array)
        if array.shape != self.shape:
            raise ValueError(
                f"Expected an array of the volume's shape {self.shape}; received {array.shape}."
            )
        prov = self.provenance
        if step:
            prov = dataclasses.replace(prov, derived_from=prov.derived_from + (step,))
        return Volume(array, self.spacing, prov)

    def slab(self, start: int, stop: int) -> Volume:
        """Slices ``start:stop`` as a Volume (headers cut accordingly)."""
        prov = self.provenance
        if prov.slice_headers:
            prov = dataclasses.replace(prov, slice_headers=prov.slice_headers[start:stop])
        return Volume(self.array[start:stop], self.spacing, prov)


def grown_bbox(mask: np.ndarray, reach: int) -> tuple[slice, slice] | None:
    """In-plane bounding box of a mask's True pixels (over all leading axes), grown by
    ``reach`` pixels on every side and clipped to the image; None for an empty mask.

    For filters and morphology that cannot reach farther than ``reach`` from the
    mask: computing them on this crop gives the whole image's result there."""
    plane = np.asarray(mask).reshape((-1,) + np.shape(mask)[-2:]).any(axis=0)
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    if rows.size == 0:
        return None
    h, w = plane.shape
    return (slice(max(rows[0] - reach, 0), min(rows[-1] + reach + 1, h)),
            slice(max(cols[0] - reach, 0), min(cols[-1] + reach + 1, w)))


# ---------------------------------------------------------------- the shared input checks
# One rule for every module that takes images, masks or training pairs.

def as_stack(data: Any, *, name: str = "volume") -> tuple[np.ndarray, bool]:
    """``data`` as a (z, y, x) float32 HU array (a view where possible) and whether it was 2-D.

    A :class:`Volume` gives its array; an array-like of rank 2 (one slice) or 3 is
    checked with :func:`as_hu_array`.  A path or None is refused with the fix.
    """
    if isinstance(data, Volume):
        return data.array, False
    if data is None or isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        raise TypeError(
            f"Expected {name} as a hybrid.Volume or a NumPy array (z, y, x) in HU; received "
            f"{type(data).__name__}. Read files first: hybrid.load(path)."
        )
    arr = as_hu_array(data, name=name)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
        was_2d = True
    elif arr.ndim == 3:
        was_2d = False
    else:
        raise ValueError(
            f"Expected {name} as a 2-D slice (y, x) or a 3-D volume (z, y, x) in HU; received "
            f"shape {arr.shape} (rank {arr.ndim}). Pass one series at a time, e.g. array[0] "
            "for the first of a batch of volumes."
        )
    if min(arr.shape) < 1:
        raise ValueError(f"Expected a non-empty {name}; received shape {arr.shape}.")
    return arr, was_2d


def as_mask(mask: Any, shape: tuple[int, ...], *, name: str = "mask",
            fill: bool | None = None) -> np.ndarray | None:
    """``mask`` as a bool array of ``shape``, or ``fill`` where it is None.

    A :class:`Volume` gives its array; 0/1 numbers are accepted
    (:func:`as_bool_mask`); a 2-D mask for a one-slice 3-D ``shape`` is lifted.
    ``fill``: None returns None for a missing mask, True/False a constant mask.
    """
    shape = tuple(int(s) for s in shape)
    if mask is None:
        return None if fill is None else np.full(shape, bool(fill))
    m = as_bool_mask(mask.array if isinstance(mask, Volume) else mask, name=name)
    if m.ndim == 2 and len(shape) == 3 and shape[0] == 1:
        m = m[np.newaxis]
    if m.shape != shape:
        raise ValueError(
            f"Expected `{name}` of the image's shape {shape}; received {m.shape}. "
            "Pass a mask of the same slices as the image."
        )
    return m


def check_pairs(pairs: Any, *, name: str = "pairs",
                keep_rank: bool = False) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Training pairs as a list of ``(uld, nd, body_mask)`` (z, y, x) arrays.

    ``keep_rank``: a 2-D pair stays 2-D (y, x) instead of one-slice (1, y, x).

    ``pairs`` is a list of tuples ``(uld, nd, body_mask)``: Volumes or HU arrays
    of one 2-D or 3-D shape; ``body_mask`` None means the whole image.  One bare
    tuple is refused (ambiguous with a list of three images): wrap it in a list.
    """
    if isinstance(pairs, tuple) and len(pairs) == 3 and not isinstance(pairs[0], (tuple, list)):
        raise ValueError(
            f"Expected `{name}` as a list of (uld, nd, body_mask) tuples; received one tuple. "
            "Wrap it in a list: [(uld, nd, body_mask)]."
        )
    try:
        items = list(pairs)
    except TypeError as exc:
        raise ValueError(
            f"Expected `{name}` as a list of (uld, nd, body_mask) tuples; received "
            f"{type(pairs).__name__}."
        ) from exc
    if not items:
        raise ValueError(f"Expected at least one (uld, nd, body_mask) tuple in `{name}`; received none.")
    out = []
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 3):
            size = f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""
            raise ValueError(
                f"Expected {name}[{i}] as a tuple (uld, nd, body_mask); received "
                f"{type(item).__name__}{size}. Use None as body_mask for whole images."
            )
        uld, flat_u = as_stack(item[0], name=f"the uld of {name}[{i}]")
        nd, flat_n = as_stack(item[1], name=f"the nd of {name}[{i}]")
        if uld.shape != nd.shape:
            raise ValueError(
                f"Expected the uld and nd of {name}[{i}] with one shape; received {uld.shape} "
                f"and {nd.shape}."
            )
        body = as_mask(item[2], uld.shape, name=f"the body_mask of {name}[{i}]", fill=True)
        if keep_rank and flat_u and flat_n:
            uld, nd, body = uld[0], nd[0], body[0]
        out.append((uld, nd, body))
    return out
