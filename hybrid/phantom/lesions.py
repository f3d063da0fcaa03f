"""Lesion builders: emphysema (clusters of low-attenuation holes, upper-zone predominant)
and lung nodules (solid or ground-glass, lobulated)."""

from __future__ import annotations

from typing import Any

import numpy as np

from hybrid.phantom.frame import Frame
from hybrid.phantom.lungs import LungBox
from hybrid.phantom.tissues import LABELS

__all__ = ["paint_emphysema", "paint_nodules"]

#: Tries at placing nodules before giving up (a nodule needs lung all around it).
_NODULE_TRIES = 200


def paint_emphysema(frame: Frame, box: LungBox, noise: np.ndarray) -> None:
    """Emphysema holes, as many as the severity asks, more in the upper zones."""
    rng, dz, pix, lm, o = frame.rng, frame.dz, frame.pix, box.lm, box.origin
    occ = np.zeros(lm.shape, dtype=np.float32)
    cand = np.flatnonzero(lm)
    n_h = int(frame.emphysema * 4.0 * lm.sum() * dz * pix * pix / 1e4)
    if cand.size and n_h:
        pick = rng.choice(cand, size=min(n_h * 3, cand.size), replace=False)
        pz, py, px_ = np.unravel_index(pick, lm.shape)
        uu = (o[0] + pz * dz) / frame.H
        keep = rng.random(pick.size) < np.clip(0.25 + uu, 0, 1)
        for a_, b_, c_ in list(zip(pz[keep], py[keep], px_[keep]))[:n_h]:
            c = np.array([o[0] + a_ * dz, o[1] + b_ * pix, o[2] + c_ * pix])
            rr = rng.uniform(1.5, 6.0)
            box.raster.capsule(occ, c, c + rng.normal(0, 2.0, 3), rr, rr * 0.8, weight_z=False)
    occ *= lm
    t = box.t
    t += (frame.hu["emphysema"] + 6.0 * noise - t) * occ
    box.lab[occ > 0.5] = LABELS["emphysema"]


def _fits(lm: np.ndarray, p: tuple, r: float, dz: float, pix: float) -> bool:
    """Whether lung surrounds voxel ``p`` at ``r + 3`` mm along the six axis directions."""
    pz, py, px_ = p
    for dd in ((0, 0, 1), (0, 0, -1), (0, 1, 0), (0, -1, 0), (1, 0, 0), (-1, 0, 0)):
        q = (
            pz + int(round(dd[0] * (r + 3) / dz)),
            py + int(round(dd[1] * (r + 3) / pix)),
            px_ + int(round(dd[2] * (r + 3) / pix)),
        )
        if not all(0 <= q[i] < lm.shape[i] for i in range(3)) or not lm[q]:
            return False
    return True


def paint_nodules(frame: Frame, box: LungBox, noise: np.ndarray) -> list[dict[str, Any]]:
    """Place up to ``frame.n_nodules`` nodules wholly inside the lungs; their descriptions.

    Each description has ``center_mm`` (from the volume's first voxel),
    ``diameter_mm`` and ``kind`` ("solid" or "ggo").
    """
    rng, dz, pix, lm, o = frame.rng, frame.dz, frame.pix, box.lm, box.origin
    t, sras = box.t, box.raster
    nod_list: list[dict[str, Any]] = []
    cand = np.flatnonzero(lm)
    tries = 0
    while len(nod_list) < frame.n_nodules and tries < _NODULE_TRIES and cand.size:
        tries += 1
        kind = "solid" if rng.random() < 0.6 else "ggo"
        dia = rng.uniform(4.0, 22.0) if kind == "solid" else rng.uniform(6.0, 25.0)
        r = dia / 2
        pz, py, px_ = np.unravel_index(rng.choice(cand), lm.shape)
        if not _fits(lm, (pz, py, px_), r, dz, pix):
            continue
        c = np.array([o[0] + pz * dz, o[1] + py * pix, o[2] + px_ * pix])
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
        box.lab[occ > 0.5] = LABELS["nodule"]
        nod_list.append(
            {
                "center_mm": (
                    float(c[0] - frame.zc[0]),
                    float(c[1] - frame.y[0]),
                    float(c[2] - frame.x[0]),
                ),
                "diameter_mm": float(dia),
                "kind": kind,
            }
        )
    return nod_list
