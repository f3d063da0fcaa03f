"""DICOM series in and out (pydicom; pylibjpeg decodes JPEG 2000).

Reading turns a folder of CT instances into a :class:`~hybrid.volume.Volume`
in HU: slices sorted by ImagePositionPatient along the slice normal,
RescaleSlope/Intercept applied, padding values mapped to air, z spacing
derived from the positions.  Writing produces a *derived* series next to the
source: new Series and SOP Instance UIDs, ImageType DERIVED\\SECONDARY, a
SourceImageSequence pointing at each source instance, Study and Frame of
Reference kept, values re-quantised through the source's rescale.

pydicom is imported here only, so that ``import hybrid`` stays light.
"""

from __future__ import annotations

import datetime
import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.io._atomic import atomic_dir
from hybrid.io.derivation import (
    DEFAULT_DERIVATION,
    series_description,
    software_versions,
)
from hybrid.io.frames import CT_SOP_CLASSES, decoded, frame_pixels, frames_of, is_ct, is_multi_frame
from hybrid.io.saved import Saved
from hybrid.io.transfer import WRITE_NAMES, decoder_advice
from hybrid.volume import Provenance, Volume

log = logging.getLogger(__name__)

AIR_HU = -1000.0
#: HU at or below this are padding / outside the field of view, never tissue.
PADDING_HU_BELOW = -1500.0
#: Relative deviation of a slice gap from the median gap that counts as uneven.
UNEVEN_GAP_TOLERANCE = 0.05

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = WRITE_NAMES["explicit"]
IMPLICIT_VR_LITTLE_ENDIAN = WRITE_NAMES["implicit"]
#: Transfer syntaxes offered when sending a derived series (C-STORE), in order of preference.
SEND_TRANSFER_SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)

# Attributes copied from each source slice into Provenance.slice_headers and
# from there into a derived series.  Patient identifiers are carried (a derived
# series must belong to the same patient) but never logged.
_HEADER_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "FrameOfReferenceUID", "SeriesNumber", "SeriesDescription", "InstanceNumber",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "SliceLocation", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription", "SeriesDate", "SeriesTime", "Modality", "Manufacturer",
    "ManufacturerModelName", "BodyPartExamined", "PatientPosition", "KVP",
    "ConvolutionKernel", "WindowCenter", "WindowWidth", "PositionReferenceIndicator",
)


