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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from hybrid.volume import Provenance, Volume

__all__ = ["Phantom", "make_patient", "scan_phantom", "LABELS", "HU_RANGES"]

#: Tissue label codes used in :attr:`Phantom.labels`.
LABELS: dict[str, int] = {
    "air": 0,
    "table": 1,
    "clothing": 2,
    "skin": 3,
    "fat": 4,
    "muscle": 5,
    "cortical_bone": 6,
    "trabecular_bone": 7,
    "cartilage": 8,
    "lung": 9,
    "vessel": 10,
    "airway_lumen": 11,
    "airway_wall": 12,
    "blood": 13,
    "myocardium": 14,
    "abdomen": 15,
    "nodule": 16,
    "emphysema": 17,
    "disc": 18,
    "spinal_canal": 19,
}

#: Published HU ranges (low, high) of the tissue classes; each patient draws
#: its nominal values inside these.  Texture adds a few HU around them.
HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0),
    "fat": (-120.0, -80.0),
    "muscle": (40.0, 60.0),
    "skin": (20.0, 50.0),
    "blood": (35.0, 45.0),
    "blood_contrast": (200.0, 350.0),
    "myocardium": (40.0, 55.0),
    "cortical_bone": (700.0, 1200.0),
    "trabecular_bone": (200.0, 300.0),
    "cartilage": (80.0, 150.0),
    "lung": (-900.0, -800.0),
    "emphysema": (-990.0, -950.0),
    "liver": (50.0, 65.0),
    "disc": (70.0, 100.0),
    "spinal_canal": (10.0, 30.0),
    "solid_nodule": (20.0, 60.0),
    "ggo_nodule": (-700.0, -400.0),
}

