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

Several candidates are applied in turn (:meth:`Blender.blend`): the shipped
blender has the dictionary rule and then the **input** rule, a non-increasing
table over the input's noise ratio (:func:`hybrid.cnn.noise.noise_ratio`;
``calibrate(..., monotone=True)``), which gives a scan that is not noisy back as
it came (:mod:`hybrid.calibration`).

After the rules, the **residual guard** (:func:`residual_guard`, issue 16) bounds how far a
slice that reads as normal-dose noise may move from its input: where the CNN took away much
more than the input's noise (``q = mean |cnn - input|² / sigma²`` well above 1), it removed
structure too, and the input keeps more of the slice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hybrid.proposal import Proposal

__all__ = ["Blender", "BlendResult", "Mode", "HardMode", "SoftMode", "TableMode", "Table2DMode",
           "MODES", "mode_from_config", "calibrate", "residual_guard", "GUARD_POWER"]

FORMAT = "hybrid-blender"
#: 2: weight rules per candidate, the digests of the models it was calibrated with.
#: 1 (still read): one rule (mode, threshold, softness, table) for the dictionary.
VERSION = 2


# ---------------------------------------------------------------- the residual guard
#: The guard's floor ``q ** -GUARD_POWER`` (see :func:`residual_guard`): the smallest power
#: with which the guard kept the input's RMSE on six fresh phantoms, the calibration
#: patients and the unseen thorax at 10-50 % dose (`experiments/residual_rule_check.py`).
GUARD_POWER = 4.0


