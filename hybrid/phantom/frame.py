"""The frame every anatomy builder draws in: grid, spacing, body centre and outline, the RNG.

:func:`make_frame` draws the patient's global parameters (lung height, body size
and shape, options left unset), the tissue HU values and the body centre, in this
order, from the patient's random generator, and lays out the voxel grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybrid.phantom.geometry import Raster, smoothstep
from hybrid.phantom.tissues import draw_hu

__all__ = ["Frame", "make_frame", "N_ANGLES", "WALL_MM"]

#: Angular resolution of the body outline tables (bins over 360 degrees).
N_ANGLES = 720

#: Thickness (mm) of the chest wall between the muscle and the thoracic cavity (the ribs).
WALL_MM = 10.0

#: Number of angular Fourier modes perturbing the body outline.
_N_MODES = 5


@dataclass
class Frame:
    """Grid, spacing, body centre and outline of one patient, and its random generator.

    Lengths are in mm in the patient frame: ``z`` from the lowest point of the
    lung bases, ``y`` and ``x`` from the centre of the field of view.  ``u`` is
    the height in units of the lung height ``H`` (0 lung bases, 1 apices).
    """

    rng: np.random.Generator
    shape: tuple[int, int, int]
    pix: float  # in-plane pixel size
    dz: float  # slice spacing
    zc: np.ndarray  # slice centres (mm)
    u_s: np.ndarray  # slice centres in units of H
    x: np.ndarray  # pixel centres (float32, mm)
    y: np.ndarray
    y_c: float  # body centre (y, mm)
    rho: np.ndarray  # (ny, nx) distance from the body centre
    ang_idx: np.ndarray  # (ny, nx) index into ang_tab
    ang_tab: np.ndarray  # (N_ANGLES,) angles, +pi/2 posterior
    phi: np.ndarray  # (ny, nx) angle from the posterior midline
    raster: Raster  # tubes onto the whole grid
    # patient parameters
    H: float  # lung height, base to apex
    A0: float  # body half-width (lateral)
    B0: float  # body half-depth (AP)
    scale: float  # body size relative to the field of view (<= 1)
    fat0: float  # subcutaneous fat thickness
    mus0: float  # muscle thickness
    n_ant: float  # superellipse exponents of the outline, anterior / posterior
    n_post: float
    modes_amp: np.ndarray
    modes_ph: np.ndarray
    modes_zf: np.ndarray
    h_v: float  # vertebral level height
    contrast: bool
    female: bool
    breast: float  # breast size (mm), 0 for men
    breast_ang: float  # rad from the anterior midline
    clothing: bool
    emphysema: float
    n_nodules: int
    hu: dict[str, float]

    @property
    def fov_x(self) -> float:
        return self.shape[2] * self.pix

    @property
    def fov_y(self) -> float:
        return self.shape[1] * self.pix

    def body_radius(self, u: float) -> tuple[np.ndarray, float, float]:
        """Skin radius per angle (float32, ``N_ANGLES``) at height ``u``, and the semi-axes."""
        ang_tab = self.ang_tab
        sh = smoothstep(0.72, 1.1, u)
        low = smoothstep(0.25, -0.1, u)
        A = self.A0 * (1 + 0.10 * sh + 0.03 * low)
        B = self.B0 * (1 - 0.06 * sh + 0.04 * low)
        c, s = np.cos(ang_tab), np.sin(ang_tab)
        n = np.where(s > 0, self.n_post, self.n_ant)
        r = (np.abs(c / A) ** n + np.abs(s / B) ** n) ** (-1.0 / n)
        pert = np.zeros_like(ang_tab)
        for k in range(2, _N_MODES):
            pert += self.modes_amp[k] * np.cos(
                k * ang_tab + self.modes_ph[k] + 0.8 * self.modes_zf[k] * u
            )
        return (r * (1 + pert)).astype(np.float32), A, B

    def layer_tabs(self, u: float) -> tuple[np.ndarray, np.ndarray]:
        """Subcutaneous fat and muscle thickness per angle (float32) at height ``u``."""
        ang_tab = self.ang_tab
        # subcutaneous fat: thicker laterally-posteriorly and anteriorly at the bottom
        c, s = np.cos(ang_tab), np.sin(ang_tab)
        fat = self.fat0 * (
            1.0 + 0.3 * np.abs(c) * (s > 0) + 0.25 * np.sin(2 * ang_tab + 1.3 + u) ** 2
        )
        # muscle: pectoralis anteriorly at upper levels, paraspinal posteriorly
        pect = (
            10.0
            * smoothstep(0.35, 0.8, u)
            * np.clip(-s, 0, 1) ** 2
            * np.abs(np.sin(2 * ang_tab)) ** 0.5
        )
        paraspinal = 24.0 * np.exp(-(((ang_tab - np.pi / 2) / 0.4) ** 2))
        lat = 4.0 * np.abs(c) * smoothstep(0.5, 1.0, u)  # latissimus / serratus, scapular region
        mus = self.mus0 + pect + paraspinal + lat
        return fat.astype(np.float32), mus.astype(np.float32)


def make_frame(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    *,
    pixel_mm: float | None,
    slice_mm: float | None,
    z_range: tuple[float, float],
    contrast: bool | None,
    n_nodules: int | None,
    emphysema: float | None,
    clothing: bool | None,
) -> Frame:
    """Draw the patient's global parameters and HU values, and lay out the grid."""
    lo_u, hi_u = (float(v) for v in z_range)
    nz, ny, nx = shape
    pix = float(pixel_mm) if pixel_mm is not None else 430.0 / nx
    fov_x, fov_y = nx * pix, ny * pix

    # ---------------- patient parameters (mm) ----------------
    H = rng.uniform(205.0, 265.0)  # lung height, base to apex
    A0 = rng.uniform(135.0, 180.0)  # body half-width (lateral)
    B0 = A0 * rng.uniform(0.62, 0.78)  # body half-depth (AP)
    scale = min(1.0, 0.46 * fov_x / A0, 0.40 * fov_y / B0)  # keep the body inside the FOV
    A0 *= scale
    B0 *= scale
    fat0 = rng.uniform(3.0, 16.0) * (0.6 + 0.4 * scale)
    mus0 = rng.uniform(5.0, 10.0) * (0.6 + 0.4 * scale)
    n_ant = rng.uniform(2.0, 2.4)
    n_post = rng.uniform(2.6, 3.4)
    modes_amp = rng.normal(0, 1, _N_MODES) * np.array([0.0, 0.0, 0.025, 0.015, 0.01])
    modes_ph = rng.uniform(0, 2 * np.pi, _N_MODES)
    modes_zf = rng.normal(0, 1.0, _N_MODES)
    h_v = H / 10.5  # vertebral level height
    if contrast is None:
        contrast = bool(rng.random() < 0.3)
    female = bool(rng.random() < 0.45)
    breast = rng.uniform(12.0, 40.0) * scale if female else 0.0  # mm
    breast_ang = rng.uniform(0.45, 0.7)  # rad from the anterior midline
    if clothing is None:
        clothing = bool(rng.random() < 0.6)
    if emphysema is None:
        emphysema = float(rng.choice([0.0, 0.0, 0.0, rng.uniform(0.2, 1.0)]))
    if n_nodules is None:
        n_nodules = int(rng.choice([0, 1, 1, 2, 3]))
    hu = draw_hu(rng, contrast=contrast)

    # ---------------- grid ----------------
    if slice_mm is None:
        dz = H * (hi_u - lo_u) / nz
        z_start = lo_u * H + dz / 2
    else:
        dz = float(slice_mm)
        z_start = 0.5 * (lo_u + hi_u) * H - dz * (nz - 1) / 2
    zc = z_start + dz * np.arange(nz)  # mm, 0 = lowest lung point
    u_s = zc / H
    x = ((np.arange(nx) - (nx - 1) / 2) * pix).astype(np.float32)
    y = ((np.arange(ny) - (ny - 1) / 2) * pix).astype(np.float32)
    y_c = -0.08 * fov_y + rng.uniform(-8, 8)  # body centre (mm); table below
    X = x[None, :]
    Yr = (y - y_c)[:, None]
    rho = np.sqrt(X * X + Yr * Yr).astype(np.float32)
    theta = np.arctan2(Yr, X)  # +pi/2 posterior
    ang_idx = (((theta + np.pi) / (2 * np.pi)) * N_ANGLES).astype(np.int32) % N_ANGLES
    ang_tab = -np.pi + (np.arange(N_ANGLES) + 0.5) * 2 * np.pi / N_ANGLES
    phi = np.arccos(np.clip(Yr / np.maximum(rho, 1e-3), -1, 1)).astype(
        np.float32
    )  # 0 posterior midline
    origin = (float(zc[0]), float(y[0]), float(x[0]))
    return Frame(
        rng=rng,
        shape=shape,
        pix=pix,
        dz=dz,
        zc=zc,
        u_s=u_s,
        x=x,
        y=y,
        y_c=y_c,
        rho=rho,
        ang_idx=ang_idx,
        ang_tab=ang_tab,
        phi=phi,
        raster=Raster(shape, (dz, pix, pix), origin),
        H=H,
        A0=A0,
        B0=B0,
        scale=scale,
        fat0=fat0,
        mus0=mus0,
        n_ant=n_ant,
        n_post=n_post,
        modes_amp=modes_amp,
        modes_ph=modes_ph,
        modes_zf=modes_zf,
        h_v=h_v,
        contrast=contrast,
        female=female,
        breast=breast,
        breast_ang=breast_ang,
        clothing=clothing,
        emphysema=emphysema,
        n_nodules=n_nodules,
        hu=hu,
    )


