"""The confidence blender: the dictionary's match where it is close, the CNN elsewhere.

Both proposers return a normal-dose estimate; the dictionary also returns a
per-pixel nearest-neighbour distance ``d`` (normalised by the dictionary, low
= close match).  The blender forms

* **hard** pick: ``out = dict if d < t else cnn``;
* **soft** weight: ``w = 1 / (1 + exp((d - t) / s))``, ``out = w·dict + (1 − w)·cnn``
  (a logistic step of width ``s`` around ``t``; ``s → 0`` is the hard pick).

``t`` (and ``s``) are **calibrated** on training patients by minimising the
RMSE in HU inside the body (:func:`calibrate`), and stored with the models
(:meth:`Blender.save`).  Beside the image the blender returns a source map:
the dictionary's weight ``w`` per pixel (1 = dictionary, 0 = CNN).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hybrid.proposal import Proposal

__all__ = ["Blender", "calibrate", "BlendResult"]

FORMAT = "hybrid-blender"
VERSION = 1


@dataclass(frozen=True)
class BlendResult:
    """Blended image and its source map (dictionary weight per pixel, in [0, 1])."""

    image: np.ndarray
    dictionary_weight: np.ndarray


@dataclass(frozen=True)
class Blender:
    """Calibrated blending parameters.

    Parameters
    ----------
    mode : {"soft", "hard"}
    threshold : float
        Distance ``t`` below which the dictionary wins.
    softness : float
        Width ``s`` of the logistic step (soft mode only), > 0.
    calibration : dict
        How the parameters were chosen (validation RMSE per candidate, data).
    """

    mode: str = "soft"
    threshold: float = 0.0
    softness: float = 0.1
    calibration: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("soft", "hard"):
            raise ValueError(f"Invalid value for argument `mode`. Expected 'soft' or 'hard'. Received mode={self.mode!r}.")
        if self.mode == "soft" and not self.softness > 0:
            raise ValueError(
                f"Invalid value for argument `softness`. Expected a strictly positive value. "
                f"Received softness={self.softness}."
            )

    def weight(self, distance: np.ndarray) -> np.ndarray:
        """Dictionary weight per pixel for a distance map."""
        d = np.asarray(distance, dtype=np.float32)
        if self.mode == "hard":
            return (d < self.threshold).astype(np.float32)
        z = np.clip((d - self.threshold) / self.softness, -60, 60)
        w = (1.0 / (1.0 + np.exp(z))).astype(np.float32)
        w[np.isposinf(d)] = 0.0  # no match at all (outside the body): the CNN alone
        return w

    def blend(self, cnn: Proposal, dictionary: Proposal) -> BlendResult:
        """Join the two proposals pixel by pixel."""
        if cnn.image.shape != dictionary.image.shape:
            raise ValueError(
                f"Expected proposals of one shape; received cnn {cnn.image.shape} and "
                f"dictionary {dictionary.image.shape}."
            )
        if dictionary.confidence is None:
            raise ValueError(
                "Expected the dictionary proposal to carry its distance map (confidence); received None."
            )
        w = self.weight(dictionary.confidence)
        out = w * dictionary.image + (1.0 - w) * cnn.image
        return BlendResult(out.astype(np.float32), w)

    # ------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        from hybrid.io._atomic import atomic_file

        path = Path(path)
        with atomic_file(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)}, indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Blender:
        path = Path(path)
        d = json.loads(Path(path).read_text())
        if d.pop("format", None) != FORMAT or d.pop("version", 0) > VERSION:
            raise ValueError(
                f"Expected a {FORMAT} v{VERSION} calibration in {path}; received something else. "
                "Recalibrate with hybrid.blend.calibrate()."
            )
        return cls(**d)


def _rmse_for(weights: np.ndarray, cnn: np.ndarray, dic: np.ndarray, nd: np.ndarray) -> float:
    out = weights * dic + (1 - weights) * cnn
    return float(np.sqrt(np.mean((out - nd) ** 2)))


def calibrate(
    samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    *,
    thresholds: Sequence[float] | None = None,
    softness: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.4),
    max_pixels: int = 2_000_000,
    seed: int = 0,
) -> Blender:
    """Choose blending parameters that minimise RMSE (HU) inside the body.

    Parameters
    ----------
    samples : iterable of (cnn, dictionary, distance, nd, body_mask)
        Arrays of one shape each, from *training* patients only (validation
        folds), never the patient being evaluated.
    thresholds : sequence of float, optional
        Candidate ``t``; default: the 2nd … 98th percentiles of the distances.
    softness : sequence of float
        Candidate ``s`` for the soft mode (in distance units).
    max_pixels : int
        Body pixels are subsampled (seeded) to at most this many.

    Returns
    -------
    Blender
        The best of the hard and soft candidates; ``calibration`` records
        the RMSE of CNN alone, dictionary alone and the chosen blend.
    """
    cnn_l, dic_l, dist_l, nd_l = [], [], [], []
    for cnn, dic, dist, nd, body in samples:
        body = np.asarray(body, bool)
        cnn_l.append(np.asarray(cnn, np.float32)[body])
        dic_l.append(np.asarray(dic, np.float32)[body])
        dist_l.append(np.asarray(dist, np.float32)[body])
        nd_l.append(np.asarray(nd, np.float32)[body])
    if not cnn_l or sum(len(c) for c in cnn_l) == 0:
        raise ValueError("Expected calibration samples with body pixels; received none.")
    cnn, dic, dist, nd = (np.concatenate(x) for x in (cnn_l, dic_l, dist_l, nd_l))
    if len(cnn) > max_pixels:
        idx = np.random.default_rng(seed).choice(len(cnn), max_pixels, replace=False)
        cnn, dic, dist, nd = cnn[idx], dic[idx], dist[idx], nd[idx]
    if thresholds is None:
        thresholds = np.unique(np.percentile(dist, np.arange(2, 99, 3)))
    table = []
    best = (np.inf, None)
    for t in thresholds:
        cand = Blender("hard", float(t), 0.1)
        r = _rmse_for(cand.weight(dist), cnn, dic, nd)
        table.append({"mode": "hard", "threshold": float(t), "rmse_hu": r})
        best = min(best, (r, cand), key=lambda x: x[0])
        for s in softness:
            cand = Blender("soft", float(t), float(s))
            r = _rmse_for(cand.weight(dist), cnn, dic, nd)
            table.append({"mode": "soft", "threshold": float(t), "softness": float(s), "rmse_hu": r})
            best = min(best, (r, cand), key=lambda x: x[0])
    rmse_best, chosen = best
    info = {
        "pixels": int(len(cnn)),
        "rmse_cnn_hu": float(np.sqrt(np.mean((cnn - nd) ** 2))),
        "rmse_dictionary_hu": float(np.sqrt(np.mean((dic - nd) ** 2))),
        "rmse_blend_hu": float(rmse_best),
        "candidates": len(table),
    }
    return Blender(chosen.mode, chosen.threshold, chosen.softness, info)
