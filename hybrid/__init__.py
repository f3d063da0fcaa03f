"""hybrid — ultra-low-dose chest CT restoration.

A lung/body CNN pair and a FAISS patch dictionary each propose a normal-dose
image; a confidence blender joins them.  The public face:

- :class:`Volume` — float32 HU array (z, y, x) with spacing in mm and provenance
- :func:`load` / :func:`save` — DICOM series, NIfTI, HDF5, NumPy
- :func:`enhance` / :class:`Enhancer` — the whole restoration (:mod:`hybrid.pipeline`),
  imported on first use

Heavy dependencies (TensorFlow, FAISS, pydicom) are imported only inside the
modules that need them, so ``import hybrid`` stays fast.
"""

from hybrid._version import __version__
from hybrid.io import load, save
from hybrid.volume import Provenance, Volume

__all__ = ["Volume", "Provenance", "load", "save", "enhance", "Enhancer", "EnhanceMaps",
           "__version__"]

_LAZY = {"enhance": "hybrid.pipeline", "Enhancer": "hybrid.pipeline",
         "EnhanceMaps": "hybrid.pipeline"}


def __getattr__(name: str):
    # lazy: the pipeline pulls in TensorFlow and FAISS only when models are loaded,
    # but importing it on demand keeps ``import hybrid`` minimal either way
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hybrid' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
