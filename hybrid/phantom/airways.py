"""Central airways builder: trachea and main bronchi (wall, then air lumen), outside the lungs.

The smaller airways grow inside the lungs with the vessels (:mod:`hybrid.phantom.vessels`).
"""

from __future__ import annotations

import numpy as np

from hybrid.phantom.frame import Frame
from hybrid.phantom.mediastinum import Layout
from hybrid.phantom.tissues import AIR_HU, LABELS

__all__ = ["paint_central_airways"]


def paint_central_airways(
    frame: Frame,
    lay: Layout,
    truth: np.ndarray,
    labels: np.ndarray,
    lung: np.ndarray,
    body: np.ndarray,
    med: np.ndarray,
) -> None:
    """Trachea and main bronchi: wall then lumen, partial-volume blended into ``truth``.

    ``med`` is a float32 scratch volume of the grid's shape (zeroed here, left dirty).
    """
    hu, L, ras, r_tr = frame.hu, LABELS, frame.raster, lay.r_tr
    for rad, val, name in ((1.0, hu["airway_wall"], "airway_wall"), (0.0, AIR_HU, "airway_lumen")):
        med[:] = 0
        off = 1.8 if rad else 0.0
        ras.polyline(med, lay.trachea, [r_tr + off, r_tr + off], weight_z=False)
        ras.polyline(
            med, lay.bronR, [r_tr * 0.8 + off, r_tr * 0.75 + off, r_tr * 0.65 + off], weight_z=False
        )
        ras.polyline(
            med, lay.bronL, [r_tr * 0.75 + off, r_tr * 0.7 + off, r_tr * 0.6 + off], weight_z=False
        )
        m = (med > 0) & body & ~lung
        truth[m] = truth[m] * (1 - med[m]) + val * med[m]
        labels[m & (med > 0.5)] = L[name]
