"""Torso builder: the patient table, the slice window, body outline with skin, fat, muscle,
breasts and clothing, and the thoracic cavity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybrid.phantom.frame import N_ANGLES, WALL_MM, Frame, Slice, Window
from hybrid.phantom.tissues import AIR_HU, LABELS

__all__ = ["Table", "Clothing", "draw_table", "make_window", "draw_clothing"]
__all__ += ["start_slice", "paint_cavity"]


@dataclass
class Table:
    """The patient table: curved top surface just below the patient's back."""

    y_table: float  # top surface at x = 0 (mm)
    y_top_x: np.ndarray  # top surface per x (mm)


@dataclass
class Clothing:
    """Clothing pattern: which angles are covered, and the phases of the fold's waviness."""

    on: np.ndarray  # (N_ANGLES,) bool
    phases: np.ndarray | None  # (3,)


def draw_table(frame: Frame) -> Table:
    """Draw the table's curvature and height under the patient."""
    rng = frame.rng
    R_tab = rng.uniform(700.0, 1200.0)
    post_max = frame.B0 * 1.02
    y_table = frame.y_c + post_max + rng.uniform(0.5, 3.0)  # mm, top surface at x=0
    y_top_x = y_table - (frame.x.astype(np.float64) ** 2) / (2 * R_tab)
    return Table(y_table=y_table, y_top_x=y_top_x)


def make_window(frame: Frame, table: Table) -> Window:
    """Rasterise the table and cut the window around the body (no random draws)."""
    ny, nx = frame.shape[1:]
    x, y, pix = frame.x, frame.y, frame.pix
    L = LABELS
    Xb = np.broadcast_to(x[None, :], (ny, nx))
    Yb = np.broadcast_to(y[:, None], (ny, nx))
    below_table_top = Yb >= table.y_top_x[None, :]
    # table (constant along z)
    tab_hu = np.full((ny, nx), AIR_HU, dtype=np.float32)
    tab_lab = np.zeros((ny, nx), dtype=np.uint8)
    dyt = Yb - table.y_top_x[None, :]
    tw = min(230.0, 0.5 * frame.fov_x - 2 * pix)
    in_w = np.abs(Xb) < tw
    shell = in_w & (((dyt >= 0) & (dyt < 2.0)) | ((dyt >= 38.0) & (dyt < 40.5)))
    core = in_w & (dyt >= 2.0) & (dyt < 38.0)
    rails = (np.abs(np.abs(Xb) - tw + 3) < 3.0) & (dyt >= 0) & (dyt < 40.5)
    tab_hu[core] = -930.0
    tab_hu[shell | rails] = 300.0
    tab_lab[core | shell | rails] = L["table"]
    # the slices are composed inside a window around the body (plus room for
    # clothing): about half the pixels of the field of view
    A_max, B_max = frame.A0 * 1.2 + 30.0, frame.B0 * 1.15 + 30.0
    cy0 = int(np.clip(np.searchsorted(y, frame.y_c - B_max), 0, ny - 1))
    cy1 = int(np.clip(np.searchsorted(y, table.y_table + 1.0), cy0 + 1, ny))
    cx0 = int(np.clip(np.searchsorted(x, -A_max), 0, nx - 1))
    cx1 = int(np.clip(np.searchsorted(x, A_max), cx0 + 1, nx))
    win = (slice(cy0, cy1), slice(cx0, cx1))
    return Window(
        win=win,
        Xb=Xb[win],
        Yb=Yb[win],
        rho=frame.rho[win],
        ang_idx=frame.ang_idx[win],
        phi=frame.phi[win],
        below_table_top=below_table_top[win],
        tab_hu=tab_hu[win],
        tab_lab=tab_lab[win],
        tab_hu_full=tab_hu,
        tab_lab_full=tab_lab,
    )


