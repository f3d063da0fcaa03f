"""The confidence blender: the dictionary's match where it is close, the CNN elsewhere.

Both proposers return a normal-dose estimate; the dictionary also returns a
per-pixel nearest-neighbour distance ``d`` (normalised by the dictionary, low
= close match).  The blender forms

* **hard** pick: ``out = dict if d < t else cnn``;
* **soft** weight: ``w = 1 / (1 + exp((d - t) / s))``, ``out = w·dict + (1 − w)·cnn``
  (a logistic step of width ``s`` around ``t``; ``s → 0`` is the hard pick);
* **table** weight: ``w(d)`` piecewise linear through one weight per distance
  bin, each the least-squares optimum on the calibration pixels of that bin,
  ``w_b = Σ(dict − cnn)(nd − cnn) / Σ(dict − cnn)²`` clipped to [0, 1]: the
  RMSE-optimal weight as a smooth function of the distance, with no shape
  imposed (a step or logistic is a special case);
* **table2d** weight: the same least-squares weight per cell of a 2-D table
  over the distance ``d`` and the disagreement ``g = |dict − cnn|`` (HU),
  bilinear between cell centres.  ``g`` tells how far apart the proposals
  are: where the input is very noisy (a sharp kernel, a very low dose) the
  dictionary's match is worse and the two disagree more, so the weight
  shrinks large disagreements towards the CNN.

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
    mode : {"soft", "hard", "table", "table2d"}
    threshold : float
        Distance ``t`` below which the dictionary wins.
    softness : float
        Width ``s`` of the logistic step (soft mode only), > 0.
    table : tuple
        table mode: (distance, weight) knots of the piecewise-linear weight,
        increasing distances.  table2d mode: ``(d_knots, g_knots, weights)``
        with ``weights[i][j]`` at ``(d_knots[i], g_knots[j])``.
    calibration : dict
        How the parameters were chosen (validation RMSE per candidate, data).
    """

    mode: str = "soft"
    threshold: float = 0.0
    softness: float = 0.1
    table: tuple = ()
    calibration: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("soft", "hard", "table", "table2d"):
            raise ValueError(
                "Invalid value for argument `mode`. Expected 'soft', 'hard', 'table' or 'table2d'. "
                f"Received mode={self.mode!r}."
            )
        if self.mode == "table2d":
            d_k, g_k, w = self.table
            w = tuple(tuple(float(v) for v in row) for row in w)
            if len(w) != len(d_k) or any(len(row) != len(g_k) for row in w) or len(d_k) < 2 or len(g_k) < 2:
                raise ValueError(
                    "Invalid value for argument `table`. Expected (d_knots, g_knots, weights) with "
                    f"weights of shape (len(d_knots), len(g_knots)), each ≥ 2. Received table={self.table!r}."
                )
            object.__setattr__(self, "table", (tuple(map(float, d_k)), tuple(map(float, g_k)), w))
            return
        object.__setattr__(self, "table", tuple(tuple(float(v) for v in k) for k in self.table))
        if self.mode == "table" and (len(self.table) < 2 or any(len(k) != 2 for k in self.table)):
            raise ValueError(
                "Invalid value for argument `table`. Expected at least 2 (distance, weight) knots. "
                f"Received table={self.table!r}."
            )
        if self.mode == "soft" and not self.softness > 0:
            raise ValueError(
                f"Invalid value for argument `softness`. Expected a strictly positive value. "
                f"Received softness={self.softness}."
            )

    def weight(self, distance: np.ndarray, disagreement: np.ndarray | None = None) -> np.ndarray:
        """Dictionary weight per pixel for a distance map (and, in table2d mode,
        the disagreement ``|dict − cnn|`` in HU)."""
        d = np.asarray(distance, dtype=np.float32)
        if self.mode == "table2d":
            if disagreement is None:
                raise ValueError("Expected the disagreement |dict - cnn| for a table2d blender; received None.")
            return _bilinear(self.table, d, np.asarray(disagreement, np.float32))
        if self.mode == "hard":
            return (d < self.threshold).astype(np.float32)
        if self.mode == "table":
            knots = np.asarray(self.table, dtype=np.float64)
            w = np.interp(np.where(np.isfinite(d), d, knots[-1, 0]), knots[:, 0], knots[:, 1])
            w = w.astype(np.float32)
            w[np.isposinf(d)] = 0.0
            return w
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
        if dictionary.uncertainty is None:
            raise ValueError(
                "Expected the dictionary proposal to carry its distance map (confidence); received None."
            )
        w = self.weight(dictionary.uncertainty, np.abs(dictionary.image - cnn.image))
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


