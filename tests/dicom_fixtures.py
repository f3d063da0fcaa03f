"""DICOM fixtures made from a real series, not downloaded (issue 19).

* :func:`reencode`: the series' own files re-encoded into another transfer syntax, by the
  product's own writer of one instance (:func:`hybrid.io.transfer.write_instance`);
* :func:`enhanced_ct`: the series as one Enhanced CT multi-frame file (per-frame plane
  positions and rescale, shared pixel measures, orientation and kernel);
* :func:`without_modality`: the series with Modality removed (as anonymisers leave it).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

#: The JPEG-LS near-lossless bound used here: stored values within NEAR of the source.
NEAR = 3
#: JPEG 2000 "lossy" written at this compression ratio (its error is measured, not bounded).
J2K_RATIO = 10

REENCODINGS = {
    "1.2.840.10008.1.2": "implicit",
    "1.2.840.10008.1.2.1": "explicit",
    "1.2.840.10008.1.2.2": "big-endian",
    "1.2.840.10008.1.2.1.99": "deflated",
    "1.2.840.10008.1.2.5": "rle",
    "1.2.840.10008.1.2.4.57": "jpeg-lossless-p14",
    "1.2.840.10008.1.2.4.70": "jpeg-lossless-sv1",
    "1.2.840.10008.1.2.4.80": "jpeg-ls",
    "1.2.840.10008.1.2.4.81": "jpeg-ls-near",
    "1.2.840.10008.1.2.4.90": "jpeg-2000-lossless",
    "1.2.840.10008.1.2.4.91": "jpeg-2000",
}


def source_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".dcm")


def reencode(folder: Path, out: Path, uid: str) -> Path:
    """Every file of ``folder`` in transfer syntax ``uid`` (same UIDs and headers) in ``out``."""
    import pydicom

    from hybrid.io.transfer import write_instance

    out.mkdir(parents=True, exist_ok=True)
    options = {"1.2.840.10008.1.2.4.81": {"jls_error": NEAR},
               "1.2.840.10008.1.2.4.91": {"j2k_cr": [J2K_RATIO]}}.get(str(uid), {})
    for f in source_files(folder):
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        write_instance(out / f.name, ds, arr, uid, **options)
    return out


def without_modality(folder: Path, out: Path, *, sop_class: str | None = None) -> Path:
    """The series with Modality deleted (and, given, another SOP class: a non-CT one)."""
    import pydicom

    out.mkdir(parents=True, exist_ok=True)
    for f in source_files(folder):
        ds = pydicom.dcmread(f)
        del ds.Modality
        if sop_class:
            ds.SOPClassUID = sop_class
            ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.save_as(out / f.name, enforce_file_format=True)
    return out


def enhanced_ct(folder: Path, out: Path, *, per_frame_rescale: bool = True) -> Path:
    """The classic series as one Enhanced CT Image Storage file ``out/enhanced.dcm``.

    Frames in the files' order reversed (the reader must sort by position); plane
    positions per frame; pixel measures, orientation and the kernel shared; the rescale
    per frame (each frame's own intercept, shifted by 1 on odd frames with its stored
    values shifted back, so a reader that took the shared one would be off by 1 HU).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    dss = [pydicom.dcmread(f) for f in source_files(folder)][::-1]
    first = dss[0]
    ds = Dataset()
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
               "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
               "FrameOfReferenceUID", "Manufacturer", "SeriesDescription", "SeriesNumber",
               "PositionReferenceIndicator"):
        if kw in first:
            setattr(ds, kw, copy.deepcopy(first[kw].value))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(dss)
    ds.Rows, ds.Columns = first.Rows, first.Columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1

    def item(**kw):
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    shared = item(
        PixelMeasuresSequence=Sequence([item(PixelSpacing=list(first.PixelSpacing),
                                             SliceThickness=first.get("SliceThickness", 1.0))]),
        PlaneOrientationSequence=Sequence([item(
            ImageOrientationPatient=list(first.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])))]),
        CTReconstructionSequence=Sequence([item(
            ConvolutionKernel=str(first.get("ConvolutionKernel", "STANDARD")))]),
    )
    per, frames = [], []
    for i, s in enumerate(dss):
        stored = s.pixel_array.astype(np.int32)
        icpt = float(s.get("RescaleIntercept", 0.0))
        if per_frame_rescale and i % 2:
            icpt, stored = icpt + 1.0, stored - 1
        frames.append(stored.astype(np.int16))
        per.append(item(
            PlanePositionSequence=Sequence([item(ImagePositionPatient=list(s.ImagePositionPatient))]),
            PixelValueTransformationSequence=Sequence([item(
                RescaleIntercept=icpt, RescaleSlope=float(s.get("RescaleSlope", 1.0)),
                RescaleType="HU")]),
            FrameContentSequence=Sequence([item(InStackPositionNumber=len(dss) - i)]),
        ))
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = np.stack(frames).astype("<i2").tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(out / "enhanced.dcm", ds, enforce_file_format=True)
    return out
