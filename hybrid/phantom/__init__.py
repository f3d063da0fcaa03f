"""Procedural 3-D chest CT phantoms ("patients"), seeded and fast.

:func:`make_patient` draws one synthetic chest from a seed: body outline with
skin, subcutaneous fat and muscle, ribs, spine and sternum, heart and great
vessels, two lungs with procedurally grown bronchovascular and venous trees,
trachea and main bronchi, optional nodules and emphysema, clothing and the
patient table.  The result is a noise-free image in HU (the "truth") with
exact masks, suitable as ground truth for the low-dose simulation in
:mod:`hybrid.physics` (see :func:`scan_phantom`).

Geometry conventions
--------------------
* Arrays are ``(z, y, x)``.  ``x`` grows towards the patient's left (image
  right), ``y`` grows posteriorly (image down, the table is at large ``y``),
  ``z`` grows towards the head (index 0 is the most inferior slice, as in a
  DICOM series sorted by increasing ImagePositionPatient z).
* Each slice represents a slab of thickness equal to the slice spacing; thin
  structures are partial-volume averaged over that slab (approximately).

HU values (per patient, drawn inside published ranges; see :data:`HU_RANGES`):
fat -100 +/- 20, muscle 40-60, blood 35-45 (contrast-enhanced 200-350),
cortical bone 700-1200, trabecular bone 200-300, lung -850 +/- 50,
air -1000.

Builders
--------
:func:`make_patient` (:mod:`hybrid.phantom.patient`) composes one builder per
anatomy on a shared :class:`~hybrid.phantom.frame.Frame` (grid, spacing, body
centre and outline, the random generator): :mod:`~hybrid.phantom.torso` (table,
body outline, skin, fat, muscle, breasts, clothing, thoracic cavity),
:mod:`~hybrid.phantom.skeleton` (scapulae, ribs, sternum, spine),
:mod:`~hybrid.phantom.mediastinum` (organ layout, heart, abdomen, great
vessels), :mod:`~hybrid.phantom.lungs` (lung fields),
:mod:`~hybrid.phantom.airways` (trachea and main bronchi),
:mod:`~hybrid.phantom.vessels` (bronchovascular and venous trees),
:mod:`~hybrid.phantom.lesions` (emphysema, nodules) and
:mod:`~hybrid.phantom.texture` (parenchyma, soft tissue); tissue codes and HU
ranges are in :mod:`~hybrid.phantom.tissues`, geometry helpers in
:mod:`~hybrid.phantom.geometry`.
"""

from hybrid.phantom.patient import Phantom, make_patient
from hybrid.phantom.scan import scan_phantom
from hybrid.phantom.tissues import HU_RANGES, LABELS

__all__ = ["Phantom", "make_patient", "scan_phantom", "LABELS", "HU_RANGES"]