def _plain(value: Any) -> Any:
    """A pydicom value as plain JSON-able Python."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import PersonName

    if isinstance(value, (MultiValue, list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return str(value)


def _header(ds) -> dict[str, Any]:
    return {k: _plain(ds.get(k)) for k in _HEADER_KEYWORDS if ds.get(k) is not None}


def _candidate_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def list_series(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The DICOM series under ``path`` (a folder or one file).

    Returns
    -------
    dict
        SeriesInstanceUID → {"description", "modality", "files": [Path, ...]}.
        Files that are not DICOM are skipped with a warning.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Expected a DICOM series folder or file; nothing exists at {path}. Check the path."
        )
    files = [path] if path.is_file() else _candidate_files(path)
    if not files:
        raise ValueError(
            f"Expected DICOM files in the folder {path}; received an empty folder. "
            "Point at the folder that holds the series' .dcm files."
        )
    series: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            skipped.append(f.name)
            continue
        uid = str(ds.get("SeriesInstanceUID", "")) or "<no SeriesInstanceUID>"
        entry = series.setdefault(
            uid,
            {
                "description": str(ds.get("SeriesDescription", "")),
                "modality": str(ds.get("Modality", "")),
                "sop_class": str(ds.get("SOPClassUID", "")),
                "files": [],
            },
        )
        entry["files"].append(f)
    if not series:
        raise ValueError(
            f"Expected DICOM files under {path}; none of the {len(files)} file(s) could be read as "
            f"DICOM (e.g. {', '.join(skipped[:3])}). Point at a folder of DICOM instances."
        )
    if skipped:
        warnings.warn(
            f"Skipped {len(skipped)} non-DICOM file(s) under {path}: {', '.join(skipped[:5])}"
            + (" …" if len(skipped) > 5 else ""),
            stacklevel=3,
        )
    return series


def read_series(path: str | os.PathLike, *, series_uid: str | None = None) -> Volume:
    """Read one CT series as a Volume in HU.

    Parameters
    ----------
    path : path-like
        A folder holding the series (searched recursively) or a single file.
    series_uid : str, optional
        Which series to read when the folder holds several.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ValueError
        Empty folder, no DICOM, several series and no ``series_uid``, a
        non-CT modality, missing or duplicate slice positions, uneven slice
        spacing, truncated or undecodable pixel data.
    """
    import pydicom

    path = Path(path)
    series = list_series(path)
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(
                f"{uid} ({e['modality']}, {e['description'] or 'no description'}, {len(e['files'])} files)"
                for uid, e in series.items()
            )
            raise ValueError(
                f"Expected one series under {path}; received {len(series)} series: {listing}. "
                "Choose one with series_uid=... (CLI: --series UID)."
            )
        series_uid = next(iter(series))
    elif series_uid not in series:
        raise ValueError(
            f"Expected series {series_uid} under {path}; received only {sorted(series)}."
        )
    entry = series[series_uid]
    files: list[Path] = entry["files"]
    if not is_ct(entry["modality"], entry["sop_class"]):
        found = f"modality '{entry['modality']}'" if entry["modality"] else "no Modality"
        raise ValueError(
            f"Expected a CT series (Modality CT, or a CT SOP class: "
            f"{', '.join(CT_SOP_CLASSES.values())}); received {found} and SOP class "
            f"{_sop_name(entry['sop_class'])} in {len(files)} file(s) under {path}. "
            "hybrid enhances CT only."
        )

    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(f))
        except Exception as exc:  # truncated headers
            raise ValueError(f"Expected a readable DICOM file; {f} failed to read: {exc}") from exc

    # Geometry: every frame (a classic slice, or one frame of an Enhanced CT), sorted along
    # the slice normal, checked before any pixel is decoded.
    missing = [f.name for f, ds in zip(files, datasets)
               if "ImagePositionPatient" not in ds and not is_multi_frame(ds)]
    if missing:
        raise ValueError(
            f"Expected ImagePositionPatient in every slice; missing in {len(missing)} file(s) "
            f"under {path} (e.g. {', '.join(missing[:3])}). The series cannot be stacked."
        )
    try:
        frames = [fr for f, ds in zip(files, datasets) for fr in frames_of(f.name, ds, _header(ds))]
    except ValueError as exc:
        raise ValueError(f"Expected a readable Enhanced CT under {path}: {exc}. "
                         "The series cannot be stacked.") from exc
    iop = frames[0].orientation
    normal = np.cross(iop[:3], iop[3:])
    pos = np.array([np.dot(fr.position, normal) for fr in frames])
    order = np.argsort(pos, kind="stable")
    frames = [frames[i] for i in order]
    pos = pos[order]
    gaps = np.diff(pos)
    if len(gaps) and np.any(np.abs(gaps) < 1e-3):
        dup = [frames[i].name for i in np.flatnonzero(np.abs(gaps) < 1e-3)]
        raise ValueError(
            f"Expected one slice per position; received duplicate slice positions under {path} "
            f"(e.g. {', '.join(dup[:3])} repeat a position). Remove the duplicates or choose "
            "one series by series_uid."
        )
    if len(gaps):
        dz = float(np.median(gaps))
        uneven = np.flatnonzero(np.abs(gaps - dz) > UNEVEN_GAP_TOLERANCE * dz)
        if len(uneven):
            desc = ", ".join(
                f"{gaps[i]:.3g} mm after {frames[i].name}" for i in uneven[:5]
            )
            raise ValueError(
                f"Expected evenly spaced slices (median gap {dz:.3g} mm); received uneven gaps: "
                f"{desc}. A slice may be missing; re-export the complete series."
            )
    else:
        h0 = frames[0].header
        dz = float(frames[0].dataset.get("SpacingBetweenSlices") or h0.get("SliceThickness") or 1.0)

    slices, cache = [], {}
    for fr in frames:
        try:
            pixels = decoded(fr, cache)
        except Exception as exc:
            ts = fr.dataset.file_meta.get("TransferSyntaxUID", "?")
            raise ValueError(
                f"Expected decodable pixel data; {fr.name} failed to decode "
                f"({type(exc).__name__}: {exc}). The file may be truncated, or its transfer "
                f"syntax needs a decoder: {decoder_advice(ts)}."
            ) from exc
        stored = frame_pixels(fr, pixels)
        hu = stored.astype(np.float32) * np.float32(fr.slope) + np.float32(fr.intercept)
        pad = hu <= PADDING_HU_BELOW
        if fr.padding is not None:
            pad |= stored == fr.padding
        hu[pad] = AIR_HU
        slices.append(hu)
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise ValueError(
            f"Expected slices of one size; received sizes {sorted(shapes)} under {path}."
        )
    h0 = frames[0].header
    spacing_yx = frames[0].pixel_spacing
    kernel = h0.get("ConvolutionKernel")
    if isinstance(kernel, list):
        kernel = "\\".join(str(k) for k in kernel)
    prov = Provenance(
        source=str(path),
        modality="CT",
        series_uid=None if series_uid.startswith("<") else series_uid,
        kernel=str(kernel) if kernel else None,
        description=str(h0.get("SeriesDescription", "")) or None,
        slice_headers=tuple(fr.header for fr in frames),
        transfer_syntax=str(frames[0].dataset.file_meta.get("TransferSyntaxUID", "")) or None,
    )
    return Volume(np.stack(slices), (abs(dz), spacing_yx[0], spacing_yx[1]), prov)


def _sop_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return f"'{name}' ({uid})" if name and name != uid else (f"'{uid}'" if uid else "none")


def _new_study_header(volume: Volume) -> list[dict[str, Any]]:
    """Slice headers for a volume that did not come from DICOM (phantom, NIfTI, …)."""
    from pydicom.uid import generate_uid

    study, frame = generate_uid(), generate_uid()
    dz, dy, dx = volume.spacing
    today = datetime.date.today().strftime("%Y%m%d")
    return [
        {
            "SOPClassUID": CT_IMAGE_STORAGE,
            "StudyInstanceUID": study,
            "FrameOfReferenceUID": frame,
            "ImagePositionPatient": [0.0, 0.0, float(i * dz)],
            "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            "PixelSpacing": [dy, dx],
            "SliceThickness": dz,
            "RescaleSlope": 1.0,
            "RescaleIntercept": -1024.0,
            "PatientName": "Anonymous",
            "PatientID": "hybrid-anon",
            "StudyDate": today,
            "Modality": "CT",
            "SeriesNumber": 1,
            "SeriesDescription": volume.provenance.description or "hybrid",
        }
        for i in range(volume.shape[0])
    ]


def write_series(
    volume: Volume,
    folder: str | os.PathLike,
    *,
    description: str | None = None,
    derivation: str = DEFAULT_DERIVATION,
    series_number: int | None = None,
    transfer_syntax: str | None = None,
    overwrite: bool = False,
) -> Saved:
    """Write ``volume`` as a derived CT series into a new folder.

    The folder is written atomically (temporary folder, then rename); an
    existing folder is refused unless ``overwrite=True``.  Returns what was
    written: the folder, its instance files and the new SeriesInstanceUID.

    ``transfer_syntax``: None or ``"source"`` (default) writes the source's syntax (its
    lossless sibling for a lossy one; Explicit VR Little Endian for a source that was not
    DICOM), else a name of :data:`hybrid.io.transfer.WRITE_NAMES` (``explicit``,
    ``implicit``, ``big-endian``, ``deflated``, ``rle``, ``jpeg-lossless``, ``jpeg-ls``,
    ``jpeg-2000``) or its UID.  Every one is lossless: the stored values read back exactly.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid
    from pydicom.valuerep import DSfloat

    from hybrid.io.transfer import syntax_for_writing, write_instance

    folder = Path(folder)
    syntax = syntax_for_writing(transfer_syntax, volume.provenance.transfer_syntax)
    from_dicom = bool(volume.provenance.slice_headers)
    headers = list(volume.provenance.slice_headers) if from_dicom else _new_study_header(volume)
    series_uid = generate_uid()
    first = headers[0]
    src_desc = first.get("SeriesDescription") or volume.provenance.description or "CT"
    desc = series_description(src_desc, description)
    names: list[str] = []
    if series_number is None:
        series_number = int(first.get("SeriesNumber", 0) or 0) + 1000
    now = datetime.datetime.now()

    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for i, (hdr, hu) in enumerate(zip(headers, volume.array)):
            ds = Dataset()
            for k, v in hdr.items():
                if k in ("SOPInstanceUID", "SeriesInstanceUID", "WindowCenter", "WindowWidth",
                         "ReferencedFrameNumber"):
                    continue
                setattr(ds, k, v)
            sop_uid = generate_uid()
            ds.SOPClassUID = CT_IMAGE_STORAGE
            ds.SOPInstanceUID = sop_uid
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = series_number
            ds.SeriesDescription = desc
            ds.SeriesDate = now.strftime("%Y%m%d")
            ds.SeriesTime = now.strftime("%H%M%S")
            ds.InstanceNumber = i + 1
            ds.Modality = "CT"
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.DerivationDescription = derivation[:1024]
            ds.SoftwareVersions = software_versions()
            ds.BurnedInAnnotation = "NO"
            ds.setdefault("StudyInstanceUID", generate_uid())
            ds.setdefault("FrameOfReferenceUID", generate_uid())
            for k in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                      "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
                ds.setdefault(k, "")
            ds.setdefault("PositionReferenceIndicator", "")
            for k in ("Manufacturer", "AcquisitionNumber", "Laterality"):  # type 2 / 2C: present, may be empty
                ds.setdefault(k, "")
            for k in ("SliceThickness", "SpacingBetweenSlices", "PixelSpacing",
                      "ImagePositionPatient", "ImageOrientationPatient", "SliceLocation"):
                if k in ds:  # DS values hold at most 16 characters
                    v = ds[k].value
                    ds[k].value = ([DSfloat(x, auto_format=True) for x in v]
                                   if isinstance(v, (list, tuple, MultiValue)) else DSfloat(v, auto_format=True))
            ds.setdefault("KVP", "")
            ds.setdefault("PatientPosition", "HFS")
            if from_dicom and "SOPInstanceUID" in hdr:
                ref = Dataset()
                ref.ReferencedSOPClassUID = hdr.get("SOPClassUID", CT_IMAGE_STORAGE)
                ref.ReferencedSOPInstanceUID = hdr["SOPInstanceUID"]
                if "ReferencedFrameNumber" in hdr:  # a frame of an Enhanced CT source
                    ref.ReferencedFrameNumber = int(hdr["ReferencedFrameNumber"])
                ds.SourceImageSequence = Sequence([ref])
            # Re-quantise through the source's rescale, into signed 16 bit.
            slope = float(hdr.get("RescaleSlope", 1.0)) or 1.0
            intercept = float(hdr.get("RescaleIntercept", -1024.0))
            stored = np.rint((hu.astype(np.float64) - intercept) / slope)
            stored = np.clip(stored, -32768, 32767).astype(np.int16)
            ds.RescaleSlope = slope
            ds.RescaleIntercept = intercept
            ds.RescaleType = "HU"
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = hu.shape
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.WindowCenter = -600
            ds.WindowWidth = 1500
            ds.SpecificCharacterSet = "ISO_IR 100"

            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = sop_uid
            ds.file_meta = meta
            names.append(f"{i + 1:05d}.dcm")
            write_instance(tmp / names[-1], ds, stored, syntax)
    log.info("wrote derived series %s (%d slices, transfer syntax %s) to %s", series_uid,
             len(headers), syntax, folder)
    return Saved(path=folder, format="dicom", series_uid=str(series_uid),
                 files=tuple(folder / n for n in names))