def residual_guard(ratio: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per slice, the largest share of the CNN's change a slice may keep (in [0, 1]).

    ``ratio`` is the input's noise ratio (:func:`hybrid.cnn.noise.ratio_of`), ``q`` the
    CNN's mean square change inside the body over the input's noise variance.  Were the
    scan's own normal-dose noise a typical scan's (the ratio 1), a low dose would have added
    ``1 - 1 / ratio²`` of its noise variance, and a CNN that removes all noise and nothing
    else changes the slice by ``q = 1``: the RMSE-optimal share of its change is then
    ``(1 - 1 / ratio²) / q``.  Quiet scans (thick slices) read below 1 even at a low dose,
    so the share never goes below ``q ** -GUARD_POWER`` either.  Only slices that read as
    normal-dose noise (``ratio`` at most :data:`hybrid.cnn.noise.DOSE_READING_BOUNDS`\\[0])
    are guarded; elsewhere the share is 1 (the calibrated rules alone)."""
    from hybrid.cnn.noise import DOSE_READING_BOUNDS

    ratio = np.asarray(ratio, np.float64)
    q = np.maximum(np.asarray(q, np.float64), 1e-12)
    added = np.clip(1.0 - 1.0 / np.maximum(ratio, 1e-12) ** 2, 0.0, None)
    share = np.clip(np.maximum(added / q, q ** -GUARD_POWER), 0.0, 1.0)
    return np.where(ratio <= DOSE_READING_BOUNDS[0], share, 1.0)


# ---------------------------------------------------------------- weight rules (modes)
class Mode:
    """A rule that maps a candidate's uncertainty (and disagreement) to its weight in [0, 1].

    Subclasses are frozen dataclasses with a ``name``; :meth:`get_config` gives
    ``{"mode": name, **parameters}``, :func:`mode_from_config` the inverse.
    """

    name: ClassVar[str] = ""

    def weight(self, uncertainty: np.ndarray, disagreement: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"mode": self.name, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (tuple, list)) else v


@dataclass(frozen=True)
class HardMode(Mode):
    """``w = 1`` where ``d < threshold``, else 0."""

    name: ClassVar[str] = "hard"
    threshold: float

    def weight(self, uncertainty, disagreement=None):
        return (np.asarray(uncertainty, np.float32) < self.threshold).astype(np.float32)


@dataclass(frozen=True)
class SoftMode(Mode):
    """``w = 1 / (1 + exp((d - threshold) / softness))``; 0 where ``d`` is +inf."""

    name: ClassVar[str] = "soft"
    threshold: float
    softness: float = 0.1

    def __post_init__(self) -> None:
        if not self.softness > 0:
            raise ValueError(
                "Invalid value for argument `softness`. Expected a strictly positive value. "
                f"Received softness={self.softness}."
            )

    def weight(self, uncertainty, disagreement=None):
        d = np.asarray(uncertainty, np.float32)
        z = np.clip((d - self.threshold) / self.softness, -60, 60)
        w = (1.0 / (1.0 + np.exp(z))).astype(np.float32)
        w[np.isposinf(d)] = 0.0  # no match at all (outside the body): the base alone
        return w


@dataclass(frozen=True)
class TableMode(Mode):
    """``w(d)`` piecewise linear through ``knots`` ((distance, weight), increasing)."""

    name: ClassVar[str] = "table"
    knots: tuple

    def __post_init__(self) -> None:
        knots = tuple(tuple(float(v) for v in k) for k in self.knots)
        if len(knots) < 2 or any(len(k) != 2 for k in knots):
            raise ValueError(
                "Invalid value for argument `knots`. Expected at least 2 (distance, weight) "
                f"knots. Received knots={self.knots!r}."
            )
        object.__setattr__(self, "knots", knots)

    def weight(self, uncertainty, disagreement=None):
        d = np.asarray(uncertainty, np.float32)
        knots = np.asarray(self.knots, dtype=np.float64)
        w = np.interp(np.where(np.isfinite(d), d, knots[-1, 0]), knots[:, 0], knots[:, 1])
        w = w.astype(np.float32)
        w[np.isposinf(d)] = 0.0
        return w


@dataclass(frozen=True)
class Table2DMode(Mode):
    """Bilinear ``w(d, g)`` over distance knots and disagreement ``g = |candidate - base|``
    knots (HU); ``weights[i][j]`` at ``(d_knots[i], g_knots[j])``."""

    name: ClassVar[str] = "table2d"
    d_knots: tuple
    g_knots: tuple
    weights: tuple

    def __post_init__(self) -> None:
        d_k, g_k = tuple(map(float, self.d_knots)), tuple(map(float, self.g_knots))
        w = tuple(tuple(float(v) for v in row) for row in self.weights)
        if len(w) != len(d_k) or any(len(row) != len(g_k) for row in w) or len(d_k) < 2 \
                or len(g_k) < 2:
            raise ValueError(
                "Invalid value for argument `weights`. Expected weights of shape "
                "(len(d_knots), len(g_knots)), each >= 2. Received "
                f"{len(d_k)} d_knots, {len(g_k)} g_knots, weights={self.weights!r}."
            )
        object.__setattr__(self, "d_knots", d_k)
        object.__setattr__(self, "g_knots", g_k)
        object.__setattr__(self, "weights", w)

    def weight(self, uncertainty, disagreement=None):
        if disagreement is None:
            raise ValueError(
                "Expected the disagreement |candidate - base| for a table2d rule; received None."
            )
        return _bilinear((self.d_knots, self.g_knots, self.weights),
                         np.asarray(uncertainty, np.float32), np.asarray(disagreement, np.float32))


MODES: dict[str, type[Mode]] = {m.name: m for m in (HardMode, SoftMode, TableMode, Table2DMode)}


def mode_from_config(config: Mapping[str, Any]) -> Mode:
    """The rule of a :meth:`Mode.get_config` dict."""
    cfg = dict(config)
    name = cfg.pop("mode", None)
    if name not in MODES:
        raise ValueError(
            f"Invalid value for `mode`. Expected one of {sorted(MODES)}. Received mode={name!r}."
        )
    return MODES[name](**cfg)


def _mode_v1(d: Mapping[str, Any]) -> Mode:
    """The rule of a version-1 calibration (one mode for the dictionary)."""
    mode, table = d.get("mode", "soft"), d.get("table", ())
    if mode == "hard":
        return HardMode(d["threshold"])
    if mode == "soft":
        return SoftMode(d["threshold"], d.get("softness", 0.1))
    if mode == "table":
        return TableMode(table)
    if mode == "table2d":
        return Table2DMode(*table)
    raise ValueError(f"Invalid blender mode {mode!r} in a version-1 calibration.")


# ---------------------------------------------------------------- the blender
@dataclass(frozen=True)
class BlendResult:
    """Blended image and the weight of each candidate per pixel (the source maps, in [0, 1])."""

    image: np.ndarray
    weights: dict

    @property
    def source_map(self) -> np.ndarray:
        """Total weight of the candidates per pixel (0 = the base proposal alone)."""
        return np.sum(list(self.weights.values()), axis=0, dtype=np.float32)


@dataclass(frozen=True)
class Blender:
    """Joins a base proposal with candidates, each weighted by its calibrated rule.

    Parameters
    ----------
    modes : Mode or mapping of candidate name -> Mode
        The weight rule of each candidate proposer (a single Mode: the
        "dictionary" candidate).
    calibration : dict
        How the rules were chosen (RMSE per candidate rule, data, grid).
    calibrated_with : dict
        Artifact digests (:mod:`hybrid.artifacts`) of the proposers it was
        calibrated with, e.g. ``{"cnn": ..., "dictionary": ...}``; empty for
        models that were never saved.  :class:`hybrid.pipeline.Enhancer`
        refuses other models.
    """

    modes: Any
    calibration: dict = field(default_factory=dict)
    calibrated_with: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        modes = {"dictionary": self.modes} if isinstance(self.modes, Mode) else dict(self.modes)
        bad = {k: type(v).__name__ for k, v in modes.items() if not isinstance(v, Mode)}
        if not modes or bad:
            raise ValueError(
                "Invalid value for argument `modes`. Expected a hybrid.blend.Mode (e.g. "
                "SoftMode(1.0, 0.1)) or a mapping of candidate name to Mode. "
                f"Received {self.modes!r}."
            )
        object.__setattr__(self, "modes", modes)

    def info(self) -> dict[str, Any]:
        """The rules with only the parameters that apply (tables summarised by their size)."""
        out = {}
        for name, m in self.modes.items():
            cfg = m.get_config()
            if isinstance(m, TableMode):
                cfg["knots"] = len(m.knots)
            elif isinstance(m, Table2DMode):
                cfg = {"mode": m.name, "cells": [len(m.d_knots), len(m.g_knots)]}
            out[name] = cfg
        return out

    def __repr__(self) -> str:
        return f"Blender({self.info()})"

    def weight(self, candidate: Proposal, base: Proposal) -> np.ndarray:
        """The weight map of one candidate against the base proposal."""
        if candidate.name not in self.modes:
            raise ValueError(
                f"Expected a candidate this blender was calibrated for ({sorted(self.modes)}); "
                f"received {candidate.name!r}. Calibrate it (hybrid.blend.calibrate)."
            )
        if candidate.uncertainty is None:
            raise ValueError(
                f"Expected the {candidate.name!r} proposal to carry its uncertainty map; "
                "received None."
            )
        return self.modes[candidate.name].weight(candidate.uncertainty,
                                                 np.abs(candidate.image - base.image))

    def blend(self, base: Proposal, *candidates: Proposal) -> BlendResult:
        """Join the proposals pixel by pixel, the candidates in turn.

        Each candidate replaces the image so far where its rule trusts it:
        ``image <- (1 - w_i) image + w_i c_i``, ``w_i`` from its uncertainty and its
        disagreement with the image so far (for the first: the base).  So a later
        candidate (the shipped "input" rule comes last) has the last word.  The
        returned weights are each candidate's share of the result,
        ``w_i * prod_{j > i} (1 - w_j)``; with the base's share they sum to 1.
        """
        if not candidates:
            raise ValueError("Expected at least one candidate proposal besides the base; received none.")
        for c in candidates:
            if c.image.shape != base.image.shape:
                raise ValueError(
                    f"Expected proposals of one shape; received {base.name or 'base'} "
                    f"{base.image.shape} and {c.name} {c.image.shape}."
                )
        out = base.image
        shares: dict[str, np.ndarray] = {}
        for c in candidates:
            w = self.weight(c, Proposal(out, name=base.name))
            shares = {k: (v * (1.0 - w)).astype(np.float32) for k, v in shares.items()}
            shares[c.name] = w
            out = w * c.image + (1.0 - w) * out
        return BlendResult(np.asarray(out, np.float32), shares)

    # ------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        from hybrid.io._atomic import atomic_file

        path = Path(path)
        doc = {"format": FORMAT, "version": VERSION,
               "candidates": {k: m.get_config() for k, m in self.modes.items()},
               "calibration": self.calibration, "calibrated_with": self.calibrated_with}
        with atomic_file(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(doc, indent=2, default=_json_default))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Blender:
        path = Path(path)
        d = json.loads(Path(path).read_text())
        if d.get("format") != FORMAT or not 1 <= int(d.get("version", 0)) <= VERSION:
            raise ValueError(
                f"Expected a {FORMAT} calibration (version <= {VERSION}) in {path}; received "
                f"format {d.get('format')!r} version {d.get('version')!r}. Recalibrate with "
                "`make calibrate` (hybrid.blend.calibrate)."
            )
        if int(d["version"]) == 1:
            return cls(_mode_v1(d), calibration=d.get("calibration", {}))
        modes = {k: mode_from_config(v) for k, v in d["candidates"].items()}
        return cls(modes, calibration=d.get("calibration", {}),
                   calibrated_with=d.get("calibrated_with", {}))


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


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
    candidate: str = "dictionary",
    monotone: bool = False,
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
    candidate : str
        Name of the candidate proposer the samples' second image and distance come from.
    monotone : bool
        Only rules whose weight never rises with the uncertainty: the hard, soft and
        (least-squares non-increasing) table rules, no table2d.  For a physical
        uncertainty such as the input's noise ratio, where more noise can only mean less
        trust, this keeps a few noisy bins from deciding the rule.

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
        cand = HardMode(float(t))
        r = _rmse_for(cand.weight(dist), cnn, dic, nd, pw)
        table.append({"mode": "hard", "threshold": float(t), "rmse_hu": r})
        best = min(best, (r, cand), key=lambda x: x[0])
        for s in softness:
            cand = SoftMode(float(t), float(s))
            r = _rmse_for(cand.weight(dist), cnn, dic, nd, pw)
            table.append({"mode": "soft", "threshold": float(t), "softness": float(s), "rmse_hu": r})
            best = min(best, (r, cand), key=lambda x: x[0])
    table_blender = _fit_table(cnn, dic, dist, nd, pw, n_bins=n_bins, monotone=monotone)
    r = _rmse_for(table_blender.weight(dist), cnn, dic, nd, pw)
    table.append({"mode": "table", "bins": n_bins, "rmse_hu": r})
    best = min(best, (r, table_blender), key=lambda x: x[0])
    if not monotone:
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
        "monotone": bool(monotone),
    }
    return Blender({candidate: chosen}, calibration=info)


def _decreasing(w: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-increasing fit of ``w`` (pool adjacent violators).

    Per bin the calibration objective is ``weight * (v - w)**2`` plus a constant, so this
    is the best non-increasing table."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for v, c in zip(w.tolist(), np.maximum(weight, 1e-12).tolist()):
        blocks.append([v, c, 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            v2, c2, n2 = blocks.pop()
            v1, c1, n1 = blocks.pop()
            blocks.append([(v1 * c1 + v2 * c2) / (c1 + c2), c1 + c2, n1 + n2])
    return np.concatenate([np.full(n, v) for v, _, n in blocks])


def _fit_table(cnn, dic, dist, nd, pw, *, n_bins: int, monotone: bool = False) -> TableMode:
    """Weighted least-squares dictionary weight per distance-quantile bin (see module docs);
    ``monotone``: the best table that never rises with the distance."""
    finite = np.isfinite(dist)
    cnn, dic, dist, nd, pw = cnn[finite], dic[finite], dist[finite], nd[finite], pw[finite]
    edges, which = _quantile_bins(dist, n_bins)
    diff = (dic - cnn).astype(np.float64)
    num = np.bincount(which, pw * diff * (nd - cnn), minlength=len(edges) - 1)
    den = np.bincount(which, pw * diff * diff, minlength=len(edges) - 1)
    w = np.clip(num / np.maximum(den, 1e-9), 0.0, 1.0)
    if monotone:
        w = _decreasing(w, den)
    centres = np.bincount(which, dist, minlength=len(edges) - 1) / np.maximum(
        np.bincount(which, minlength=len(edges) - 1), 1)
    if len(centres) == 1:  # one value of the uncertainty throughout: a constant rule
        centres, w = np.array([centres[0], centres[0] + 1.0]), np.repeat(w, 2)
    return TableMode(tuple(zip(centres.tolist(), w.tolist())))


def _quantile_bins(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n + 1)))
    if len(edges) < 2:  # a single value: one bin
        edges = np.array([edges[0], edges[0] + 1.0])
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    return edges, which


def _fit_table2d(cnn, dic, dist, g, nd, pw, *, n_bins: tuple[int, int]) -> Table2DMode:
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
    return Table2DMode(tuple(d_c), tuple(g_c), w.tolist())


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