_AIR = -1000.0


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic chest ("patient").

    Attributes
    ----------
    truth : ndarray of float32, shape (Z, Y, X)
        Noise-free image in HU.
    lung_mask : ndarray of bool, shape (Z, Y, X)
        Both lungs as a radiologist would outline them: parenchyma including
        the vessels, small airways and nodules inside, excluding the trachea,
        the main bronchi and the mediastinum.
    body_mask : ndarray of bool, shape (Z, Y, X)
        The patient (skin and everything inside), without table or clothing.
    labels : ndarray of uint8, shape (Z, Y, X)
        Dominant tissue class per voxel, codes in :data:`LABELS`.
    spacing : tuple of 3 float
        Voxel spacing (z, y, x) in mm.
    seed : int
        The seed the patient was drawn from.
    hu : dict of str to float
        The nominal HU value drawn for each tissue class.
    nodules : tuple of dict
        One dict per nodule: ``center_mm`` (z, y, x in mm from the volume's
        first voxel), ``diameter_mm``, ``kind`` ("solid" or "ggo").
    params : dict
        The anatomical parameters drawn (sizes in mm), for reporting.
    """

    truth: np.ndarray
    lung_mask: np.ndarray
    body_mask: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    seed: int
    hu: dict[str, float] = field(default_factory=dict)
    nodules: tuple[dict[str, Any], ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.truth.shape  # type: ignore[return-value]

    def to_volume(self) -> Volume:
        """The noise-free truth as a :class:`hybrid.volume.Volume`."""
        return Volume(self.truth, self.spacing, _provenance(self, "truth"))


def _provenance(ph: Phantom, what: str) -> Provenance:
    return Provenance(
        source=None,
        modality="CT",
        description=f"hybrid.phantom seed={ph.seed} {what}",
        derived_from=(f"hybrid.phantom.make_patient(seed={ph.seed})",),
    )


# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------


def _smoothstep(a: float, b: float, x):
    t = np.clip((np.asarray(x, dtype=np.float64) - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class _Raster:
    """Rasterises tapered capsules (tubes) onto the voxel grid with partial volume."""

    def __init__(self, shape, spacing, origin_mm):
        self.shape = shape
        self.dz, self.dy, self.dx = spacing
        self.z0, self.y0, self.x0 = origin_mm  # mm coordinate of voxel (0, 0, 0)

    def capsule(self, target, p0, p1, r0, r1, *, margin=0.0, binary=False, weight_z=True):
        """Max-accumulate the occupancy of the capsule p0-p1 into ``target`` (float32 or bool)."""
        p0 = np.asarray(p0, dtype=np.float64)
        p1 = np.asarray(p1, dtype=np.float64)
        r0 = float(r0) + margin
        r1 = float(r1) + margin
        rmax = max(r0, r1)
        lo = np.minimum(p0, p1) - rmax
        hi = np.maximum(p0, p1) + rmax
        pad = np.array([self.dz / 2, self.dx, self.dx])
        ilo = np.floor(
            (lo - pad - [self.z0, self.y0, self.x0]) / [self.dz, self.dy, self.dx]
        ).astype(int)
        ihi = (
            np.ceil((hi + pad - [self.z0, self.y0, self.x0]) / [self.dz, self.dy, self.dx]).astype(
                int
            )
            + 1
        )
        ilo = np.maximum(ilo, 0)
        ihi = np.minimum(ihi, self.shape)
        if np.any(ihi <= ilo):
            return
        zz = (self.z0 + self.dz * np.arange(ilo[0], ihi[0]))[:, None, None]
        yy = (self.y0 + self.dy * np.arange(ilo[1], ihi[1]))[None, :, None]
        xx = (self.x0 + self.dx * np.arange(ilo[2], ihi[2]))[None, None, :]
        v = p1 - p0
        L2 = float(v @ v)
        if L2 > 1e-12:
            t = ((zz - p0[0]) * v[0] + (yy - p0[1]) * v[1] + (xx - p0[2]) * v[2]) / L2
            t = np.clip(t, 0.0, 1.0)
        else:
            t = np.zeros((1, 1, 1))
        cz = zz - (p0[0] + t * v[0])
        cy = yy - (p0[1] + t * v[1])
        cx = xx - (p0[2] + t * v[2])
        cz = np.maximum(np.abs(cz) - self.dz / 2, 0.0)  # slab: anywhere in the slice's thickness
        d = np.sqrt(cz * cz + cy * cy + cx * cx)
        r = r0 + t * (r1 - r0)
        sl = (slice(ilo[0], ihi[0]), slice(ilo[1], ihi[1]), slice(ilo[2], ihi[2]))
        if binary:
            target[sl] |= d <= r
            return
        occ = np.clip((r - d) / self.dx + 0.5, 0.0, 1.0)
        if weight_z:
            # Thin tubes lying in the slice plane fill only part of the slab.
            uz = abs(v[0]) / np.sqrt(L2) if L2 > 1e-12 else 1.0
            sin_a = np.sqrt(max(1.0 - uz * uz, 1e-6))
            occ = occ * np.minimum(1.0, 2.0 * r / (self.dz * sin_a))
        np.maximum(target[sl], occ.astype(np.float32), out=target[sl])

    def polyline(self, target, pts, radii, **kw):
        for i in range(len(pts) - 1):
            self.capsule(target, pts[i], pts[i + 1], radii[i], radii[i + 1], **kw)


def _grow_tree(rng, root, pts, r_root, *, first_frac=0.35, frac=0.5, r_min=0.0):
    """Volume-filling branching tree (Tawhai/Kitaoka style).

    Each branch supplies a set of target points; it grows a fraction of the way
    towards their centroid, then splits them by the plane through the centroid
    normal to their principal axis.  Radii follow Murray's law with flow
    proportional to the number of points supplied.

    Returns an array of segments ``(z0, y0, x0, z1, y1, x1, r, generation)``.
    """
    segs: list[tuple] = []
    stack = [(np.asarray(root, dtype=np.float64), pts, r_root, 0)]
    n_total = len(pts)
    while stack:
        p, s, r, gen = stack.pop()
        n = len(s)
        if n == 0:
            continue
        if n == 1 or r < r_min:
            end = s.mean(axis=0)
            segs.append((*p, *end, r, gen))
            continue
        c = s.mean(axis=0)
        f = first_frac if n == n_total else frac
        end = p + f * (c - p)
        segs.append((*p, *end, r, gen))
        q = s - c
        cov = q.T @ q
        w, vecs = np.linalg.eigh(cov)
        axis = vecs[:, -1]
        proj = q @ axis
        # jitter the split a little so that branching is asymmetric and varied
        thr = rng.normal(0.0, 0.15) * np.sqrt(max(w[-1] / n, 1e-9))
        a = proj < thr
        if a.all() or not a.any():
            a = proj < np.median(proj)
            if a.all() or not a.any():
                segs.append((*end, *c, r, gen + 1))
                continue
        for sub in (s[a], s[~a]):
            rc = r * (len(sub) / n) ** (1.0 / 3.0)
            stack.append((end, sub, rc, gen + 1))
    return np.array(segs, dtype=np.float64).reshape(-1, 8)


# ----------------------------------------------------------------------------
# the generator
# ----------------------------------------------------------------------------


def make_patient(
    seed: int,
    *,
    shape: tuple[int, int, int] = (32, 256, 256),
    pixel_mm: float | None = None,
    slice_mm: float | None = None,
    z_range: tuple[float, float] = (-0.08, 1.04),
    contrast: bool | None = None,
    n_nodules: int | None = None,
    emphysema: float | None = None,
    clothing: bool | None = None,
) -> Phantom:
    """Draw one synthetic chest CT "patient" from a seed.

    Parameters
    ----------
    seed : int
        Patient seed; the same seed and options always give the same phantom.
    shape : tuple of 3 int, keyword-only
        ``(n_slices, ny, nx)``; default ``(32, 256, 256)``.  ``ny`` and ``nx``
        of 64 or more.
    pixel_mm : float, optional
        In-plane pixel size in mm.  Default: a 430 mm field of view
        (``430 / nx``, i.e. 0.84 mm at 512 pixels, as in clinical chest CT).
    slice_mm : float, optional
        Slice spacing (= thickness) in mm.  Default: the anatomical span
        ``z_range`` of this patient's chest divided by ``n_slices``.
    z_range : tuple of 2 float
        Anatomical extent covered, in units of the patient's lung height:
        0 is the lowest point of the lung bases (posterior costophrenic
        recess), 1 the lung apices.  Default ``(-0.08, 1.04)``: upper abdomen
        to the thoracic inlet.  With ``slice_mm`` given, only the centre of
        this range is used (the stack is centred on it).
    contrast : bool, optional
        Intravenous contrast (enhanced blood).  Default: drawn from the seed
        (30 % of patients).
    n_nodules : int, optional
        Number of lung nodules (solid or ground-glass).  Default: drawn (0-3).
    emphysema : float, optional
        Emphysema severity in [0, 1] (0 none).  Default: drawn (most patients 0).
    clothing : bool, optional
        Draw thin clothing folds around the body.  Default: drawn (60 %).

    Returns
    -------
    Phantom
        Truth in HU (float32), masks, labels, spacing (mm) and parameters.

    Examples
    --------
    >>> ph = make_patient(3, shape=(8, 128, 128))
    >>> ph.truth.shape, ph.truth.dtype
    ((8, 128, 128), dtype('float32'))
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[0] < 1 or shape[1] < 64 or shape[2] < 64:
        raise ValueError(
            f"Expected shape (n_slices >= 1, ny >= 64, nx >= 64); received {shape!r}. "
            "Use e.g. shape=(32, 256, 256)."
        )
    if pixel_mm is not None and not (0.1 <= float(pixel_mm) <= 5.0):
        raise ValueError(
            f"Expected pixel_mm between 0.1 and 5 mm; received {pixel_mm!r}. "
            "Leave it unset for a 430 mm field of view."
        )
    if slice_mm is not None and not (0.1 <= float(slice_mm) <= 20.0):
        raise ValueError(f"Expected slice_mm between 0.1 and 20 mm; received {slice_mm!r}.")
    if emphysema is not None and not (0.0 <= float(emphysema) <= 1.0):
        raise ValueError(f"Expected emphysema severity in [0, 1]; received {emphysema!r}.")
    if n_nodules is not None and int(n_nodules) < 0:
        raise ValueError(f"Expected n_nodules >= 0; received {n_nodules!r}.")
    lo_u, hi_u = (float(v) for v in z_range)
    if not hi_u > lo_u:
        raise ValueError(f"Expected z_range (low, high) with high > low; received {z_range!r}.")

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7C7]))
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
    wall = 10.0
    n_ant = rng.uniform(2.0, 2.4)
    n_post = rng.uniform(2.6, 3.4)
    n_modes = 5
    modes_amp = rng.normal(0, 1, n_modes) * np.array([0.0, 0.0, 0.025, 0.015, 0.01])
    modes_ph = rng.uniform(0, 2 * np.pi, n_modes)
    modes_zf = rng.normal(0, 1.0, n_modes)
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

    hu = {
        "fat": rng.uniform(-110.0, -90.0),
        "muscle": rng.uniform(45.0, 58.0),
        "skin": rng.uniform(25.0, 45.0),
        "blood": rng.uniform(200.0, 320.0) if contrast else rng.uniform(36.0, 44.0),
        "myocardium": rng.uniform(90.0, 130.0) if contrast else rng.uniform(42.0, 52.0),
        "cortical_bone": rng.uniform(850.0, 1150.0),
        "trabecular_bone": rng.uniform(210.0, 290.0),
        "cartilage": rng.uniform(90.0, 140.0),
        "lung": rng.uniform(-880.0, -830.0),
        "emphysema": rng.uniform(-985.0, -960.0),
        "liver": rng.uniform(52.0, 62.0) + (45.0 if contrast else 0.0),
        "disc": rng.uniform(75.0, 95.0),
        "spinal_canal": rng.uniform(12.0, 28.0),
        "airway_wall": rng.uniform(0.0, 40.0),
        "air": _AIR,
    }
    hu["vessel"] = hu["blood"]
    hu["mediastinum"] = hu["fat"] + 20.0

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
    n_ang = 720
    ang_idx = (((theta + np.pi) / (2 * np.pi)) * n_ang).astype(np.int32) % n_ang
    ang_tab = -np.pi + (np.arange(n_ang) + 0.5) * 2 * np.pi / n_ang
    phi = np.arccos(np.clip(Yr / np.maximum(rho, 1e-3), -1, 1)).astype(
        np.float32
    )  # 0 posterior midline

    # table: curved top surface just below the patient's back
    R_tab = rng.uniform(700.0, 1200.0)
    post_max = B0 * 1.02
    y_table = y_c + post_max + rng.uniform(0.5, 3.0)  # mm, top surface at x=0
    y_top_x = y_table - (x.astype(np.float64) ** 2) / (2 * R_tab)

    def body_radius(u: float) -> np.ndarray:
        sh = _smoothstep(0.72, 1.1, u)
        low = _smoothstep(0.25, -0.1, u)
        A = A0 * (1 + 0.10 * sh + 0.03 * low)
        B = B0 * (1 - 0.06 * sh + 0.04 * low)
        c, s = np.cos(ang_tab), np.sin(ang_tab)
        n = np.where(s > 0, n_post, n_ant)
        r = (np.abs(c / A) ** n + np.abs(s / B) ** n) ** (-1.0 / n)
        pert = np.zeros_like(ang_tab)
        for k in range(2, n_modes):
            pert += modes_amp[k] * np.cos(k * ang_tab + modes_ph[k] + 0.8 * modes_zf[k] * u)
        return (r * (1 + pert)).astype(np.float32), A, B

    def layer_tabs(u: float):
        # subcutaneous fat: thicker laterally-posteriorly and anteriorly at the bottom
        c, s = np.cos(ang_tab), np.sin(ang_tab)
        fat = fat0 * (1.0 + 0.3 * np.abs(c) * (s > 0) + 0.25 * np.sin(2 * ang_tab + 1.3 + u) ** 2)
        # muscle: pectoralis anteriorly at upper levels, paraspinal posteriorly
        pect = (
            10.0
            * _smoothstep(0.35, 0.8, u)
            * np.clip(-s, 0, 1) ** 2
            * np.abs(np.sin(2 * ang_tab)) ** 0.5
        )
        paraspinal = 24.0 * np.exp(-(((ang_tab - np.pi / 2) / 0.4) ** 2))
        lat = 4.0 * np.abs(c) * _smoothstep(0.5, 1.0, u)  # latissimus / serratus, scapular region
        mus = mus0 + pect + paraspinal + lat
        return fat.astype(np.float32), mus.astype(np.float32)

    # --- mediastinal anatomy (mm, patient frame) ---
    # cavity depth posteriorly / anteriorly at mid-chest (approximate, for placing organs)
    rb_mid, _, _ = body_radius(0.5)
    f_mid, m_mid = layer_tabs(0.5)
    cav_mid = rb_mid - 2 - f_mid - m_mid - wall
    Pc = float(cav_mid[int((np.pi / 2 + np.pi) / (2 * np.pi) * n_ang)])  # posterior
    Ac = float(cav_mid[int((-np.pi / 2 + np.pi) / (2 * np.pi) * n_ang)])  # anterior
    Lc = float(cav_mid[n_ang // 2])  # lateral (patient left)
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
    zh = uL * H + 0.78 * ch
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
    trachea = np.array([carina, [1.2 * H, y_tr, x_tr]])
    bronR = np.array([carina, 0.5 * (carina + hilR) + [0, 0, -3], hilR])
    bronL = np.array([carina, 0.5 * (carina + hilL) + [4, 0, 3], hilL])
    la = np.array([zh + 0.25 * ch, yh + 0.6 * bh, xh - 0.1 * ah])  # left atrium
    pvR = hilR + [-0.07 * H, 12.0, 4.0]
    pvL = hilL + [-0.07 * H, 12.0, -4.0]

    origin = (float(zc[0]), float(y[0]), float(x[0]))
    ras = _Raster(shape, (dz, pix, pix), origin)

    # exclusion (mediastinal structures + pleural margin) for the lungs
    excl = np.zeros(shape, dtype=bool)
    mg = 3.0
    ras.polyline(excl, aorta_pts, aorta_r, margin=mg, binary=True)
    ras.polyline(excl, pa_pts, pa_r, margin=mg, binary=True)
    ras.polyline(excl, rpa, [pa_r[-1] * 0.8, 10.0, 9.0], margin=mg, binary=True)
    ras.polyline(excl, lpa, [pa_r[-1] * 0.8, 9.5, 8.5], margin=mg, binary=True)
    ras.polyline(excl, svc, [10.0, 10.0], margin=mg, binary=True)
    ras.polyline(excl, bcv, [7.0, 7.0], margin=mg, binary=True)
    ras.polyline(excl, eso, [7.0, 7.0], margin=mg, binary=True)
    ras.polyline(excl, trachea, [r_tr, r_tr], margin=mg + 1.5, binary=True)
    ras.polyline(excl, bronR, [r_tr * 0.8, r_tr * 0.75, r_tr * 0.65], margin=mg + 1.0, binary=True)
    ras.polyline(excl, bronL, [r_tr * 0.75, r_tr * 0.7, r_tr * 0.6], margin=mg + 1.0, binary=True)
    ras.polyline(excl, np.array([la, pvR]), [8.0, 7.0], margin=mg, binary=True)
    ras.polyline(excl, np.array([la, pvL]), [8.0, 7.0], margin=mg, binary=True)

    truth = np.empty(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    lung = np.zeros(shape, dtype=bool)
    body = np.zeros(shape, dtype=bool)
    L = LABELS

    # static per-slice arrays
    Xb = np.broadcast_to(X, (ny, nx))
    Yb = np.broadcast_to(y[:, None], (ny, nx))
    below_table_top = Yb >= y_top_x[None, :]
    # table (constant along z)
    tab_hu = np.full((ny, nx), _AIR, dtype=np.float32)
    tab_lab = np.zeros((ny, nx), dtype=np.uint8)
    dyt = Yb - y_top_x[None, :]
    tw = min(230.0, 0.5 * fov_x - 2 * pix)
    in_w = np.abs(Xb) < tw
    shell = in_w & (((dyt >= 0) & (dyt < 2.0)) | ((dyt >= 38.0) & (dyt < 40.5)))
    core = in_w & (dyt >= 2.0) & (dyt < 38.0)
    rails = (np.abs(np.abs(Xb) - tw + 3) < 3.0) & (dyt >= 0) & (dyt < 40.5)
    tab_hu[core] = -930.0
    tab_hu[shell | rails] = 300.0
    tab_lab[core | shell | rails] = L["table"]
    # the slices are composed inside a window around the body (plus room for
    # clothing): about half the pixels of the field of view
    A_max, B_max = A0 * 1.2 + 30.0, B0 * 1.15 + 30.0
    cy0 = int(np.clip(np.searchsorted(y, y_c - B_max), 0, ny - 1))
    cy1 = int(np.clip(np.searchsorted(y, y_table + 1.0), cy0 + 1, ny))
    cx0 = int(np.clip(np.searchsorted(x, -A_max), 0, nx - 1))
    cx1 = int(np.clip(np.searchsorted(x, A_max), cx0 + 1, nx))
    win = (slice(cy0, cy1), slice(cx0, cx1))
    Xb, Yb, rho, ang_idx, phi = Xb[win], Yb[win], rho[win], ang_idx[win], phi[win]
    below_table_top = below_table_top[win]
    tab_hu_w, tab_lab_w = tab_hu[win], tab_lab[win]
    # clothing pattern (per angle, slowly varying with z)
    cl_on = np.zeros(n_ang, dtype=bool)
    if clothing:
        k = np.arange(n_ang)
        for _ in range(rng.integers(2, 5)):
            c0, w0 = rng.integers(0, n_ang), rng.integers(n_ang // 10, n_ang // 3)
            cl_on |= ((k - c0) % n_ang) < w0
        cl_on &= np.sin(ang_tab) < 0.55  # not between the back and the table
        cl_ph = rng.uniform(0, 2 * np.pi, 3)

    rib_top = H + 0.35 * h_v  # rib 1 posterior level (mm)
    ribs_end = (
        np.array([0.80, 0.86, 0.86, 0.86, 0.86, 0.86, 0.86, 0.80, 0.76, 0.70, 0.55, 0.40]) * np.pi
    )
    drop = rng.uniform(3.0, 3.8) * h_v

    for iz in range(nz):
        zmm = float(zc[iz])
        u = float(u_s[iz])
        R_t, A_u, B_u = body_radius(u)
        F_t, M_t = layer_tabs(u)
        if breast > 0:
            bulge = (
                breast
                * float(np.exp(-(((u - 0.42) / 0.16) ** 2)))
                * (
                    np.exp(-(((ang_tab + np.pi / 2 - breast_ang) / 0.36) ** 2))
                    + np.exp(-(((ang_tab + np.pi / 2 + breast_ang) / 0.36) ** 2))
                ).astype(np.float32)
            )
            R_t = R_t + bulge
            F_t = F_t + bulge
        Rb = R_t[ang_idx]
        d = Rb - rho
        bdy = (d >= 0) & ~below_table_top
        sl_hu = tab_hu_w.copy()
        sl_lab = tab_lab_w.copy()
        # clothing: a thin fold at a wavy distance from the skin
        if clothing:
            gap = 3.0 + 9.0 * (
                0.5
                + 0.5 * np.sin(3 * ang_tab + cl_ph[0] + 0.01 * zmm) * np.cos(5 * ang_tab + cl_ph[1])
            )
            on = cl_on[ang_idx] & ~below_table_top
            gg = -d - gap[ang_idx]
            cl = on & (gg >= 0) & (gg < max(1.2, 0.8 * pix))
            sl_hu[cl] = -150.0
            sl_lab[cl] = L["clothing"]
        Ft = F_t[ang_idx]
        Mt = M_t[ang_idx]
        cav_r = Rb - 2.0 - Ft - Mt - wall  # cavity radius (inner rib surface)
        sl_hu[bdy] = hu["fat"]
        sl_lab[bdy] = L["fat"]
        skin = bdy & (d < 2.0)
        sl_hu[skin] = hu["skin"]
        sl_lab[skin] = L["skin"]
        mus = bdy & (d >= 2.0 + Ft)
        sl_hu[mus] = hu["muscle"]
        sl_lab[mus] = L["muscle"]
        if breast > 0:
            bp = bulge[ang_idx]
            gl = bdy & (bp > 4.0) & (d > 2.0 + 0.3 * bp) & (d < 2.0 + 0.8 * bp)
            sl_hu[gl] = 0.5 * (hu["fat"] + hu["muscle"])  # fibroglandular tissue mixed with fat
        # scapulae: thin plates behind the upper posterolateral ribs
        if 0.5 < u < 1.06:
            ph_max = 0.6 + 0.6 * float(_smoothstep(0.5, 0.72, u))
            rr = rho - (Rb - 2.0 - Ft - Mt)
            sc = bdy & (phi > 0.62) & (phi < ph_max) & (rr > 2.0) & (rr < 6.0)
            sl_hu[sc] = 0.75 * hu["cortical_bone"]
            sl_lab[sc] = L["cortical_bone"]
        # thoracic cavity (inside the ribs): mediastinal fat by default
        cav = bdy & (rho < cav_r)
        sl_hu[cav] = hu["mediastinum"]
        sl_lab[cav] = L["fat"]
        # ribs: rib k's height along the wall drops anteriorly
        band = bdy & (rho >= cav_r - 1.0) & (rho < cav_r + wall)
        bi = np.nonzero(band)
        if bi[0].size:
            ph = phi[bi]
            kf = (rib_top - drop * (ph / np.pi) ** 1.15 - zmm) / h_v + 1.0
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
                sl_hu[idx] = hu[name]
                sl_lab[idx] = L[name]
        # sternum
        if 0.22 < u < 0.92:
            w_st = 12.0 + 10.0 * _smoothstep(0.7, 0.85, u)
            ia = n_ang // 4  # anterior midline
            r_ant = R_t[ia] - 2.0 - F_t[ia] - M_t[ia] - wall
            yst = y_c - r_ant - 5.0
            es = ((Xb - x_med) / w_st) ** 2 + ((Yb - yst) / 5.5) ** 2
            st = es < 1.0
            sl_hu[st] = hu["trabecular_bone"]
            sl_lab[st] = L["trabecular_bone"]
            stc = st & (es > 0.55)
            sl_hu[stc] = hu["cortical_bone"]
            sl_lab[stc] = L["cortical_bone"]
        # spine: vertebral body or disc, canal, posterior elements
        r_vb = r_vb0 * (1.0 + 0.25 * (1.0 - u))
        kv = (rib_top - zmm) / h_v
        dzv = (kv - np.rint(kv)) * h_v  # distance from the nearest vertebral centre (mm)
        yv = y_vb + (r_vb0 - r_vb) * 0.5
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
        ycan = yv + y_canal_off
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
        # heart
        heart = np.zeros(Xb.shape, dtype=bool)
        heart_ex = np.zeros(Xb.shape, dtype=bool)
        tz = (zmm - zh) / ch
        if abs(tz) < 1.0:
            s = np.sqrt(1 - tz * tz)
            ca, sa = np.cos(heart_rot), np.sin(heart_rot)
            xr = (Xb - xh) * ca + (Yb - yh) * sa
            yr = -(Xb - xh) * sa + (Yb - yh) * ca
            eh = (xr / (ah * s + 1e-3)) ** 2 + (yr / (bh * s + 1e-3)) ** 2
            heart = eh < 1.0
            heart_ex = eh < (1.0 + 6.0 / (min(ah, bh) * s + 1e-3)) ** 2
            fatpad = heart_ex & ~heart & cav
            sl_hu[fatpad] = hu["fat"]
            sl_lab[fatpad] = L["fat"]
            sl_hu[heart] = hu["myocardium"]
            sl_lab[heart] = L["myocardium"]
            ch_ = heart & (eh < 0.55) & (np.abs(xr + 0.15 * ah * s) > 3.0)
            sl_hu[ch_] = hu["blood"]
            sl_lab[ch_] = L["blood"]
        # diaphragm domes: below them the abdomen (liver right, spleen/stomach left)
        qR = ((Xb - x_domeR) ** 2 + 1.4 * (Yb - y_dome) ** 2) / (Lc * Lc)
        qL = ((Xb - x_domeL) ** 2 + 1.4 * (Yb - y_dome) ** 2) / (Lc * Lc)
        qS = 1.4 * (Yb - y_dome) ** 2 / (Lc * Lc) + np.maximum(
            np.abs(Xb - x_med) - 0.5 * Lc, 0
        ) ** 2 / (Lc * Lc)
        udome = np.maximum(
            np.maximum(uR - 0.55 * qR, uL - 0.55 * qL), min(uR, uL) - 0.015 - 0.55 * qS
        )
        abd = cav & (u < udome) & ~heart_ex
        sl_hu[abd] = hu["liver"]
        sl_lab[abd] = L["abdomen"]
        if u < uL:
            gas = (
                abd
                & (Xb > x_med + 0.25 * Lc)
                & (Yb < y_dome - 0.3 * Pc)
                & (((Xb - x_domeL) ** 2 + (Yb - y_dome + 0.55 * Pc) ** 2) < (0.35 * Lc) ** 2)
                & (u > uL - 0.12)
                & ((udome - u) * H > 10.0)
            )
            sl_hu[gas] = _AIR
            sl_lab[gas] = L["air"]
            spl = abd & (Xb > x_med + 0.3 * Lc) & (Yb > y_dome + 0.1 * Pc)
            sl_hu[spl] = hu["liver"] - 10.0
        # lungs
        in_lung = cav & (rho < cav_r - 1.0) & (u >= udome) & ~heart_ex & ~excl[iz][win]
        in_lung &= (
            np.abs(Xb - x_med) > 9.0 + 4.0 * _smoothstep(0.55, 0.3, u) * 0
        )  # mediastinal band
        in_lung &= dvb2 > ((r_vb + 4.0) / r_vb) ** 2
        in_lung &= ~((np.abs(Xb - x_med) < 0.6 * r_vb) & (Yb > yv))
        if u > 0.66:  # apices
            # each apex: a dome narrowing upwards, centred posterolaterally; its
            # lateral side still follows the ribs
            ra = 0.75 * Lc * np.sqrt(max(0.0, 1.0 - ((u - 0.66) / (1.0 - 0.66)) ** 2))
            yap = y_c + 0.3 * Pc
            apR = ((Xb - (x_med - 0.62 * Lc)) / 1.0) ** 2 + ((Yb - yap) / 0.8) ** 2 < ra * ra
            apL = ((Xb - (x_med + 0.62 * Lc)) / 1.0) ** 2 + ((Yb - yap) / 0.8) ** 2 < ra * ra
            in_lung &= apR | apL
        if u > 1.0:
            in_lung[:] = False
        sl_hu[in_lung] = hu["lung"]
        sl_lab[in_lung] = L["lung"]
        truth[iz] = tab_hu
        labels[iz] = tab_lab
        truth[iz][win] = sl_hu
        labels[iz][win] = sl_lab
        lung[iz][win] = in_lung
        body[iz][win] = bdy

    # mediastinal tubes (drawn after the slices, outside the lungs)
    med = np.zeros(shape, dtype=np.float32)
    for pts, rr in (
        (aorta_pts, aorta_r),
        (pa_pts, pa_r),
        (rpa, [pa_r[-1] * 0.8, 10.0, 9.0]),
        (lpa, [pa_r[-1] * 0.8, 9.5, 8.5]),
        (svc, [10.0, 10.0]),
        (bcv, [7.0, 7.0]),
        (np.array([la, pvR]), [8.0, 7.0]),
        (np.array([la, pvL]), [8.0, 7.0]),
    ):
        ras.polyline(med, pts, rr, weight_z=False)
    m = (med > 0) & ~lung & body
    truth[m] = truth[m] * (1 - med[m]) + hu["blood"] * med[m]
    labels[m & (med > 0.5)] = L["blood"]
    med[:] = 0
    ras.polyline(med, eso, [7.0, 7.0], weight_z=False)
    m = (med > 0) & ~lung & body
    truth[m] = truth[m] * (1 - med[m]) + hu["muscle"] * med[m]
    labels[m & (med > 0.5)] = L["muscle"]
    # trachea and main bronchi: wall then lumen
    for rad, val, name in ((1.0, hu["airway_wall"], "airway_wall"), (0.0, _AIR, "airway_lumen")):
        med[:] = 0
        off = 1.8 if rad else 0.0
        ras.polyline(med, trachea, [r_tr + off, r_tr + off], weight_z=False)
        ras.polyline(
            med, bronR, [r_tr * 0.8 + off, r_tr * 0.75 + off, r_tr * 0.65 + off], weight_z=False
        )
        ras.polyline(
            med, bronL, [r_tr * 0.75 + off, r_tr * 0.7 + off, r_tr * 0.6 + off], weight_z=False
        )
        m = (med > 0) & body & ~lung
        truth[m] = truth[m] * (1 - med[m]) + val * med[m]
        labels[m & (med > 0.5)] = L[name]
    del med

    # ---------------- lung texture, emphysema, trees, nodules ----------------
    zi, yi, xi = (np.flatnonzero(lung.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    nod_list: list[dict[str, Any]] = []
    if zi.size:
        bz = slice(zi[0], zi[-1] + 1)
        by = slice(max(yi[0] - 2, 0), yi[-1] + 3)
        bx = slice(max(xi[0] - 2, 0), xi[-1] + 3)
        sub = (bz, by, bx)
        lm = lung[sub]
        t = truth[sub]
        # parenchymal texture (fine, ~1 mm) and gravity-dependent density
        sig = max(0.35, 0.9 / pix)
        noise = rng.standard_normal(lm.shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, sigma=(0, sig, sig), truncate=2.5)
        noise *= 1.0 / max(float(noise.std()), 1e-6)
        grav = (y[by] - (y_c - Ac)) / (Ac + Pc)
        t_l = hu["lung"] + 18.0 * noise + (45.0 * np.clip(grav, 0, 1) ** 2 - 15.0)[None, :, None]
        t[lm] = t_l[lm]
        lab = labels[sub]
        sub_origin = (float(zc[bz.start]), float(y[by.start]), float(x[bx.start]))
        sras = _Raster(lm.shape, (dz, pix, pix), sub_origin)
        # emphysema: clusters of low-attenuation holes, upper-zone predominant
        if emphysema > 0:
            occ = np.zeros(lm.shape, dtype=np.float32)
            cand = np.flatnonzero(lm)
            n_h = int(emphysema * 4.0 * lm.sum() * dz * pix * pix / 1e4)
            if cand.size and n_h:
                pick = rng.choice(cand, size=min(n_h * 3, cand.size), replace=False)
                pz, py, px_ = np.unravel_index(pick, lm.shape)
                uu = (sub_origin[0] + pz * dz) / H
                keep = rng.random(pick.size) < np.clip(0.25 + uu, 0, 1)
                for a_, b_, c_ in list(zip(pz[keep], py[keep], px_[keep]))[:n_h]:
                    c = np.array(
                        [
                            sub_origin[0] + a_ * dz,
                            sub_origin[1] + b_ * pix,
                            sub_origin[2] + c_ * pix,
                        ]
                    )
                    rr = rng.uniform(1.5, 6.0)
                    sras.capsule(occ, c, c + rng.normal(0, 2.0, 3), rr, rr * 0.8, weight_z=False)
            occ *= lm
            t += (hu["emphysema"] + 6.0 * noise - t) * occ
            lab[occ > 0.5] = L["emphysema"]
        # trees
        vess = np.zeros(lm.shape, dtype=np.float32)
        wallo = np.zeros(lm.shape, dtype=np.float32)
        lum = np.zeros(lm.shape, dtype=np.float32)
        n_pts = 900
        for side, hil, pv in ((0, hilR, pvR), (1, hilL, pvL)):
            side_m = ((x[bx] > x_med) == bool(side))[None, None, :]
            cand = np.flatnonzero(lm & side_m)
            if cand.size < 10:
                continue
            for tree_kind in ("bv", "vein"):
                pick = rng.choice(cand, size=min(n_pts, cand.size), replace=False)
                pz, py, px_ = np.unravel_index(pick, lm.shape)
                P = np.stack(
                    [
                        sub_origin[0] + (pz + rng.uniform(-0.5, 0.5, pz.size)) * dz,
                        sub_origin[1] + (py + rng.uniform(-0.5, 0.5, pz.size)) * pix,
                        sub_origin[2] + (px_ + rng.uniform(-0.5, 0.5, pz.size)) * pix,
                    ],
                    axis=1,
                )
                root = hil if tree_kind == "bv" else pv
                segs = _grow_tree(rng, root, P, 6.5 if tree_kind == "bv" else 6.0)
                if tree_kind == "vein":
                    for sg in segs:
                        r = sg[6]
                        sras.capsule(vess, sg[0:3], sg[3:6], r, r * 0.92)
                    continue
                # bronchovascular bundle: artery beside the airway
                ref = rng.normal(size=3)
                for sg in segs:
                    a0, a1, r = sg[0:3], sg[3:6], sg[6]
                    dv = a1 - a0
                    nv = np.cross(dv, ref)
                    nn = np.linalg.norm(nv)
                    if nn < 1e-6:
                        nv = np.array([0.0, 1.0, 0.0])
                        nn = 1.0
                    r_aw = 0.85 * r
                    wt = 0.18 * r_aw + 0.25
                    off = nv / nn * (r_aw + wt + 0.9 * r)
                    sras.capsule(vess, a0 + off, a1 + off, r * 0.95, r * 0.9)
                    if r_aw >= 0.9:
                        sras.capsule(wallo, a0, a1, r_aw + wt, r_aw + wt)
                        sras.capsule(lum, a0, a1, r_aw, r_aw)
        for o in (vess, wallo, lum):
            o *= lm
        t += (hu["vessel"] + 4.0 * noise - t) * vess
        t += (hu["airway_wall"] - t) * wallo
        t += (_AIR - t) * lum
        lab[vess > 0.5] = L["vessel"]
        lab[wallo > 0.5] = L["airway_wall"]
        lab[lum > 0.5] = L["airway_lumen"]
        del vess, wallo, lum
        # nodules
        cand = np.flatnonzero(lm)
        tries = 0
        while len(nod_list) < n_nodules and tries < 200 and cand.size:
            tries += 1
            kind = "solid" if rng.random() < 0.6 else "ggo"
            dia = rng.uniform(4.0, 22.0) if kind == "solid" else rng.uniform(6.0, 25.0)
            r = dia / 2
            pz, py, px_ = np.unravel_index(rng.choice(cand), lm.shape)
            ok = True
            for dd in ((0, 0, 1), (0, 0, -1), (0, 1, 0), (0, -1, 0), (1, 0, 0), (-1, 0, 0)):
                q = (
                    pz + int(round(dd[0] * (r + 3) / dz)),
                    py + int(round(dd[1] * (r + 3) / pix)),
                    px_ + int(round(dd[2] * (r + 3) / pix)),
                )
                if not all(0 <= q[i] < lm.shape[i] for i in range(3)) or not lm[q]:
                    ok = False
                    break
            if not ok:
                continue
            c = np.array(
                [sub_origin[0] + pz * dz, sub_origin[1] + py * pix, sub_origin[2] + px_ * pix]
            )
            occ = np.zeros(lm.shape, dtype=np.float32)
            sras.capsule(occ, c, c, r, r, weight_z=False)
            for _ in range(rng.integers(2, 6)):  # lobulation
                off = rng.normal(0, 1, 3)
                off *= 0.55 * r / max(np.linalg.norm(off), 1e-6)
                sras.capsule(occ, c + off, c + off, 0.55 * r, 0.55 * r, weight_z=False)
            occ *= lm
            val = rng.uniform(25.0, 55.0) if kind == "solid" else rng.uniform(-650.0, -450.0)
            if kind == "ggo":
                val_f = val + 25.0 * noise
                t += (val_f - t) * occ * (t < val_f)
            else:
                t += (val + 5.0 * noise - t) * occ
            lab[occ > 0.5] = L["nodule"]
            nod_list.append(
                {
                    "center_mm": (float(c[0] - zc[0]), float(c[1] - y[0]), float(c[2] - x[0])),
                    "diameter_mm": float(dia),
                    "kind": kind,
                }
            )
        truth[sub] = t
        labels[sub] = lab
        del noise

    # mild soft-tissue texture (a few HU) so that flat areas are not perfectly flat
    soft = body & ~lung
    tex = rng.standard_normal(shape[1:], dtype=np.float32)
    tex = ndimage.gaussian_filter(tex, max(0.5, 1.2 / pix))
    tex *= 4.0 / max(float(tex.std()), 1e-6)
    truth += np.where(soft, tex[None], 0.0).astype(np.float32)

    params = {
        "lung_height_mm": float(H),
        "body_half_width_mm": float(A0),
        "body_half_depth_mm": float(B0),
        "fat_thickness_mm": float(fat0),
        "contrast": bool(contrast),
        "emphysema": float(emphysema),
        "clothing": bool(clothing),
        "female": female,
        "n_nodules": len(nod_list),
        "pixel_mm": pix,
        "slice_mm": float(dz),
        "heart_semi_axes_mm": (float(ah), float(bh), float(ch)),
    }
    return Phantom(
        truth=truth,
        lung_mask=lung,
        body_mask=body,
        labels=labels,
        spacing=(float(dz), pix, pix),
        seed=int(seed),
        hu={k: float(v) for k, v in hu.items()},
        nodules=tuple(nod_list),
        params=params,
    )


def scan_phantom(
    phantom: Phantom,
    *,
    dose_fraction: float = 1.0,
    kernel: str = "standard",
    rng: np.random.Generator | int | None = None,
    **scan_options: Any,
) -> Volume:
    """Simulate a CT acquisition of a phantom with :func:`hybrid.physics.scan`.

    Parameters
    ----------
    phantom : Phantom
        From :func:`make_patient`.
    dose_fraction : float, keyword-only
        Fraction of the normal dose (e.g. 0.02 for ultra-low dose).
    kernel : str, keyword-only
        Reconstruction kernel name understood by :func:`hybrid.physics.scan`.
    rng : numpy Generator or int, optional
        Noise seed; default: derived from the phantom seed (reproducible).
    **scan_options
        Passed on to :func:`hybrid.physics.scan` (e.g. ``i0``).

    Returns
    -------
    Volume
        The reconstructed noisy image in HU with the phantom's spacing.
    """
    if not isinstance(phantom, Phantom):
        raise TypeError(
            f"Expected a hybrid.phantom.Phantom; received {type(phantom).__name__}. "
            "Create one with hybrid.phantom.make_patient(seed)."
        )
    from hybrid import physics  # late import: physics is optional for the phantom itself

    if rng is None:
        rng = np.random.default_rng([phantom.seed, 0x5CA7])
    elif not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    img = physics.scan(
        phantom.truth,
        dose_fraction=dose_fraction,
        kernel=kernel,
        pixel_size_mm=phantom.spacing[2],
        rng=rng,
        **scan_options,
    )
    prov = Provenance(
        source=None,
        modality="CT",
        kernel=kernel,
        description=f"hybrid.phantom seed={phantom.seed} scan dose_fraction={dose_fraction}",
        derived_from=(
            f"hybrid.phantom.make_patient(seed={phantom.seed})",
            f"hybrid.physics.scan(dose_fraction={dose_fraction}, kernel={kernel!r})",
        ),
    )
    return Volume(np.asarray(img, dtype=np.float32), phantom.spacing, prov)
