"""Lung trees builder: procedurally grown bronchovascular bundles (artery beside airway)
and pulmonary veins, in each lung, from its hilum and vein root."""

from __future__ import annotations

import numpy as np

from hybrid.phantom.frame import Frame
from hybrid.phantom.geometry import grow_tree
from hybrid.phantom.lungs import LungBox
from hybrid.phantom.mediastinum import Layout
from hybrid.phantom.tissues import AIR_HU, LABELS

__all__ = ["paint_trees"]

#: Target points per tree (each lung grows a bronchovascular and a venous tree).
_N_POINTS = 900


def _tree_points(frame: Frame, box: LungBox, cand: np.ndarray) -> np.ndarray:
    """Random target points (mm, ``(n, 3)``) in the lung voxels ``cand`` of the box."""
    rng, dz, pix, o = frame.rng, frame.dz, frame.pix, box.origin
    pick = rng.choice(cand, size=min(_N_POINTS, cand.size), replace=False)
    pz, py, px_ = np.unravel_index(pick, box.lm.shape)
    return np.stack(
        [
            o[0] + (pz + rng.uniform(-0.5, 0.5, pz.size)) * dz,
            o[1] + (py + rng.uniform(-0.5, 0.5, pz.size)) * pix,
            o[2] + (px_ + rng.uniform(-0.5, 0.5, pz.size)) * pix,
        ],
        axis=1,
    )


def _bronchovascular(
    sras, segs: np.ndarray, ref: np.ndarray, vess: np.ndarray, wallo: np.ndarray, lum: np.ndarray
) -> None:
    """Artery beside the airway for each segment; airway wall and lumen where wide enough."""
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


def paint_trees(frame: Frame, lay: Layout, box: LungBox, noise: np.ndarray) -> None:
    """Grow and draw both lungs' trees: vessels (blood), airway walls and lumens."""
    rng, hu, L, lm, sras = frame.rng, frame.hu, LABELS, box.lm, box.raster
    t, lab = box.t, box.lab
    vess = np.zeros(lm.shape, dtype=np.float32)
    wallo = np.zeros(lm.shape, dtype=np.float32)
    lum = np.zeros(lm.shape, dtype=np.float32)
    x_box = frame.x[box.sub[2]]
    for side, hil, pv in ((0, lay.hilR, lay.pvR), (1, lay.hilL, lay.pvL)):
        side_m = ((x_box > lay.x_med) == bool(side))[None, None, :]
        cand = np.flatnonzero(lm & side_m)
        if cand.size < 10:
            continue
        for tree_kind in ("bv", "vein"):
            P = _tree_points(frame, box, cand)
            root = hil if tree_kind == "bv" else pv
            segs = grow_tree(rng, root, P, 6.5 if tree_kind == "bv" else 6.0)
            if tree_kind == "vein":
                for sg in segs:
                    r = sg[6]
                    sras.capsule(vess, sg[0:3], sg[3:6], r, r * 0.92)
                continue
            # bronchovascular bundle: artery beside the airway
            ref = rng.normal(size=3)
            _bronchovascular(sras, segs, ref, vess, wallo, lum)
    for o in (vess, wallo, lum):
        o *= lm
    t += (hu["vessel"] + 4.0 * noise - t) * vess
    t += (hu["airway_wall"] - t) * wallo
    t += (AIR_HU - t) * lum
    lab[vess > 0.5] = L["vessel"]
    lab[wallo > 0.5] = L["airway_wall"]
    lab[lum > 0.5] = L["airway_lumen"]
