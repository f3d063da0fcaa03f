"""A dictionary on disk: one folder with ``index.faiss`` (``faiss.write_index``),
``payload.h5`` (:class:`Payload`, through :mod:`hybrid.io.hdf5`) and ``meta.json``;
written atomically, checked on reading (:class:`DictionaryMismatchError`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.artifacts import MANIFEST_FILE, read_manifest, write_manifest
from hybrid.dictionary.config import (
    FORMAT_VERSION,
    INDEX_FILE,
    META_FILE,
    NORMALISATION,
    PAYLOAD_FILE,
)
from hybrid.io._atomic import atomic_dir, sha256_file
from hybrid.io.hdf5 import read_arrays, write_arrays

__all__ = ["DictionaryMismatchError", "Payload", "read", "write"]

_ARRAYS = ("values", "key_mean", "key_norm", "projection")


class DictionaryMismatchError(ValueError):
    """A stored dictionary does not match what the caller expects."""


@dataclass(eq=False)
class Payload:
    """The arrays of ``payload.h5``, and what queries derive from them once.

    ``values`` ``(n, patch_size**2)`` float16/32: ``nd_patch - mean(uld_patch)`` of each
    entry (HU); ``key_mean`` ``(n,)``: the ULD patch means (HU); ``key_norm`` ``(n,)``:
    ``|uld_patch - mean|`` (HU); ``projection`` ``(patch_size**2, key_dim)`` float32: the
    key projection (Helmert / hu_scale, then PCA).
    """

    values: np.ndarray
    key_mean: np.ndarray
    key_norm: np.ndarray
    projection: np.ndarray
    _derived: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.projection = np.ascontiguousarray(self.projection, dtype=np.float32)

    def values_f32(self) -> np.ndarray:
        """The values as float32, converted once (a gather of float32 rows is faster than
        gathering float16 rows and converting them, batch after batch)."""
        if "values32" not in self._derived:
            self._derived["values32"] = np.ascontiguousarray(self.values, dtype=np.float32)
        return self._derived["values32"]

    def projection_and_mean(self) -> np.ndarray:
        """``(patch_size**2, key_dim + 1)``: the key projection, then the mean weights."""
        if "proj_mean" not in self._derived:
            n = self.projection.shape[0]
            full = np.hstack([self.projection, np.full((n, 1), 1.0 / n, dtype=np.float32)])
            self._derived["proj_mean"] = np.ascontiguousarray(full, dtype=np.float32)
        return self._derived["proj_mean"]


#: The artifact format of a dictionary folder (its manifest.json, hybrid.artifacts).
ARTIFACT_FORMAT = "hybrid.dictionary.PatchDictionary"


def write(path: str | os.PathLike, index: Any, payload: Payload, meta: Mapping[str, Any], *,
          overwrite: bool = False) -> dict[str, str]:
    """Write the folder ``path`` atomically; returns the SHA-256 of its two data files
    (also stored in its ``meta.json`` under ``files``)."""
    import faiss

    path = Path(path)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        n, width = payload.values.shape
        write_arrays(
            tmp / PAYLOAD_FILE,
            {name: getattr(payload, name) for name in _ARRAYS},
            attrs={"format_version": FORMAT_VERSION},
            chunks={"values": (min(n, 8192), width)},
            compress={"projection": False},
        )
        files = {name: sha256_file(tmp / name) for name in (INDEX_FILE, PAYLOAD_FILE)}
        out = dict(meta, files=files)
        (tmp / META_FILE).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
        write_manifest(tmp, format=ARTIFACT_FORMAT, version=FORMAT_VERSION,
                       files=(INDEX_FILE, PAYLOAD_FILE), config=meta.get("config"),
                       data_manifest=meta.get("source"))
    return files


def read(path: str | os.PathLike, *, expect: Mapping[str, Any] | None = None,
         verify: bool = True) -> tuple[Any, Payload, dict[str, Any]]:
    """``(index, payload, meta)`` of the folder ``path``, checked (see
    :meth:`~hybrid.dictionary.PatchDictionary.load`)."""
    import faiss

    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"Expected a dictionary folder with {META_FILE}, {INDEX_FILE} and {PAYLOAD_FILE}; "
            f"{meta_path} does not exist. Build one with PatchDictionary.build(...).save(path)."
        )
    meta = json.loads(meta_path.read_text())
    check_meta(meta, expect, path)
    if verify:
        for fname, digest in meta.get("files", {}).items():
            if sha256_file(path / fname) != digest:
                raise DictionaryMismatchError(
                    f"Dictionary file {path / fname} does not match the SHA-256 in {meta_path} "
                    "(changed or corrupt). Rebuild or re-copy the dictionary folder."
                )
    if verify and (path / MANIFEST_FILE).is_file():  # folders saved before manifests have none
        read_manifest(path, format=ARTIFACT_FORMAT, max_version=FORMAT_VERSION)
    index = faiss.read_index(str(path / INDEX_FILE))
    arrays, _ = read_arrays(path / PAYLOAD_FILE, _ARRAYS, require=_ARRAYS)
    payload = Payload(**arrays)
    n = meta["counts"]["entries"]
    size = meta["patch_size"]
    key_dim = meta["key_dim"]
    if (
        index.ntotal != n
        or index.d != key_dim
        or payload.values.shape != (n, size * size)
        or payload.projection.shape != (size * size, key_dim)
    ):
        raise DictionaryMismatchError(
            f"Dictionary at {path} is inconsistent: meta says {n} entries of patch size {size} and "
            f"{key_dim}-d keys; index has {index.ntotal} keys of dimension {index.d}, values have "
            f"shape {payload.values.shape}, projection {payload.projection.shape}. Rebuild it."
        )
    return index, payload, meta


# --------------------------------------------------------------------------- checks


def _subset_mismatch(stored: Any, wanted: Any, prefix: str) -> list[str]:
    if isinstance(wanted, Mapping):
        if not isinstance(stored, Mapping):
            return [f"{prefix}: stored {stored!r}, expected a mapping {dict(wanted)!r}"]
        out = []
        for k, v in wanted.items():
            out += _subset_mismatch(stored.get(k, "<absent>"), v, f"{prefix}.{k}")
        return out
    if isinstance(wanted, float) or isinstance(stored, float):
        try:
            if math.isclose(float(stored), float(wanted), rel_tol=1e-9):
                return []
        except (TypeError, ValueError):
            pass
    return [] if stored == wanted else [f"{prefix}: stored {stored!r}, expected {wanted!r}"]


def check_meta(meta: Mapping[str, Any], expect: Mapping[str, Any] | None, path: Path) -> None:
    """Refuse a ``meta.json`` of another format version or normalisation, or one that
    differs from ``expect`` (nested mappings compared key by key)."""
    problems = []
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        problems.append(f"format_version: stored {version!r}, this code reads {FORMAT_VERSION}")
    norm = meta.get("normalisation", {})
    if norm.get("type") != NORMALISATION:
        problems.append(
            f"normalisation.type: stored {norm.get('type')!r}, this code uses {NORMALISATION!r}"
        )
    for key, wanted in (expect or {}).items():
        if key not in meta:
            problems.append(f"{key}: absent from meta.json (known: {', '.join(sorted(meta))})")
            continue
        problems += _subset_mismatch(meta[key], wanted, key)
    if problems:
        raise DictionaryMismatchError(
            f"Dictionary at {path} does not match what is expected:\n  - "
            + "\n  - ".join(problems)
            + "\nLoad a dictionary built with matching settings, or rebuild it "
            "(PatchDictionary.build(..., config=DictionaryConfig(...)).save(path))."
        )
