"""Transfer syntaxes: which ones a series is read in, with which decoder, and how a derived
series is written.

One place for these facts: the syntaxes the reader decodes, the plugin that decodes each
(and its licence: the product is MIT, so only permissive plugins are depended on), the
names ``--transfer-syntax`` takes, and the encoders behind them.

========================================  ==========  =========================================
syntax                                    lossless    decoded by (licence)
========================================  ==========  =========================================
Implicit / Explicit VR Little Endian      yes         pydicom (MIT)
Explicit VR Big Endian (retired)          yes         pydicom (MIT)
Deflated Explicit VR Little Endian        yes         pydicom (MIT, zlib)
RLE Lossless                              yes         pydicom (MIT); pylibjpeg-rle (MIT)
JPEG Lossless, process 14 (any predictor) yes         python-gdcm (GDCM: BSD)
JPEG Lossless, process 14, SV1            yes         python-gdcm (GDCM: BSD)
JPEG-LS Lossless                          yes         pyjpegls (MIT; CharLS: BSD)
JPEG-LS Near-Lossless                     no (bound)  pyjpegls (MIT; CharLS: BSD)
JPEG 2000 (Lossless Only)                 yes         pylibjpeg-openjpeg (MIT; OpenJPEG: BSD)
JPEG 2000                                 maybe       pylibjpeg-openjpeg (MIT; OpenJPEG: BSD)
========================================  ==========  =========================================

pylibjpeg-libjpeg (GPL-3) would also decode JPEG Lossless; it is not used.  pydicom is
imported here only inside functions, so that ``import hybrid`` stays light.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Syntax", "SYNTAXES", "WRITE_NAMES", "TRANSFER_CHOICES", "decoder_advice",
           "syntax_for_writing", "write_instance", "transcode_file", "as_explicit_little"]


@dataclasses.dataclass(frozen=True)
class Syntax:
    """One transfer syntax: its UID, a name, whether it is lossless, who decodes it."""

    uid: str
    name: str
    lossless: bool
    decoder: str  # the pip package that decodes it ("" = pydicom itself)
    licence: str


SYNTAXES: dict[str, Syntax] = {s.uid: s for s in (
    Syntax("1.2.840.10008.1.2", "Implicit VR Little Endian", True, "", "MIT"),
    Syntax("1.2.840.10008.1.2.1", "Explicit VR Little Endian", True, "", "MIT"),
    Syntax("1.2.840.10008.1.2.2", "Explicit VR Big Endian", True, "", "MIT"),
    Syntax("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian", True, "", "MIT"),
    Syntax("1.2.840.10008.1.2.5", "RLE Lossless", True, "", "MIT"),
    Syntax("1.2.840.10008.1.2.4.57", "JPEG Lossless (process 14)", True, "python-gdcm", "BSD (GDCM)"),
    Syntax("1.2.840.10008.1.2.4.70", "JPEG Lossless (process 14, SV1)", True, "python-gdcm",
           "BSD (GDCM)"),
    Syntax("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless", True, "pyjpegls", "MIT (CharLS: BSD)"),
    Syntax("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless", False, "pyjpegls",
           "MIT (CharLS: BSD)"),
    Syntax("1.2.840.10008.1.2.4.90", "JPEG 2000 (Lossless Only)", True, "pylibjpeg-openjpeg",
           "MIT (OpenJPEG: BSD)"),
    Syntax("1.2.840.10008.1.2.4.91", "JPEG 2000", False, "pylibjpeg-openjpeg",
           "MIT (OpenJPEG: BSD)"),
)}

#: ``--transfer-syntax`` names: every lossless syntax a derived series can be written in.
WRITE_NAMES: dict[str, str] = {
    "explicit": "1.2.840.10008.1.2.1",
    "implicit": "1.2.840.10008.1.2",
    "big-endian": "1.2.840.10008.1.2.2",
    "deflated": "1.2.840.10008.1.2.1.99",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "jpeg-2000": "1.2.840.10008.1.2.4.90",
}

#: What ``--transfer-syntax`` takes: "source" (the input's) or a :data:`WRITE_NAMES` name.
TRANSFER_CHOICES = ("source", *WRITE_NAMES)

#: A lossy source syntax is written in its lossless sibling: a derived series is not
#: compressed with loss a second time.
_LOSSLESS_SIBLING = {"1.2.840.10008.1.2.4.81": "1.2.840.10008.1.2.4.80",
                     "1.2.840.10008.1.2.4.91": "1.2.840.10008.1.2.4.90",
                     "1.2.840.10008.1.2.4.57": "1.2.840.10008.1.2.4.70"}

#: Any other syntax a source may come in (JPEG baseline, HTJ2K, ...): write Explicit VR LE.
DEFAULT_WRITE = WRITE_NAMES["explicit"]


def decoder_advice(uid: str) -> str:
    """What to install to decode ``uid`` (for error messages)."""
    s = SYNTAXES.get(str(uid))
    if s is None:
        return (f"transfer syntax {uid} is not one hybrid reads; convert the series to an "
                "uncompressed or lossless syntax (e.g. `gdcmconv --raw`, or dcmtk's `dcmdjpeg`)")
    if not s.decoder:
        return f"{s.name} is decoded by pydicom itself; the file is likely damaged"
    return f"{s.name} ({uid}) is decoded by `pip install {s.decoder}` (licence {s.licence})"


def syntax_for_writing(choice: str | None, source_uid: str | None) -> str:
    """The UID to write a derived series in: ``choice`` (a :data:`WRITE_NAMES` name, a UID
    among them, or None / "source": the source's syntax, its lossless sibling when it is
    lossy, Explicit VR Little Endian when it is none of ours or there is no source)."""
    if choice in (None, "source"):
        uid = _LOSSLESS_SIBLING.get(str(source_uid), str(source_uid))
        return uid if uid in WRITE_NAMES.values() else DEFAULT_WRITE
    if choice in WRITE_NAMES:
        return WRITE_NAMES[choice]
    if choice in WRITE_NAMES.values():
        return str(choice)
    raise ValueError(
        f"Invalid value for `transfer_syntax`. Expected 'source' or one of "
        f"{', '.join(WRITE_NAMES)} (or their UIDs); received {choice!r}.")


_JPEG_LOSSLESS = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


def write_instance(path: Path, ds: Any, stored: np.ndarray, uid: str, **encoder_options) -> None:
    """Write ``ds`` with the pixel values ``stored`` (one slice) to ``path`` in transfer
    syntax ``uid``: any of :data:`SYNTAXES`.

    Uncompressed syntaxes are written by pydicom, big endian byte-swapped by hand (pydicom's
    writer will not convert). RLE, JPEG-LS and JPEG 2000 use pydicom's encoders, and
    ``encoder_options`` go to them (e.g. ``jls_error`` for near-lossless JPEG-LS).
    JPEG Lossless is written uncompressed, then re-encoded in place by GDCM (pydicom has
    no encoder for it).
    """
    import pydicom
    from pydicom.uid import UID

    uid = UID(uid)
    little = stored.astype(stored.dtype.newbyteorder("<"))
    if uid == _BIG_ENDIAN:
        from pydicom.filebase import DicomFileLike
        from pydicom.filewriter import write_dataset, write_file_meta_info

        ds.PixelData = stored.astype(stored.dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = uid
        with open(path, "wb") as fh:
            fp = DicomFileLike(fh)
            fp.write(b"\0" * 128 + b"DICM")
            write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
            fp.is_little_endian, fp.is_implicit_VR = False, False
            write_dataset(fp, ds)
        return
    ds.PixelData = little.tobytes()
    if uid in _JPEG_LOSSLESS:
        ds.file_meta.TransferSyntaxUID = UID(WRITE_NAMES["explicit"])
    elif uid.is_compressed:
        ds.compress(uid, stored, generate_instance_uid=False, **encoder_options)
    else:
        ds.file_meta.TransferSyntaxUID = uid
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    if uid in _JPEG_LOSSLESS:
        transcode_file(path, uid)


def transcode_file(path: Path, uid: str) -> None:
    """Re-encode the DICOM file at ``path`` in place as JPEG Lossless (GDCM)."""
    try:
        import gdcm
    except ImportError as exc:  # a dependency of the package: a broken install
        raise RuntimeError("Writing JPEG Lossless needs python-gdcm (pip install python-gdcm).") from exc
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"GDCM could not read {path.name} to re-encode it as JPEG Lossless.")
    change = gdcm.ImageChangeTransferSyntax()
    ts = (gdcm.TransferSyntax.JPEGLosslessProcess14_1 if uid == "1.2.840.10008.1.2.4.70"
          else gdcm.TransferSyntax.JPEGLosslessProcess14)
    change.SetTransferSyntax(gdcm.TransferSyntax(ts))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM could not encode {path.name} as JPEG Lossless.")
    tmp = path.with_name(path.name + ".jpeg-lossless")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(tmp))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM could not write {path.name} as JPEG Lossless.")
    tmp.replace(path)


def as_explicit_little(ds: Any) -> Any:
    """``ds`` re-encoded in memory as Explicit VR Little Endian (for a peer that accepted
    no other syntax for it): decoded when compressed, byte-swapped when big endian."""
    from pydicom.uid import ExplicitVRLittleEndian

    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_compressed:
        ds.decompress()
    elif ts != ExplicitVRLittleEndian:
        arr = ds.pixel_array
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
