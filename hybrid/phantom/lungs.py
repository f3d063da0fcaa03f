"""Lungs builder: the lung fields of each slice, and the box around the lungs in which the
parenchyma, the trees and the lesions are drawn."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybrid.phantom.frame import Frame, Slice, Window
from hybrid.phantom.geometry import Raster, smoothstep
from hybrid.phantom.mediastinum import Layout
from hybrid.phantom.tissues import LABELS

__all__ = ["LungBox", "paint_lungs", "lung_box"]


@dataclass
class LungBox:
    """The bounding box of the lungs (plus a 2-pixel margin in-plane), as views of the volumes.

    ``t`` and ``lab`` are views into the truth and labels: drawing into them
    draws into the phantom.
    """

    sub: tuple[slice, slice, slice]
    lm: np.ndarray  # lung mask in the box
    t: np.ndarray  # truth (HU) in the box, a view
    lab: np.ndarray  # labels in the box, a view
    origin: tuple[float, float, float]  # mm coordinate of the box's first voxel
    raster: Raster  # tubes onto the box's grid


def paint_lungs(
    frame: Frame, window: Window, lay: Layout, sl: Slice, excl_w: np.ndarray
) -> np.ndarray:
    """Lung fields of a slice: the cavity above the diaphragm, outside heart and mediastinum.

    ``excl_w`` is the exclusion mask of this slice inside the window.  Returns the lung mask.
    """
    Xb, Yb, u, x_med, r_vb = window.Xb, window.Yb, sl.u, lay.x_med, sl.r_vb
    in_lung = sl.cav & (window.rho < sl.cav_r - 1.0) & (u >= sl.udome) & ~sl.heart_ex & ~excl_w
    in_lung &= np.abs(Xb - x_med) > 9.0 + 4.0 * smoothstep(0.55, 0.3, u) * 0  # mediastinal band
    in_lung &= sl.dvb2 > ((r_vb + 4.0) / r_vb) ** 2
    in_lung &= ~((np.abs(Xb - x_med) < 0.6 * r_vb) & (Yb > sl.yv))
    if u > 0.66:  # apices
        # each apex: a dome narrowing upwards, centred posterolaterally; its
        # lateral side still follows the ribs
        Lc = lay.Lc
        ra = 0.75 * Lc * np.sqrt(max(0.0, 1.0 - ((u - 0.66) / (1.0 - 0.66)) ** 2))
        yap = frame.y_c + 0.3 * lay.Pc
        apR = ((Xb - (x_med - 0.62 * Lc)) / 1.0) ** 2 + ((Yb - yap) / 0.8) ** 2 < ra * ra
        apL = ((Xb - (x_med + 0.62 * Lc)) / 1.0) ** 2 + ((Yb - yap) / 0.8) ** 2 < ra * ra
        in_lung &= apR | apL
    if u > 1.0:
        in_lung[:] = False
    sl.hu[in_lung] = frame.hu["lung"]
    sl.lab[in_lung] = LABELS["lung"]
    return in_lung


def lung_box(
    frame: Frame, truth: np.ndarray, labels: np.ndarray, lung: np.ndarray
) -> LungBox | None:
    """The box around the lungs, or None if the volume has no lung voxel."""
    zi, yi, xi = (np.flatnonzero(lung.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    if not zi.size:
        return None
    bz = slice(zi[0], zi[-1] + 1)
    by = slice(max(yi[0] - 2, 0), yi[-1] + 3)
    bx = slice(max(xi[0] - 2, 0), xi[-1] + 3)
    sub = (bz, by, bx)
    lm = lung[sub]
    origin = (float(frame.zc[bz.start]), float(frame.y[by.start]), float(frame.x[bx.start]))
    return LungBox(
        sub=sub,
        lm=lm,
        t=truth[sub],
        lab=labels[sub],
        origin=origin,
        raster=Raster(lm.shape, (frame.dz, frame.pix, frame.pix), origin),
    )
