"""Scoring of every method on the same slices: metrics per region, per-slice body RMSE.

Also the methods' report order and labels, and running the tuned classical
baselines on the scored slices.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["CLASSICAL", "METHOD_ORDER", "score_methods"]

#: Methods in report order.
METHOD_ORDER = ("input", "gaussian", "nlm", "tv", "bm3d", "cnn", "dictionary", "hybrid")
_LABELS = {
    "input": "input (ULD)", "gaussian": "Gaussian", "nlm": "NLM", "tv": "TV", "bm3d": "BM3D",
    "cnn": "CNN only", "dictionary": "dictionary only", "hybrid": "**hybrid**",
}
#: The classical baselines compared with the hybrid (the default of every entry point).
CLASSICAL = ("gaussian", "nlm", "tv", "bm3d")


def score_methods(
    images: Mapping[str, np.ndarray],
    nd: np.ndarray,
    lung_mask: np.ndarray,
    body_mask: np.ndarray,
) -> dict[str, Any]:
    """``{method: {"metrics": evaluate_image result, "slice_rmse_hu": [body RMSE per slice]}}``."""
    from hybrid.metrics import evaluate_image, rmse

    out = {}
    for name, img in images.items():
        m = evaluate_image(img, nd, lung_mask=lung_mask, body_mask=body_mask, on_empty="nan")
        per_slice = [rmse(img[z], nd[z], mask=body_mask[z]) if body_mask[z].any() else float("nan")
                     for z in range(len(nd))]
        out[name] = {"metrics": m, "slice_rmse_hu": per_slice}
    return out


def _baseline_images(uld: np.ndarray, body: np.ndarray, tuned: Mapping[str, Mapping[str, Any]],
                     timings: dict[str, float]) -> dict[str, np.ndarray]:
    from hybrid.baselines import BASELINES

    imgs = {}
    for name, t in tuned.items():
        t0 = time.perf_counter()
        imgs[name] = BASELINES[name](**t["params"]).propose(uld, body_mask=body).image
        timings[name] = (time.perf_counter() - t0) / len(uld)
    return imgs

