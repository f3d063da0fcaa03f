"""Cases and slices of the paired dataset as the evaluation sees them.

Manifest entries (:func:`hybrid.data.load_manifest`), the path of a case's
file, its kernel class (smooth / standard / sharp) and which of its slices are
scored or used for tuning (the central ones first).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["central_slices", "case_entries", "case_file", "kernel_class"]


def central_slices(n_total: int, n: int | None) -> list[int]:
    """Indices of the ``n`` central slices of a volume of ``n_total`` (all if n is None or larger).

    >>> central_slices(16, 4)
    [6, 7, 8, 9]
    >>> central_slices(3, 8)
    [0, 1, 2]
    """
    if n is None or n >= n_total:
        return list(range(n_total))
    if n < 1:
        raise ValueError(f"Expected a positive number of slices; received {n}.")
    start = (n_total - n) // 2
    return list(range(start, start + n))


def _by_centrality(n_total: int) -> list[int]:
    """Slice indices ordered by distance from the centre (centre first)."""
    mid = (n_total - 1) / 2
    return sorted(range(n_total), key=lambda i: (abs(i - mid), i))

def case_entries(root: Path) -> list[dict[str, Any]]:
    """The manifest entries of the paired dataset at ``root`` (``make data``), one per case."""
    from hybrid.data import load_manifest

    return list(load_manifest(root)["cases"])


def case_file(root: Path, entry: Mapping[str, Any]) -> Path:
    """The HDF5 file of a manifest entry's case (for :func:`hybrid.data.load_case`)."""
    return Path(root) / entry["file"]


def kernel_class(entry: Mapping[str, Any]) -> str:
    """Kernel class (smooth / standard / sharp) of a manifest entry."""
    from hybrid.physics import kernel_for

    meta = entry.get("meta", {})
    k = meta.get("kernel")
    if k in ("smooth", "standard", "sharp"):
        return k
    return kernel_for(meta.get("dicom_kernel"))

