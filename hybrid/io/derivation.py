"""The text a derived series carries about how it was made (one place for all writers).

DICOM written by ``hybrid enhance``, ``hybrid batch`` and ``hybrid serve`` says
the same thing: SeriesDescription ``"<source description> [hybrid]"``,
DerivationDescription ``"Enhanced by <method> (ultra-low-dose CT restoration;
research software, no diagnostic claim)"`` and SoftwareVersions
``"hybrid <version>"``.
"""

from __future__ import annotations

from typing import Any

from hybrid._version import __version__

__all__ = ["DEFAULT_DERIVATION", "derivation_text", "series_description", "software_versions",
           "save_options"]

#: DerivationDescription of a series written by :func:`hybrid.io.save` without ``derivation=``.
DEFAULT_DERIVATION = "Enhanced by hybrid (ultra-low-dose CT restoration)"

#: DICOM limits (characters) of the attributes below.
_DERIVATION_MAX, _DESCRIPTION_MAX = 1024, 64


def derivation_text(method: str) -> str:
    """DerivationDescription of a series enhanced by ``method`` (e.g. ``"hybrid.enhance"``)."""
    return (f"Enhanced by {method} (ultra-low-dose CT restoration; "
            "research software, no diagnostic claim)")[:_DERIVATION_MAX]


def series_description(source_description: str, description: str | None = None) -> str:
    """SeriesDescription of a derived series: ``description`` or ``"<source> [hybrid]"``."""
    return (description or f"{source_description} [hybrid]")[:_DESCRIPTION_MAX]


def software_versions() -> str:
    """SoftwareVersions of a series written by this hybrid."""
    return f"hybrid {__version__}"


def save_options(enhanced: Any, fmt: str) -> dict[str, str]:
    """Writer options for an enhanced volume: DICOM gets its derivation description.

    Parameters
    ----------
    enhanced : Volume
        An output of :meth:`hybrid.Enhancer.enhance` (its provenance names the method).
    fmt : str
        The output format (:data:`hybrid.io.FORMATS`).

    Returns
    -------
    dict
        Keyword arguments for :func:`hybrid.io.save` (empty except for DICOM).
    """
    if fmt != "dicom":
        return {}
    return {"derivation": derivation_text(enhanced.provenance.derived_from[-1])}
