"""Skeleton builder: scapulae, ribs with costal cartilage, sternum, and the thoracic spine
(vertebral bodies, discs, posterior elements, spinal canal)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybrid.phantom.frame import N_ANGLES, WALL_MM, Frame, Slice, Window
from hybrid.phantom.geometry import smoothstep
from hybrid.phantom.mediastinum import Layout
from hybrid.phantom.tissues import LABELS

__all__ = ["Ribs", "draw_ribs", "paint_scapulae", "paint_ribs", "paint_sternum", "paint_spine"]

#: Angular end (from the posterior midline) of the bony part of ribs 1-12, in units of pi.
_RIB_ENDS = np.array([0.80, 0.86, 0.86, 0.86, 0.86, 0.86, 0.86, 0.80, 0.76, 0.70, 0.55, 0.40])


@dataclass
class Ribs:
    """Rib cage: level of rib 1 posteriorly, anterior drop of the ribs, bony ends per rib."""

    rib_top: float  # rib 1 posterior level (mm); also the reference of the vertebral levels
    drop: float  # how far a rib drops from back to front (mm)
    ribs_end: np.ndarray  # (12,) rad from the posterior midline


def draw_ribs(frame: Frame) -> Ribs:
    """Draw the ribs' anterior drop."""
    rib_top = frame.H + 0.35 * frame.h_v
    ribs_end = _RIB_ENDS * np.pi
    drop = frame.rng.uniform(3.0, 3.8) * frame.h_v
    return Ribs(rib_top=rib_top, drop=drop, ribs_end=ribs_end)


def paint_scapulae(frame: Frame, window: Window, sl: Slice) -> None:
    """Scapulae: thin plates behind the upper posterolateral ribs."""
    u = sl.u
    if 0.5 < u < 1.06:
        ph_max = 0.6 + 0.6 * float(smoothstep(0.5, 0.72, u))
        rr = window.rho - (sl.Rb - 2.0 - sl.Ft - sl.Mt)
        phi = window.phi
        sc = sl.bdy & (phi > 0.62) & (phi < ph_max) & (rr > 2.0) & (rr < 6.0)
        sl.hu[sc] = 0.75 * frame.hu["cortical_bone"]
        sl.lab[sc] = LABELS["cortical_bone"]


def paint_ribs(frame: Frame, window: Window, ribs: Ribs, sl: Slice) -> None:
    """Ribs in the chest wall: rib k's height along the wall drops anteriorly."""
    hu, L, h_v = frame.hu, LABELS, frame.h_v
    rho, cav_r, ribs_end = window.rho, sl.cav_r, ribs.ribs_end
    band = sl.bdy & (rho >= cav_r - 1.0) & (rho < cav_r + WALL_MM)
    bi = np.nonzero(band)
    if bi[0].size:
        ph = window.phi[bi]
        kf = (ribs.rib_top - ribs.drop * (ph / np.pi) ** 1.15 - sl.zmm) / h_v + 1.0
        kk = np.rint(kf)
        dzr = (kf - kk) * h_v
        kki = np.clip(kk.astype(int), 1, 12)
        ok = (kk >= 1) & (kk <= 12) & (ph > 0.22) & (ph < ribs_end[kki - 1] + 0.09 * np.pi)
        dr = rho[bi] - (cav_r[bi] + 4.0)
        e = (dr / 3.6) ** 2 + (dzr / 5.0) ** 2
        rib = ok & (e < 1.0)
        cart = rib & (ph >= ribs_end[kki - 1])
        cort = rib & ~cart & (e > 0.45)
        trab = rib & ~cart & ~cort
        for m_, name in (
            (cart, "cartilage"),
            (cort, "cortical_bone"),
            (trab, "trabecular_bone"),
        ):
            idx = (bi[0][m_], bi[1][m_])
            sl.hu[idx] = hu[name]
            sl.lab[idx] = L[name]


def paint_sternum(frame: Frame, window: Window, lay: Layout, sl: Slice) -> None:
    """Sternum: a flat ellipse behind the anterior chest wall, cortical rim."""
    hu, L, u = frame.hu, LABELS, sl.u
    if 0.22 < u < 0.92:
        w_st = 12.0 + 10.0 * smoothstep(0.7, 0.85, u)
        ia = N_ANGLES // 4  # anterior midline
        r_ant = sl.R_t[ia] - 2.0 - sl.F_t[ia] - sl.M_t[ia] - WALL_MM
        yst = frame.y_c - r_ant - 5.0
        es = ((window.Xb - lay.x_med) / w_st) ** 2 + ((window.Yb - yst) / 5.5) ** 2
        st = es < 1.0
        sl.hu[st] = hu["trabecular_bone"]
        sl.lab[st] = L["trabecular_bone"]
        stc = st & (es > 0.55)
        sl.hu[stc] = hu["cortical_bone"]
        sl.lab[stc] = L["cortical_bone"]


def paint_spine(frame: Frame, window: Window, lay: Layout, ribs: Ribs, sl: Slice) -> None:
    """Spine: vertebral body or disc, posterior elements, spinal canal."""
    hu, L, h_v, u = frame.hu, LABELS, frame.h_v, sl.u
    Xb, Yb, x_med, r_vb0 = window.Xb, window.Yb, lay.x_med, lay.r_vb0
    sl_hu, sl_lab = sl.hu, sl.lab
    r_vb = r_vb0 * (1.0 + 0.25 * (1.0 - u))
    kv = (ribs.rib_top - sl.zmm) / h_v
    dzv = (kv - np.rint(kv)) * h_v  # distance from the nearest vertebral centre (mm)
    yv = lay.y_vb + (r_vb0 - r_vb) * 0.5
    dvb2 = ((Xb - x_med) ** 2 + (Yb - yv) ** 2) / r_vb**2
    vb = dvb2 < 1.0
    if abs(dzv) > 0.40 * h_v:
        sl_hu[vb] = hu["disc"]
        sl_lab[vb] = L["disc"]
    else:
        sl_hu[vb] = hu["trabecular_bone"]
        sl_lab[vb] = L["trabecular_bone"]
        vbc = vb & (dvb2 > (1 - 1.8 / r_vb) ** 2)
        sl_hu[vbc] = hu["cortical_bone"]
        sl_lab[vbc] = L["cortical_bone"]
    ycan = yv + lay.y_canal_off
    dcan = np.sqrt((Xb - x_med) ** 2 + (Yb - ycan) ** 2)
    post = np.zeros(Xb.shape, dtype=bool)
    if abs(dzv) < 0.45 * h_v:
        post |= (dcan >= 7.5) & (dcan < 12.5) & (Yb > ycan - 8.0)  # pedicles + laminae
    if abs(dzv - 0.25 * h_v) < 0.3 * h_v:
        post |= (np.abs(Xb - x_med) < 4.5) & (Yb > ycan) & (Yb < ycan + 12.5 + 22.0)  # spinous
    if abs(dzv) < 0.22 * h_v:
        dtp = np.abs(Xb - x_med)
        post |= (
            (dtp > 6) & (dtp < 30) & (np.abs(Yb - ycan - 1.0 - 0.2 * (dtp - 6)) < 5.0)
        )  # transverse
    sl_hu[post] = hu["cortical_bone"] * 0.85
    sl_lab[post] = L["cortical_bone"]
    can = dcan < 7.5
    sl_hu[can] = hu["spinal_canal"]
    sl_lab[can] = L["spinal_canal"]
    sl.r_vb, sl.yv, sl.dvb2 = r_vb, yv, dvb2
