"""The frames of a CT series: one per classic single-frame instance, or one per frame of an
Enhanced CT multi-frame instance (its per-frame and shared functional groups).

Whatever the storage, a series becomes a list of :class:`Frame` (position, orientation,
rescale, pixel spacing, the stored values and the header a derived slice copies), so that
:func:`hybrid.io.dicom.read_series` sorts, checks and converts them in one way.

pydicom is imported by the caller (:mod:`hybrid.io.dicom`); nothing here imports it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["Frame", "CT_SOP_CLASSES", "is_ct", "is_multi_frame", "frames_of", "decoded",
           "frame_pixels"]

#: SOP classes that hold CT images: classic, Enhanced and Legacy Converted Enhanced CT.
CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
MULTI_FRAME_CT = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")


def is_ct(modality: str, sop_class: str) -> bool:
    """A CT series: Modality CT, or no Modality (anonymisers strip it) and a CT SOP class."""
    return modality == "CT" or (not modality and sop_class in CT_SOP_CLASSES)


@dataclasses.dataclass
class Frame:
    """One 2-D image of a series, wherever it is stored."""

    name: str  # for messages: the file name, and the frame number for a multi-frame file
    position: np.ndarray  # ImagePositionPatient (mm)
    orientation: np.ndarray  # ImageOrientationPatient (6)
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    padding: int | None
    header: dict[str, Any]  # what a derived slice copies (see hybrid.io.dicom._header)
    dataset: Any  # the instance it is in: its pixels are decoded after the geometry checks
    index: int | None  # its frame in a multi-frame instance (0-based); None: single frame


def _item(seq_owner: Any, keyword: str) -> Any:
    seq = seq_owner.get(keyword) if seq_owner is not None else None
    return seq[0] if seq else None


def _group_value(per_frame: Any, shared: Any, sequence: str, keyword: str) -> Any:
    """``keyword`` of functional group ``sequence``: the frame's own first, then the shared."""
    for owner in (per_frame, shared):
        item = _item(owner, sequence)
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def is_multi_frame(ds: Any) -> bool:
    """An Enhanced (or Legacy Converted Enhanced) CT instance: frames in functional groups.
    A classic CT instance with several frames is not one (the reader refuses it)."""
    return str(ds.get("SOPClassUID", "")) in MULTI_FRAME_CT


def frames_of(name: str, ds: Any, header: dict[str, Any]) -> list[Frame]:
    """The frames of one instance ``ds`` (pixels not decoded yet).

    ``header`` is the instance's copied header; a multi-frame instance's frames get the
    position, orientation, spacing and rescale of their functional groups, and
    ``ReferencedFrameNumber`` (1-based) for the derived slice's SourceImageSequence.
    """
    padding = int(ds.PixelPaddingValue) if "PixelPaddingValue" in ds else None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not is_multi_frame(ds):
        return [Frame(name, np.array(ds.ImagePositionPatient, float),
                      np.array(ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float),
                      tuple(float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])),
                      float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0)),
                      padding, header, ds, None)]
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per = ds.get("PerFrameFunctionalGroupsSequence") or [None] * n_frames
    if len(per) != n_frames:
        raise ValueError(f"Expected {n_frames} per-frame functional groups in {name} "
                         f"(NumberOfFrames); received {len(per)}.")
    kernel = _group_value(None, shared, "CTReconstructionSequence", "ConvolutionKernel")
    frames = []
    for i, group in enumerate(per):
        pos = _group_value(group, shared, "PlanePositionSequence", "ImagePositionPatient")
        if pos is None:
            raise ValueError(f"missing ImagePositionPatient in {name} frame {i + 1}")
        iop = _group_value(group, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _group_value(group, shared, "PixelMeasuresSequence", "PixelSpacing")
        thick = _group_value(group, shared, "PixelMeasuresSequence", "SliceThickness")
        slope = _group_value(group, shared, "PixelValueTransformationSequence", "RescaleSlope")
        icpt = _group_value(group, shared, "PixelValueTransformationSequence", "RescaleIntercept")
        h = dict(header, ImagePositionPatient=[float(v) for v in pos],
                 ReferencedFrameNumber=i + 1)
        if iop is not None:
            h["ImageOrientationPatient"] = [float(v) for v in iop]
        if spacing is not None:
            h["PixelSpacing"] = [float(v) for v in spacing]
        if thick is not None:
            h["SliceThickness"] = float(thick)
        if kernel is not None and "ConvolutionKernel" not in h:
            h["ConvolutionKernel"] = str(kernel)
        h["RescaleSlope"] = float(slope if slope is not None else 1.0)
        h["RescaleIntercept"] = float(icpt if icpt is not None else 0.0)
        frames.append(Frame(f"{name} frame {i + 1}", np.array(pos, float),
                            np.array(iop if iop is not None else [1, 0, 0, 0, 1, 0], float),
                            tuple(float(v) for v in (spacing or [1.0, 1.0])),
                            h["RescaleSlope"], h["RescaleIntercept"], padding, h, ds, i))
    return frames


def decoded(frame: Frame, cache: dict[int, np.ndarray]) -> np.ndarray:
    """The ``pixel_array`` of the frame's instance, decoded once per instance (a
    multi-frame instance once for all its frames)."""
    key = id(frame.dataset)
    if key not in cache:
        cache[key] = frame.dataset.pixel_array
    return cache[key]


def frame_pixels(frame: Frame, pixels: np.ndarray) -> np.ndarray:
    """The frame's stored values (2-D) out of its instance's decoded ``pixels``."""
    if frame.index is None:
        if pixels.ndim != 2:
            raise ValueError(f"Expected single-frame CT slices; {frame.name} holds an array of "
                             f"shape {pixels.shape}.")
        return pixels
    n = int(frame.dataset.get("NumberOfFrames", 1) or 1)
    return pixels.reshape((n,) + pixels.shape[-2:])[frame.index]
