"""Mediastinum builder: where the organs sit (heart, great vessels, airways, spine, diaphragm),
the exclusion of the lungs around them, the heart, the upper abdomen and the great vessels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybrid.phantom.frame import N_ANGLES, WALL_MM, Frame, Slice, Window
from hybrid.phantom.tissues import AIR_HU, LABELS

__all__ = ["Layout", "draw_layout", "vessel_tubes", "exclusion_mask"]
__all__ += ["paint_heart", "paint_abdomen", "paint_vessels"]


@dataclass
class Layout:
    """Positions and sizes (mm, patient frame) of the organs around the lungs."""

    Pc: float  # cavity depth posteriorly at mid-chest (approximate, for placing organs)
    Ac: float  # ... anteriorly
    Lc: float  # ... laterally (patient left)
    r_vb0: float  # vertebral body radius
    y_vb: float  # vertebral body centre
    y_canal_off: float  # spinal canal behind the vertebral body centre
    x_med: float  # mediastinal midline
    ah: float  # heart semi-axes and rotation, centre
    bh: float
    ch: float
    heart_rot: float
    xh: float
    yh: float
    zh: float
    uR: float  # diaphragm domes (height in units of H), right and left
    uL: float
    x_domeR: float
    x_domeL: float
    y_dome: float
    r_tr: float  # trachea radius and position
    y_tr: float
    x_tr: float
    hilR: np.ndarray  # hila (z, y, x)
    hilL: np.ndarray
    carina: np.ndarray
    aorta_pts: np.ndarray
    aorta_r: np.ndarray
    pa_pts: np.ndarray
    pa_r: np.ndarray
    rpa: np.ndarray
    lpa: np.ndarray
    svc: np.ndarray
    bcv: np.ndarray
    eso: np.ndarray
    trachea: np.ndarray
    bronR: np.ndarray
    bronL: np.ndarray
    la: np.ndarray  # left atrium
    pvR: np.ndarray  # pulmonary vein roots
    pvL: np.ndarray


def draw_layout(frame: Frame) -> Layout:
    """Draw the mediastinal anatomy: spine, heart, domes, trachea, bronchi, great vessels."""
    rng, H, scale, y_c = frame.rng, frame.H, frame.scale, frame.y_c
    rb_mid, _, _ = frame.body_radius(0.5)
    f_mid, m_mid = frame.layer_tabs(0.5)
    cav_mid = rb_mid - 2 - f_mid - m_mid - WALL_MM
    Pc = float(cav_mid[int((np.pi / 2 + np.pi) / (2 * np.pi) * N_ANGLES)])  # posterior
    Ac = float(cav_mid[int((-np.pi / 2 + np.pi) / (2 * np.pi) * N_ANGLES)])  # anterior
    Lc = float(cav_mid[N_ANGLES // 2])  # lateral (patient left)
    r_vb0 = rng.uniform(14.0, 18.0) * (0.8 + 0.2 * scale)
    y_vb = y_c + Pc - 0.55 * r_vb0  # vertebral body centre protrudes into the cavity
    y_canal_off = r_vb0 + 9.0
    x_med = rng.uniform(-6, 6)
    # heart (ellipsoid)
    ah, bh, ch = (
        rng.uniform(52, 66) * scale**0.5,
        rng.uniform(42, 52) * scale**0.5,
        rng.uniform(48, 60),
    )
    # keep the heart inside the mediastinum (cardiothoracic ratio ~0.4-0.5)
    ah = min(ah, 0.5 * Lc)
    bh = min(bh, 0.33 * (Ac + Pc))
    heart_rot = np.deg2rad(rng.uniform(25, 45))
    xh = x_med + rng.uniform(18, 34)
    yh = y_c - Ac + bh + rng.uniform(4, 14)
    uR = rng.uniform(0.17, 0.24)
    uL = uR - rng.uniform(0.0, 0.05)
    x_domeR, x_domeL = x_med - 0.5 * Lc, x_med + 0.5 * Lc
    y_dome = y_c - 0.15 * Pc
    # trachea / bronchi / vessels
    r_tr = rng.uniform(7.5, 10.0)
    y_tr = y_vb - r_vb0 - 9.0 - r_tr
    x_tr = x_med - 2.0
    u_car = rng.uniform(0.55, 0.62)
    # the heart's base (atria) stays below the carina
    ch = min(ch, (u_car * H - 12.0 - uL * H) / 1.78)
    zh = uL * H + 0.78 * ch
    hilR = np.array([(u_car - 0.11) * H, y_tr + 8.0, x_med - 0.30 * Lc])
    hilL = np.array([(u_car - 0.14) * H, y_tr + 12.0, x_med + 0.32 * Lc])
    carina = np.array([u_car * H, y_tr, x_tr])
    r_dao = rng.uniform(10.0, 13.0)
    x_dao = x_med + r_vb0 + 0.6 * r_dao
    y_dao = y_vb - 0.55 * r_vb0 - 2
    r_aao = r_dao * rng.uniform(1.1, 1.3)
    u_arch = rng.uniform(0.68, 0.76)
    y_aao = yh - 0.55 * bh - 4
    aorta_pts = np.array(
        [
            [-0.2 * H, y_dao, x_dao],
            [u_arch * H - 20, y_dao, x_dao],
            [u_arch * H + 6, y_dao - 12, x_dao - 8],
            [u_arch * H + 12, 0.5 * (y_dao + y_aao), x_med + 4],
            [u_arch * H + 4, y_aao + 8, x_med - 10],
            [u_arch * H - 22, y_aao, x_med - 8],
            [0.36 * H, y_aao + 2, x_med - 4],
            [0.30 * H, yh - 0.2 * bh, xh - 0.35 * ah],
        ]
    )
    aorta_r = np.array([r_dao, r_dao, r_dao * 1.05, r_aao, r_aao, r_aao, r_aao, r_aao * 0.9])
    pa_bif = np.array([0.53 * H, y_tr + 4.0, x_med + 6])
    pa_pts = np.array(
        [[0.34 * H, yh - 0.7 * bh, xh - 0.15 * ah], [0.45 * H, y_aao - 2, x_med + 18], pa_bif]
    )
    pa_r = np.array([13.0, 13.5, 12.5]) * scale**0.3
    rpa = np.array([pa_bif, [0.50 * H, y_aao + 16, x_med - 14], hilR + [-2.0, -4.0, 0.0]])
    lpa = np.array([pa_bif, [0.54 * H, y_tr + 10, x_med + 20], hilL + [2.0, -4.0, 0.0]])
    svc = np.array(
        [[0.42 * H, y_aao + 3, x_med - r_aao - 12], [1.2 * H, y_aao + 8, x_med - r_aao - 14]]
    )
    bcv = np.array([[u_arch * H + 14, y_aao - 6, x_med - 20], [1.2 * H, y_aao - 2, x_med + 30]])
    eso = np.array(
        [[-0.2 * H, y_vb - r_vb0 - 8, x_med + 4], [1.2 * H, y_vb - r_vb0 - 6, x_med + 3]]
    )
    la = np.array([zh + 0.25 * ch, yh + 0.6 * bh, xh - 0.1 * ah])  # left atrium
    return Layout(
        Pc=Pc, Ac=Ac, Lc=Lc, r_vb0=r_vb0, y_vb=y_vb, y_canal_off=y_canal_off, x_med=x_med,
        ah=ah, bh=bh, ch=ch, heart_rot=heart_rot, xh=xh, yh=yh, zh=zh, uR=uR, uL=uL,
        x_domeR=x_domeR, x_domeL=x_domeL, y_dome=y_dome, r_tr=r_tr, y_tr=y_tr, x_tr=x_tr,
        hilR=hilR, hilL=hilL, carina=carina, aorta_pts=aorta_pts, aorta_r=aorta_r,
        pa_pts=pa_pts, pa_r=pa_r, rpa=rpa, lpa=lpa, svc=svc, bcv=bcv, eso=eso,
        trachea=np.array([carina, [1.2 * H, y_tr, x_tr]]),
        bronR=np.array([carina, 0.5 * (carina + hilR) + [0, 0, -3], hilR]),
        bronL=np.array([carina, 0.5 * (carina + hilL) + [4, 0, 3], hilL]),
        la=la, pvR=hilR + [-0.07 * H, 12.0, 4.0], pvL=hilL + [-0.07 * H, 12.0, -4.0],
    )  # fmt: skip


def vessel_tubes(lay: Layout) -> list[tuple[np.ndarray, object]]:
    """The great vessels as (polyline points, radii): aorta, pulmonary arteries, veins."""
    return [
        (lay.aorta_pts, lay.aorta_r),
        (lay.pa_pts, lay.pa_r),
        (lay.rpa, [lay.pa_r[-1] * 0.8, 10.0, 9.0]),
        (lay.lpa, [lay.pa_r[-1] * 0.8, 9.5, 8.5]),
        (lay.svc, [10.0, 10.0]),
        (lay.bcv, [7.0, 7.0]),
        (np.array([lay.la, lay.pvR]), [8.0, 7.0]),
        (np.array([lay.la, lay.pvL]), [8.0, 7.0]),
    ]


def exclusion_mask(frame: Frame, lay: Layout) -> np.ndarray:
    """Mediastinal structures plus a pleural margin, where the lungs may not be."""
    ras, r_tr = frame.raster, lay.r_tr
    excl = np.zeros(frame.shape, dtype=bool)
    mg = 3.0
    for pts, rr in vessel_tubes(lay):
        ras.polyline(excl, pts, rr, margin=mg, binary=True)
    ras.polyline(excl, lay.eso, [7.0, 7.0], margin=mg, binary=True)
    ras.polyline(excl, lay.trachea, [r_tr, r_tr], margin=mg + 1.5, binary=True)
    bron_r = ([r_tr * 0.8, r_tr * 0.75, r_tr * 0.65], [r_tr * 0.75, r_tr * 0.7, r_tr * 0.6])
    ras.polyline(excl, lay.bronR, bron_r[0], margin=mg + 1.0, binary=True)
    ras.polyline(excl, lay.bronL, bron_r[1], margin=mg + 1.0, binary=True)
    return excl


def paint_heart(window: Window, lay: Layout, sl: Slice, hu: dict[str, float]) -> None:
    """Heart (rotated ellipsoid) with its fat pad and blood-filled chambers."""
    L = LABELS
    Xb, Yb = window.Xb, window.Yb
    sl_hu, sl_lab = sl.hu, sl.lab
    ah, bh, ch, xh, yh = lay.ah, lay.bh, lay.ch, lay.xh, lay.yh
    heart = np.zeros(Xb.shape, dtype=bool)
    heart_ex = np.zeros(Xb.shape, dtype=bool)
    tz = (sl.zmm - lay.zh) / ch
    if abs(tz) < 1.0:
        s = np.sqrt(1 - tz * tz)
        ca, sa = np.cos(lay.heart_rot), np.sin(lay.heart_rot)
        xr = (Xb - xh) * ca + (Yb - yh) * sa
        yr = -(Xb - xh) * sa + (Yb - yh) * ca
        eh = (xr / (ah * s + 1e-3)) ** 2 + (yr / (bh * s + 1e-3)) ** 2
        heart = eh < 1.0
        heart_ex = eh < (1.0 + 6.0 / (min(ah, bh) * s + 1e-3)) ** 2
        fatpad = heart_ex & ~heart & sl.cav
        sl_hu[fatpad] = hu["fat"]
        sl_lab[fatpad] = L["fat"]
        sl_hu[heart] = hu["myocardium"]
        sl_lab[heart] = L["myocardium"]
        ch_ = heart & (eh < 0.55) & (np.abs(xr + 0.15 * ah * s) > 3.0)
        sl_hu[ch_] = hu["blood"]
        sl_lab[ch_] = L["blood"]
    sl.heart_ex = heart_ex


def paint_abdomen(frame: Frame, window: Window, lay: Layout, sl: Slice) -> None:
    """Diaphragm domes: below them the abdomen (liver right, spleen/stomach left)."""
    hu, L, H = frame.hu, LABELS, frame.H
    Xb, Yb, u = window.Xb, window.Yb, sl.u
    Lc, Pc, x_med, y_dome, uR, uL = lay.Lc, lay.Pc, lay.x_med, lay.y_dome, lay.uR, lay.uL
    qR = ((Xb - lay.x_domeR) ** 2 + 1.4 * (Yb - y_dome) ** 2) / (Lc * Lc)
    qL = ((Xb - lay.x_domeL) ** 2 + 1.4 * (Yb - y_dome) ** 2) / (Lc * Lc)
    qS = 1.4 * (Yb - y_dome) ** 2 / (Lc * Lc) + np.maximum(
        np.abs(Xb - x_med) - 0.5 * Lc, 0
    ) ** 2 / (Lc * Lc)
    udome = np.maximum(np.maximum(uR - 0.55 * qR, uL - 0.55 * qL), min(uR, uL) - 0.015 - 0.55 * qS)
    abd = sl.cav & (u < udome) & ~sl.heart_ex
    sl.hu[abd] = hu["liver"]
    sl.lab[abd] = L["abdomen"]
    if u < uL:
        gas = (
            abd
            & (Xb > x_med + 0.25 * Lc)
            & (Yb < y_dome - 0.3 * Pc)
            & (((Xb - lay.x_domeL) ** 2 + (Yb - y_dome + 0.55 * Pc) ** 2) < (0.35 * Lc) ** 2)
            & (u > uL - 0.12)
            & ((udome - u) * H > 10.0)
        )
        sl.hu[gas] = AIR_HU
        sl.lab[gas] = L["air"]
        spl = abd & (Xb > x_med + 0.3 * Lc) & (Yb > y_dome + 0.1 * Pc)
        sl.hu[spl] = hu["liver"] - 10.0
    sl.udome = udome


def paint_vessels(
    frame: Frame,
    lay: Layout,
    truth: np.ndarray,
    labels: np.ndarray,
    lung: np.ndarray,
    body: np.ndarray,
    med: np.ndarray,
) -> None:
    """Great vessels (blood) and the oesophagus (muscle), outside the lungs.

    ``med`` is a zeroed float32 scratch volume of the grid's shape (left dirty).
    """
    hu, L, ras = frame.hu, LABELS, frame.raster
    for pts, rr in vessel_tubes(lay):
        ras.polyline(med, pts, rr, weight_z=False)
    m = (med > 0) & ~lung & body
    truth[m] = truth[m] * (1 - med[m]) + hu["blood"] * med[m]
    labels[m & (med > 0.5)] = L["blood"]
    med[:] = 0
    ras.polyline(med, lay.eso, [7.0, 7.0], weight_z=False)
    m = (med > 0) & ~lung & body
    truth[m] = truth[m] * (1 - med[m]) + hu["muscle"] * med[m]
    labels[m & (med > 0.5)] = L["muscle"]
