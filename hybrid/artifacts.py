"""Where the shipped models live, and the one manifest scheme every artifact carries.

Every saved artifact (the CNN pair, a patch dictionary, a blender calibration)
writes the same manifest (see :func:`manifest`): its format and version, the
SHA-256 of each of its files, its configuration, the data manifest it was built
from and when.  The blender records the digests of the CNN pair and dictionary
it was calibrated with, so that :class:`hybrid.pipeline.Enhancer` can refuse a
combination that was never calibrated together.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["default_assets_dir", "default_asset_paths"]

_ASSET_NAMES = {"cnn": "cnn", "dictionary": "dictionary", "blender": "blend.json"}


def default_assets_dir() -> Path:
    """Folder of the shipped default models: ``hybrid/assets`` inside the package."""
    try:
        root = importlib.resources.files("hybrid") / "assets"
        return Path(str(root))
    except Exception:  # pragma: no cover - e.g. a zipped package
        import hybrid

        return Path(hybrid.__file__).resolve().parent / "assets"


def default_asset_paths() -> dict[str, Path]:
    """Paths of the shipped ``cnn`` folder, ``dictionary`` folder and ``blender`` JSON."""
    root = default_assets_dir()
    return {k: root / v for k, v in _ASSET_NAMES.items()}
