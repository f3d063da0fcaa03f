"""Texture builders: lung parenchyma (fine texture, gravity-dependent density) and a mild
soft-tissue texture so that flat areas are not perfectly flat."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from hybrid.phantom.frame import Frame
from hybrid.phantom.lungs import LungBox
from hybrid.phantom.mediastinum import Layout

__all__ = ["paint_parenchyma", "add_soft_tissue_texture"]


def paint_parenchyma(frame: Frame, lay: Layout, box: LungBox) -> np.ndarray:
    """Parenchymal texture (fine, ~1 mm) and gravity-dependent density in the lungs.

    Returns the unit-variance texture field of the box, which the vessels and
    lesions reuse.
    """
    pix, lm = frame.pix, box.lm
    sig = max(0.35, 0.9 / pix)
    noise = frame.rng.standard_normal(lm.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0, sig, sig), truncate=2.5)
    noise *= 1.0 / max(float(noise.std()), 1e-6)
    grav = (frame.y[box.sub[1]] - (frame.y_c - lay.Ac)) / (lay.Ac + lay.Pc)
    t_l = frame.hu["lung"] + 18.0 * noise + (45.0 * np.clip(grav, 0, 1) ** 2 - 15.0)[None, :, None]
    box.t[lm] = t_l[lm]
    return noise


def add_soft_tissue_texture(
    frame: Frame, truth: np.ndarray, body: np.ndarray, lung: np.ndarray
) -> None:
    """A few HU of smooth texture in the body outside the lungs (constant along z)."""
    pix = frame.pix
    soft = body & ~lung
    tex = frame.rng.standard_normal(frame.shape[1:], dtype=np.float32)
    tex = ndimage.gaussian_filter(tex, max(0.5, 1.2 / pix))
    tex *= 4.0 / max(float(tex.std()), 1e-6)
    truth += np.where(soft, tex[None], 0.0).astype(np.float32)