def draw_clothing(frame: Frame) -> Clothing:
    """Clothing pattern (per angle, slowly varying with z); draws only if the patient wears it."""
    rng = frame.rng
    cl_on = np.zeros(N_ANGLES, dtype=bool)
    cl_ph = None
    if frame.clothing:
        k = np.arange(N_ANGLES)
        for _ in range(rng.integers(2, 5)):
            c0, w0 = rng.integers(0, N_ANGLES), rng.integers(N_ANGLES // 10, N_ANGLES // 3)
            cl_on |= ((k - c0) % N_ANGLES) < w0
        cl_on &= np.sin(frame.ang_tab) < 0.55  # not between the back and the table
        cl_ph = rng.uniform(0, 2 * np.pi, 3)
    return Clothing(on=cl_on, phases=cl_ph)


def start_slice(frame: Frame, window: Window, clothing: Clothing, iz: int) -> Slice:
    """Slice ``iz`` on the table: body outline, clothing, fat, skin, muscle and breasts."""
    hu, L, ang_tab = frame.hu, LABELS, frame.ang_tab
    ang_idx, below_table_top = window.ang_idx, window.below_table_top
    zmm = float(frame.zc[iz])
    u = float(frame.u_s[iz])
    R_t, _, _ = frame.body_radius(u)
    F_t, M_t = frame.layer_tabs(u)
    bulge = None
    if frame.breast > 0:
        bulge = (
            frame.breast
            * float(np.exp(-(((u - 0.42) / 0.16) ** 2)))
            * (
                np.exp(-(((ang_tab + np.pi / 2 - frame.breast_ang) / 0.36) ** 2))
                + np.exp(-(((ang_tab + np.pi / 2 + frame.breast_ang) / 0.36) ** 2))
            ).astype(np.float32)
        )
        R_t = R_t + bulge
        F_t = F_t + bulge
    Rb = R_t[ang_idx]
    d = Rb - window.rho
    bdy = (d >= 0) & ~below_table_top
    sl_hu = window.tab_hu.copy()
    sl_lab = window.tab_lab.copy()
    # clothing: a thin fold at a wavy distance from the skin
    if frame.clothing:
        cl_ph = clothing.phases
        gap = 3.0 + 9.0 * (
            0.5 + 0.5 * np.sin(3 * ang_tab + cl_ph[0] + 0.01 * zmm) * np.cos(5 * ang_tab + cl_ph[1])
        )
        on = clothing.on[ang_idx] & ~below_table_top
        gg = -d - gap[ang_idx]
        cl = on & (gg >= 0) & (gg < max(1.2, 0.8 * frame.pix))
        sl_hu[cl] = -150.0
        sl_lab[cl] = L["clothing"]
    Ft = F_t[ang_idx]
    Mt = M_t[ang_idx]
    cav_r = Rb - 2.0 - Ft - Mt - WALL_MM  # cavity radius (inner rib surface)
    sl_hu[bdy] = hu["fat"]
    sl_lab[bdy] = L["fat"]
    skin = bdy & (d < 2.0)
    sl_hu[skin] = hu["skin"]
    sl_lab[skin] = L["skin"]
    mus = bdy & (d >= 2.0 + Ft)
    sl_hu[mus] = hu["muscle"]
    sl_lab[mus] = L["muscle"]
    if bulge is not None:
        bp = bulge[ang_idx]
        gl = bdy & (bp > 4.0) & (d > 2.0 + 0.3 * bp) & (d < 2.0 + 0.8 * bp)
        sl_hu[gl] = 0.5 * (hu["fat"] + hu["muscle"])  # fibroglandular tissue mixed with fat
    return Slice(
        iz=iz,
        zmm=zmm,
        u=u,
        hu=sl_hu,
        lab=sl_lab,
        R_t=R_t,
        F_t=F_t,
        M_t=M_t,
        bulge=bulge,
        Rb=Rb,
        d=d,
        bdy=bdy,
        Ft=Ft,
        Mt=Mt,
        cav_r=cav_r,
    )


def paint_cavity(window: Window, sl: Slice, hu: dict[str, float]) -> None:
    """Thoracic cavity (inside the ribs): mediastinal fat by default."""
    sl.cav = sl.bdy & (window.rho < sl.cav_r)
    sl.hu[sl.cav] = hu["mediastinum"]
    sl.lab[sl.cav] = LABELS["fat"]
