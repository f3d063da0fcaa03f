"""What is accepted and what is enhanced: instance checks (listener) and the series rule.

Both work on plain tag mappings (keyword → value), as read from a pydicom
dataset (:func:`tags_of`) or from Orthanc's ``simplified-tags``.  Messages
name UIDs and tag values that are not patient identifiers, never a name or
an ID.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hybrid.io.frames import CT_SOP_CLASSES, is_ct
from hybrid.serve.config import SelectConfig

#: C-STORE statuses (PS3.4 B.2.3, PS3.7 C.5)
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

_RULE_TAGS = ("Modality", "ImageType", "SoftwareVersions", "SeriesDescription", "ProtocolName",
              "CTDIvol", "SOPClassUID")


def _values(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [s.strip() for s in v.split("\\")]
    try:
        return [str(s).strip() for s in v]
    except TypeError:
        return [str(v).strip()]


def tags_of(ds) -> dict[str, Any]:
    """The tags the rules look at, from a pydicom Dataset."""
    return {k: ds.get(k) for k in _RULE_TAGS if k in ds}


def derived_reason(tags: Mapping[str, Any]) -> str | None:
    """Why a series is output and not input (ImageType DERIVED, made by hybrid), or None."""
    software = " ".join(_values(tags.get("SoftwareVersions")))
    if software.lower().startswith("hybrid"):
        return f"made by {software}"
    image_type = _values(tags.get("ImageType"))
    if image_type and image_type[0].upper() == "DERIVED":
        return "ImageType " + "\\".join(image_type)
    return None


def select_reason(tags: Mapping[str, Any], rule: SelectConfig) -> str | None:
    """Why a series is *not* selected for enhancement by ``rule``, or None when it is."""
    modality = str(tags.get("Modality") or "")
    if not modality and is_ct("", str(tags.get("SOPClassUID") or "")):
        modality = "CT"  # anonymisers strip Modality; the SOP class says what it is
    if rule.modality and modality != rule.modality:
        return f"modality {modality or 'missing'}, expected {rule.modality}"
    if rule.skip_derived:
        why = derived_reason(tags)
        if why:
            return f"derived series ({why})"
    description = str(tags.get("SeriesDescription") or "")
    if rule.series_description and not re.search(rule.series_description, description):
        return f"SeriesDescription does not match {rule.series_description!r}"
    protocol = str(tags.get("ProtocolName") or "")
    if rule.protocol and not re.search(rule.protocol, protocol):
        return f"ProtocolName does not match {rule.protocol!r}"
    if rule.max_ctdivol_mgy is not None:
        raw = tags.get("CTDIvol")
        try:
            ctdi = float(_values(raw)[0])
        except (IndexError, ValueError):
            return f"no CTDIvol to compare with max_ctdivol_mgy = {rule.max_ctdivol_mgy}"
        if ctdi > rule.max_ctdivol_mgy:
            return f"CTDIvol {ctdi:g} mGy above max_ctdivol_mgy = {rule.max_ctdivol_mgy:g}"
    return None


def instance_refusal(ds, sop_class_uid: str | None = None) -> tuple[int, str] | None:
    """(C-STORE status, reason) refusing one received instance, or None when it is acceptable.

    Refused: a SOP class other than CT, Enhanced CT or Legacy Converted Enhanced CT Image
    Storage (0x0122), a modality other than CT (a missing one is taken from the SOP class)
    or missing identifying UIDs (0xA900), missing, truncated or undecodable pixel data
    (0xC000).
    """
    from hybrid.serve.spool import valid_uid

    sop_class = str(sop_class_uid or ds.get("SOPClassUID", ""))
    if sop_class not in CT_SOP_CLASSES:
        return (SOP_CLASS_NOT_SUPPORTED,
                f"SOP class {sop_class or 'missing'} is not one of {', '.join(CT_SOP_CLASSES.values())}")
    modality = str(ds.get("Modality", "") or "")
    if not is_ct(modality, sop_class):
        return DATASET_DOES_NOT_MATCH, f"modality {modality or 'missing'}, expected CT"
    for kw in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not valid_uid(str(ds.get(kw, "") or "")):
            return DATASET_DOES_NOT_MATCH, f"{kw} missing or not a valid UID"
    for kw in ("Rows", "Columns", "BitsAllocated", "PixelData"):
        if kw not in ds:
            return CANNOT_UNDERSTAND, f"{kw} missing"
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and not ts.is_compressed:
        expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
                    * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated) // 8)
        got = len(ds.PixelData)
        if got < expected:
            return CANNOT_UNDERSTAND, f"pixel data truncated ({got} of {expected} bytes)"
    try:
        ds.pixel_array  # noqa: B018 - decodes: refuses what hybrid.load could not read
    except Exception as exc:
        return CANNOT_UNDERSTAND, f"pixel data not decodable ({type(exc).__name__})"
    return None
