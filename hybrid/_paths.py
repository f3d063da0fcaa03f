"""Where a checkout keeps things: the one place that derives them from this file.

A leaf module (only :mod:`pathlib`), so any module can import it without an import cycle.
In an installed package (no checkout around it) these paths do not exist: pass explicit
paths there.
"""

from __future__ import annotations

from pathlib import Path

#: The repository's root: the folder holding ``hybrid/``, ``experiments/`` and ``pyproject.toml``.
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The repository's ``experiments/`` folder (the split, the configs, the results).
EXPERIMENTS_DIR = REPO_ROOT / "experiments"
#: ``../shared/data`` beside the checkout: the clinical CT and the real low-dose pairs.
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