def _rmse_for(weights, cnn, dic, nd, pixel_weight=None) -> float:
    out = weights * dic + (1 - weights) * cnn
    return float(np.sqrt(np.average((out - nd) ** 2, weights=pixel_weight)))


def calibrate(
    samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    *,
    thresholds: Sequence[float] | None = None,
    softness: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.4),
    max_pixels: int = 2_000_000,
    n_bins: int = 24,
    n_bins2d: tuple[int, int] = (12, 10),
    balance: bool = True,
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

    n_bins : int
        Distance bins of the table candidate.
    n_bins2d : (int, int)
        Distance and disagreement bins of the table2d candidate.
    balance : bool
        Weight each sample's pixels by 1 / (its CNN mean squared error), so that
        every sample counts alike: without it, one very noisy scan (a sharp
        kernel at 1 % dose has errors ten times larger) decides the weights
        for all.  The objective is then the mean over samples of the relative
        MSE; the reported RMSEs are the balanced ones.

    Returns
    -------
    Blender
        The best of the hard, soft, table and table2d candidates; ``calibration`` records
        the RMSE of CNN alone, dictionary alone and the chosen blend.
    """
    cnn_l, dic_l, dist_l, nd_l, pw_l = [], [], [], [], []
    for cnn, dic, dist, nd, body in samples:
        body = np.asarray(body, bool)
        c_body, n_body = np.asarray(cnn, np.float32)[body], np.asarray(nd, np.float32)[body]
        mse = float(np.mean((c_body - n_body) ** 2)) if balance and body.any() else 1.0
        pw_l.append(np.full(int(body.sum()), 1.0 / max(mse, 1e-6), np.float64))
        cnn_l.append(np.asarray(cnn, np.float32)[body])
        dic_l.append(np.asarray(dic, np.float32)[body])
        dist_l.append(np.asarray(dist, np.float32)[body])
        nd_l.append(np.asarray(nd, np.float32)[body])
    if not cnn_l or sum(len(c) for c in cnn_l) == 0:
        raise ValueError("Expected calibration samples with body pixels; received none.")
    cnn, dic, dist, nd, pw = (np.concatenate(x) for x in (cnn_l, dic_l, dist_l, nd_l, pw_l))
    if balance:
        pw *= len(pw) / pw.sum()  # mean pixel weight 1: RMSEs stay in HU-like units
    if len(cnn) > max_pixels:
        idx = np.random.default_rng(seed).choice(len(cnn), max_pixels, replace=False)
        cnn, dic, dist, nd, pw = cnn[idx], dic[idx], dist[idx], nd[idx], pw[idx]
    if thresholds is None:
        thresholds = np.unique(np.percentile(dist, np.arange(2, 99, 3)))
    table = []
    best = (np.inf, None)
    for t in thresholds:
        cand = Blender("hard", float(t), 0.1)
        r = _rmse_for(cand.weight(dist), cnn, dic, nd, pw)
        table.append({"mode": "hard", "threshold": float(t), "rmse_hu": r})
        best = min(best, (r, cand), key=lambda x: x[0])
        for s in softness:
            cand = Blender("soft", float(t), float(s))
            r = _rmse_for(cand.weight(dist), cnn, dic, nd, pw)
            table.append({"mode": "soft", "threshold": float(t), "softness": float(s), "rmse_hu": r})
            best = min(best, (r, cand), key=lambda x: x[0])
    table_blender = _fit_table(cnn, dic, dist, nd, pw, n_bins=n_bins)
    r = _rmse_for(table_blender.weight(dist), cnn, dic, nd, pw)
    table.append({"mode": "table", "bins": n_bins, "rmse_hu": r})
    best = min(best, (r, table_blender), key=lambda x: x[0])
    g = np.abs(dic - cnn)
    table2 = _fit_table2d(cnn, dic, dist, g, nd, pw, n_bins=n_bins2d)
    r = _rmse_for(table2.weight(dist, g), cnn, dic, nd, pw)
    table.append({"mode": "table2d", "bins": list(n_bins2d), "rmse_hu": r})
    best = min(best, (r, table2), key=lambda x: x[0])
    rmse_best, chosen = best
    info = {
        "pixels": int(len(cnn)),
        "balanced": bool(balance),
        "rmse_cnn_hu": _rmse_for(0.0, cnn, dic, nd, pw),
        "rmse_dictionary_hu": _rmse_for(1.0, cnn, dic, nd, pw),
        "rmse_blend_hu": float(rmse_best),
        "candidates": len(table),
    }
    return Blender(chosen.mode, chosen.threshold, chosen.softness, chosen.table, info)


def _fit_table(cnn, dic, dist, nd, pw, *, n_bins: int) -> Blender:
    """Weighted least-squares dictionary weight per distance-quantile bin (see module docs)."""
    finite = np.isfinite(dist)
    cnn, dic, dist, nd, pw = cnn[finite], dic[finite], dist[finite], nd[finite], pw[finite]
    edges = np.unique(np.quantile(dist, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, dist, side="right") - 1, 0, len(edges) - 2)
    diff = (dic - cnn).astype(np.float64)
    num = np.bincount(which, pw * diff * (nd - cnn), minlength=len(edges) - 1)
    den = np.bincount(which, pw * diff * diff, minlength=len(edges) - 1)
    w = np.clip(num / np.maximum(den, 1e-9), 0.0, 1.0)
    centres = np.bincount(which, dist, minlength=len(edges) - 1) / np.maximum(
        np.bincount(which, minlength=len(edges) - 1), 1)
    return Blender("table", float(np.median(dist)), 0.1, tuple(zip(centres.tolist(), w.tolist())))


def _quantile_bins(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n + 1)))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    return edges, which


def _fit_table2d(cnn, dic, dist, g, nd, pw, *, n_bins: tuple[int, int]) -> Blender:
    """Weighted least-squares dictionary weight per (distance, disagreement) cell."""
    finite = np.isfinite(dist)
    cnn, dic, dist, g, nd, pw = (a[finite] for a in (cnn, dic, dist, g, nd, pw))
    d_edges, di = _quantile_bins(dist, n_bins[0])
    g_edges, gi = _quantile_bins(g, n_bins[1])
    nd_, ng_ = len(d_edges) - 1, len(g_edges) - 1
    cell = di * ng_ + gi
    diff = (dic - cnn).astype(np.float64)
    num = np.bincount(cell, pw * diff * (nd - cnn), minlength=nd_ * ng_)
    den = np.bincount(cell, pw * diff * diff, minlength=nd_ * ng_)
    w = np.clip(num / np.maximum(den, 1e-9), 0.0, 1.0).reshape(nd_, ng_)
    cnt = np.maximum(np.bincount(di, minlength=nd_), 1)
    d_c = np.bincount(di, dist, minlength=nd_) / cnt
    cnt = np.maximum(np.bincount(gi, minlength=ng_), 1)
    g_c = np.bincount(gi, g, minlength=ng_) / cnt
    return Blender("table2d", float(np.median(dist)), 0.1, (tuple(d_c), tuple(g_c), w.tolist()))


def _bilinear(table, d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a table2d weight, constant beyond the outer knots; 0 where d is +inf."""
    d_k, g_k, w = (np.asarray(t, np.float64) for t in table)
    out = np.zeros(np.shape(d), np.float32)
    sel = ~np.isposinf(d)  # only these (the body) need the table: the rest stays 0
    dd, g = d[sel], np.broadcast_to(g, np.shape(d))[sel]
    dd = np.where(np.isfinite(dd), dd, d_k[-1])
    i = np.clip(np.searchsorted(d_k, dd) - 1, 0, len(d_k) - 2)
    j = np.clip(np.searchsorted(g_k, g) - 1, 0, len(g_k) - 2)
    td = np.clip((dd - d_k[i]) / (d_k[i + 1] - d_k[i]), 0, 1)
    tg = np.clip((g - g_k[j]) / (g_k[j + 1] - g_k[j]), 0, 1)
    out[sel] = ((1 - td) * (1 - tg) * w[i, j] + td * (1 - tg) * w[i + 1, j]
                + (1 - td) * tg * w[i, j + 1] + td * tg * w[i + 1, j + 1])
    return out