@dataclass
class Window:
    """The in-plane window around the body (plus room for clothing) where slices are composed.

    About half the pixels of the field of view.  ``Xb``, ``Yb`` (mm), ``rho``,
    ``ang_idx`` and ``phi`` are the frame's coordinates inside it;
    ``below_table_top`` marks the table and below; ``tab_hu`` and ``tab_lab``
    are the table's HU and labels, which every slice starts from (``*_full``: on the
    whole grid).
    """

    win: tuple[slice, slice]
    Xb: np.ndarray
    Yb: np.ndarray
    rho: np.ndarray
    ang_idx: np.ndarray
    phi: np.ndarray
    below_table_top: np.ndarray
    tab_hu: np.ndarray
    tab_lab: np.ndarray
    tab_hu_full: np.ndarray  # the same on the whole grid
    tab_lab_full: np.ndarray


@dataclass
class Slice:
    """One slice being composed inside the :class:`Window`: HU and labels, and shared geometry.

    The torso builder fills the outline fields; the later builders read them and
    add what others need after them (cavity, heart, vertebra, diaphragm).
    """

    iz: int
    zmm: float  # slice centre (mm)
    u: float  # slice centre in units of the lung height
    hu: np.ndarray  # (window) HU, float32
    lab: np.ndarray  # (window) labels, uint8
    R_t: np.ndarray  # skin radius per angle
    F_t: np.ndarray  # fat thickness per angle
    M_t: np.ndarray  # muscle thickness per angle
    bulge: np.ndarray | None  # breast bulge per angle (None for men)
    Rb: np.ndarray  # skin radius per pixel
    d: np.ndarray  # depth below the skin per pixel
    bdy: np.ndarray  # inside the body
    Ft: np.ndarray  # fat thickness per pixel
    Mt: np.ndarray  # muscle thickness per pixel
    cav_r: np.ndarray  # thoracic cavity radius (inner rib surface) per pixel
    cav: np.ndarray | None = None  # thoracic cavity (inside the ribs)
    heart_ex: np.ndarray | None = None  # heart with its fat pad
    r_vb: float = 0.0  # vertebral body radius
    yv: float = 0.0  # vertebral body centre (y)
    dvb2: np.ndarray | None = None  # squared normalised distance from the vertebral body centre
    udome: np.ndarray | None = None  # diaphragm height (units of H) per pixel
