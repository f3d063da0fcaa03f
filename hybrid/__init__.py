"""hybrid — ultra-low-dose chest CT restoration.

A lung/body CNN pair and a FAISS patch dictionary each propose a normal-dose
image; a confidence blender joins them.  The public face:

- :class:`Volume` — float32 HU array (z, y, x) with spacing in mm and provenance
- :func:`load` / :func:`save` — DICOM series, NIfTI, HDF5, NumPy

Heavy dependencies (TensorFlow, FAISS, pydicom) are imported only inside the
modules that need them, so ``import hybrid`` stays fast.
"""

from hybrid.io import load, save
from hybrid.volume import Provenance, Volume

__version__ = "0.1.0"

__all__ = ["Volume", "Provenance", "load", "save", "__version__"]
