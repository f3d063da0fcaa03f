"""Where the shipped models live, and the one manifest scheme every artifact carries.

Every saved artifact (the CNN pair, a patch dictionary, a blender calibration)
writes the same manifest (see :func:`manifest`): its format and version, the
SHA-256 of each of its files, its configuration, the data manifest it was built
from and when.  The blender records the digests of the CNN pair and dictionary
it was calibrated with, so that :class:`hybrid.pipeline.Enhancer` can refuse a
combination that was never calibrated together.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.resources
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["default_assets_dir", "default_asset_paths", "missing_shipped_assets", "write_manifest", "read_manifest",
           "digest", "file_digests", "MANIFEST_FILE"]

_ASSET_NAMES = {"cnn": "cnn", "dictionary": "dictionary", "blender": "blend.json",
                "noise_aware": "cnn_noise_aware"}


def default_assets_dir() -> Path:
    """Folder of the shipped default models: ``hybrid/assets`` inside the package."""
    try:
        root = importlib.resources.files("hybrid") / "assets"
        return Path(str(root))
    except Exception:  # pragma: no cover - e.g. a zipped package
        import hybrid

        return Path(hybrid.__file__).resolve().parent / "assets"


def default_asset_paths() -> dict[str, Path]:
    """Paths of the shipped ``cnn`` folder, ``dictionary`` folder, ``blender`` JSON and
    ``noise_aware`` CNN pair folder (used only by a blender with that rule)."""
    root = default_assets_dir()
    return {k: root / v for k, v in _ASSET_NAMES.items()}


def missing_shipped_assets() -> list[Path]:
    """The shipped models that are absent: the CNN pair, dictionary and blender, and the
    noise-aware pair where the shipped blender has a rule for it."""
    paths = default_asset_paths()
    need = ["cnn", "dictionary", "blender"]
    if paths["blender"].is_file():
        doc = json.loads(paths["blender"].read_text())
        if "noise_aware" in doc.get("candidates", {}):
            need.append("noise_aware")
    return [paths[n] for n in need if not paths[n].exists()]


# ---------------------------------------------------------------- the one manifest scheme
MANIFEST_FILE = "manifest.json"


def file_digests(folder: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, str]:
    """SHA-256 of each named file in ``folder`` (default: every file but the manifest)."""
    from hybrid.io._atomic import sha256_file

    folder = Path(folder)
    if names is None:
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    return {n: sha256_file(folder / n) for n in names}


def digest(files: Mapping[str, str]) -> str:
    """The artifact's digest: SHA-256 of its sorted (file name, file SHA-256) list.

    It names the content, not the moment of saving: the same weights give the same digest.
    """
    text = "\n".join(f"{k}:{files[k]}" for k in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()


def write_manifest(
    folder: str | os.PathLike,
    *,
    format: str,
    version: int,
    config: Any = None,
    data_manifest: Any = None,
    files: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Write ``manifest.json`` into an artifact folder (call it inside the atomic save).

    Fields: ``format``, ``version``, ``files`` (name -> SHA-256), ``digest``, ``config``,
    ``data_manifest`` (what it was built from), ``created_utc``, ``hybrid_version``.
    """
    from hybrid._version import __version__

    folder = Path(folder)
    hashes = file_digests(folder, files)
    man = {
        "format": format, "version": int(version), "files": hashes, "digest": digest(hashes),
        "config": config, "data_manifest": data_manifest,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hybrid_version": __version__,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(man, indent=2, sort_keys=True, default=str) + "\n")
    return man


def read_manifest(folder: str | os.PathLike, *, format: str, max_version: int) -> dict[str, Any]:
    """Read and check an artifact folder's ``manifest.json``.

    Raises
    ------
    FileNotFoundError
        No manifest (the folder predates the scheme or is not an artifact).
    ValueError
        Another format, a newer version, or a file whose SHA-256 differs from the
        manifest's (changed or damaged since saving), named with the fix.
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected an artifact manifest {path}; it does not exist. Re-save the artifact "
            "with this version of hybrid."
        )
    man = json.loads(path.read_text())
    if man.get("format") != format:
        raise ValueError(
            f"Expected a {format!r} artifact in {folder}; its manifest says {man.get('format')!r}."
        )
    if int(man.get("version", 0)) > max_version:
        raise ValueError(
            f"Expected {format} version <= {max_version} in {folder}; received version "
            f"{man.get('version')}. Upgrade hybrid."
        )
    actual = file_digests(folder, man.get("files", {}))
    changed = sorted(n for n, h in man.get("files", {}).items() if actual.get(n) != h)
    if changed:
        raise ValueError(
            f"Expected the files of {folder} as saved; {', '.join(changed)} changed since "
            "(SHA-256 differs from manifest.json). Restore or re-create the artifact."
        )
    return man