def saved_series(folder: str | os.PathLike) -> Saved:
    """What :func:`write_series` wrote into ``folder`` earlier (its ``.dcm`` files, their series).

    Raises
    ------
    ValueError
        The folder holds no ``.dcm`` file.
    """
    import pydicom

    folder = Path(folder)
    files = tuple(sorted(folder.glob("*.dcm")))
    if not files:
        raise ValueError(
            f"Expected a derived series (.dcm files) in {folder}; received none. "
            "Write it again with hybrid.save(volume, folder).")
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    return Saved(path=folder, format="dicom", series_uid=uid, files=files)


def transfer_syntax_of(file: str | os.PathLike) -> str:
    """The TransferSyntaxUID of one DICOM file (its meta header only)."""
    import pydicom

    return str(pydicom.dcmread(file, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def read_datasets(files: Iterable[str | os.PathLike]) -> Iterator[Any]:
    """The pydicom Datasets of ``files``, read one at a time (e.g. to send them by C-STORE)."""
    import pydicom

    for f in files:
        yield pydicom.dcmread(f)


def series_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Counts per series for messages and ``hybrid info`` (no patient data)."""
    out: dict[str, Any] = defaultdict(dict)
    for uid, e in list_series(path).items():
        out[uid] = {"modality": e["modality"], "description": e["description"], "files": len(e["files"])}
    return dict(out)
