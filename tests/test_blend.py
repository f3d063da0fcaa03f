"""The confidence blender: weight rules, calibration, several candidates, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid.blend import (
    Blender,
    HardMode,
    SoftMode,
    Table2DMode,
    TableMode,
    calibrate,
    mode_from_config,
)
from hybrid.proposal import Proposal


def _synthetic(rng, n=200_000):
    """Dictionary exact where its distance < 1, off by 60 HU beyond; CNN 20 HU everywhere."""
    nd = rng.normal(0, 200, n).astype(np.float32)
    dist = rng.uniform(0, 2, n).astype(np.float32)
    dic = nd + np.where(dist < 1.0, rng.normal(0, 2, n), rng.normal(0, 60, n)).astype(np.float32)
    cnn = nd + rng.normal(0, 20, n).astype(np.float32)
    return cnn, dic, dist, nd, np.ones(n, bool)


def _dict(image, dist):
    return Proposal(image, dist, "nn_distance", name="dictionary")


def test_weight_hard_and_soft():
    d = np.array([0.0, 0.9, 1.0, 1.1, 5.0, np.inf], np.float32)
    np.testing.assert_array_equal(HardMode(1.0).weight(d), [1, 1, 0, 0, 0, 0])
    w = SoftMode(1.0, 0.1).weight(d)
    assert w[2] == pytest.approx(0.5) and np.all(np.diff(w) <= 0) and w[-1] == 0 and w[0] > 0.99


def test_calibration_finds_the_threshold_and_beats_both_parts(rng):
    b = calibrate([_synthetic(rng)])
    mode = b.modes["dictionary"]
    # The dictionary is trustworthy below distance 1: the weight drops there.  Beyond it
    # the least-squares weight of a 60 HU error against the CNN's 20 HU is
    # 20² / (20² + 60²) = 0.1 (a hard or soft rule gives 0 there).
    w = mode.weight(np.array([0.5, 0.85, 1.15, 1.5], np.float32),
                    np.full(4, 30.0, np.float32))
    assert w[0] > 0.9 and w[1] > 0.5 > w[2] and w[3] < 0.15
    c = b.calibration
    # Ideal: dictionary (2 HU) on half the pixels, CNN (20 HU) on the rest → sqrt((4 + 400) / 2) = 14.2 HU.
    assert c["rmse_blend_hu"] < 15.0 < 0.75 * min(c["rmse_cnn_hu"], c["rmse_dictionary_hu"])


def test_blend_uses_weights_and_checks_shapes(rng):
    cnn, dic, dist, nd, _ = _synthetic(rng, 100)
    b = Blender(HardMode(1.0))
    out = b.blend(Proposal(cnn, name="cnn"), _dict(dic, dist))
    np.testing.assert_array_equal(out.image, np.where(dist < 1.0, dic, cnn))
    np.testing.assert_array_equal(out.weights["dictionary"], (dist < 1.0).astype(np.float32))
    np.testing.assert_array_equal(out.source_map, out.weights["dictionary"])
    with pytest.raises(ValueError, match="one shape"):
        b.blend(Proposal(cnn[:50], name="cnn"), _dict(dic, dist))
    with pytest.raises(ValueError, match="uncertainty map"):
        b.blend(Proposal(cnn, name="cnn"), Proposal(dic, name="dictionary"))
    with pytest.raises(ValueError, match="calibrated for"):
        b.blend(Proposal(cnn, name="cnn"), Proposal(dic, dist, "nn_distance", name="prior"))
    with pytest.raises(ValueError, match="at least one candidate"):
        b.blend(Proposal(cnn, name="cnn"))


def test_two_candidates_take_turns_and_shares_sum_to_one(rng):
    """Candidates in turn: where both are trusted the later one wins; the shares of the
    base and the candidates sum to 1 and rebuild the image."""
    cnn, dic, dist, nd, _ = _synthetic(rng, 1000)
    prior = nd + 1.0
    b = Blender({"dictionary": SoftMode(1.0, 0.2), "prior": HardMode(1.5)})
    out = b.blend(Proposal(cnn, name="cnn"), _dict(dic, dist),
                  Proposal(prior, dist, "nn_distance", name="prior"))
    wd, wp = out.weights["dictionary"], out.weights["prior"]
    assert (wd >= 0).all() and (wd + wp).max() <= 1.0 + 1e-6
    np.testing.assert_allclose((1 - wd - wp) * cnn + wd * dic + wp * prior, out.image,
                               rtol=0, atol=1e-3)
    both = dist < 1.5  # the prior (later) is trusted: it replaces whatever came before
    np.testing.assert_array_equal(out.image[both], prior[both])
    assert (wd[both] == 0).all()
    neither = dist >= 1.5
    w = SoftMode(1.0, 0.2).weight(dist)
    np.testing.assert_allclose(out.image[neither], (w * dic + (1 - w) * cnn)[neither], atol=1e-3)


def test_table2d_interpolates_bilinearly_and_is_constant_beyond_the_knots():
    """The shipped rule: w(d, g) bilinear between cell centres, clamped outside, 0 at d = inf."""
    m = Table2DMode((0.0, 1.0), (0.0, 100.0), ((1.0, 0.5), (0.5, 0.0)))
    d = np.array([0.0, 1.0, 0.5, 0.5, -3.0, 9.0, np.inf], np.float32)
    g = np.array([0.0, 100.0, 50.0, 0.0, 0.0, 500.0, 0.0], np.float32)
    np.testing.assert_allclose(m.weight(d, g), [1.0, 0.0, 0.5, 0.75, 1.0, 0.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="disagreement"):
        m.weight(d)
    with pytest.raises(ValueError, match="weights of shape"):
        Table2DMode((0.0, 1.0), (0.0,), ((1.0,), (0.5,)))
    # in a blender, g is |candidate - base|: a candidate 100 HU away at d = 0 gets w = 0.5
    base = Proposal(np.zeros(1, np.float32), name="cnn")
    cand = _dict(np.full(1, 100.0, np.float32), np.zeros(1, np.float32))
    out = Blender(m).blend(base, cand)
    np.testing.assert_allclose(out.image, [50.0], atol=1e-4)


def test_save_load_round_trip(tmp_path, rng):
    b = calibrate([_synthetic(rng, 20_000)])
    b = Blender(b.modes, calibration=b.calibration, calibrated_with={"cnn": "a" * 64})
    path = b.save(tmp_path / "blend.json")
    assert Blender.load(path) == b
    for mode in (HardMode(0.3), SoftMode(0.3, 0.2), TableMode(((0, 1), (1, 0))),
                 Table2DMode((0, 1), (0, 1), ((1, 0), (0, 1)))):
        assert mode_from_config(mode.get_config()) == mode
    path.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="hybrid-blender"):
        Blender.load(path)


def test_version_1_calibration_still_loads(tmp_path):
    path = tmp_path / "v1.json"
    path.write_text('{"format": "hybrid-blender", "version": 1, "mode": "soft", "threshold": 0.4,'
                    ' "softness": 0.2, "table": [], "calibration": {"stride": 2}}')
    b = Blender.load(path)
    assert b.modes == {"dictionary": SoftMode(0.4, 0.2)} and b.calibration == {"stride": 2}


def test_repr_and_info_show_only_the_parameters_that_apply():
    assert Blender(HardMode(0.5)).info() == {"dictionary": {"mode": "hard", "threshold": 0.5}}
    info = Blender(Table2DMode((0, 1), (0, 1, 2), ((1, 0, 0), (0, 1, 0)))).info()
    assert info == {"dictionary": {"mode": "table2d", "cells": [2, 3]}}
    assert "softness" not in repr(Blender(HardMode(0.5)))


@pytest.mark.parametrize("make,match", [
    (lambda: mode_from_config({"mode": "x"}), "mode"),
    (lambda: SoftMode(1.0, 0.0), "softness"),
    (lambda: TableMode(((0, 1),)), "knots"),
    (lambda: Blender({"dictionary": "soft"}), "Mode"),
])
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_table_weight_is_least_squares_optimal_per_bin(rng):
    """Where both parts are unbiased with independent errors σd and σc, the optimal weight
    is σc² / (σc² + σd²): here 20² / (20² + 20²) = 0.5 for d ≥ 1 and ≈ 1 for d < 1."""
    n = 400_000
    nd = rng.normal(0, 200, n).astype(np.float32)
    dist = rng.uniform(0, 2, n).astype(np.float32)
    dic = nd + np.where(dist < 1.0, rng.normal(0, 2, n), rng.normal(0, 20, n)).astype(np.float32)
    cnn = nd + rng.normal(0, 20, n).astype(np.float32)
    b = calibrate([(cnn, dic, dist, nd, np.ones(n, bool))], max_pixels=n)
    mode = b.modes["dictionary"]
    assert isinstance(mode, TableMode)
    w = mode.weight(np.array([0.2, 0.5, 1.5, 1.8, np.inf], np.float32))
    np.testing.assert_allclose(w[:2], 0.99, atol=0.02)  # 20² / (20² + 2²) = 0.990
    np.testing.assert_allclose(w[2:4], 0.5, atol=0.05)
    assert w[4] == 0
    c = b.calibration
    assert c["rmse_blend_hu"] < min(c["rmse_cnn_hu"], c["rmse_dictionary_hu"])


def test_monotone_calibration_gives_a_table_that_never_rises():
    """Pool adjacent violators: the weighted least-squares non-increasing fit (a rising pair
    becomes its weighted mean; a decreasing sequence is kept)."""
    from hybrid.blend import _decreasing, calibrate

    np.testing.assert_allclose(_decreasing(np.array([1.0, 0.5, 0.7, 0.2]), np.array([1, 1, 3, 1.0])),
                               [1.0, 0.65, 0.65, 0.2])
    np.testing.assert_array_equal(_decreasing(np.array([0.9, 0.4, 0.1]), np.ones(3)), [0.9, 0.4, 0.1])
    rng = np.random.default_rng(3)
    nd = rng.normal(0, 50, 20000).astype(np.float32)
    ratio = rng.uniform(0.5, 8.0, nd.size).astype(np.float32)
    x = nd + ratio * rng.normal(0, 5, nd.size).astype(np.float32)  # noisier where ratio is high
    base = nd + rng.normal(0, 8, nd.size).astype(np.float32)
    b = calibrate([(base, x, ratio, nd, np.ones(nd.size, bool))], candidate="input", monotone=True)
    w = b.modes["input"].weight(np.sort(ratio))
    assert np.all(np.diff(w) <= 1e-6) and w[0] > 0.5 > w[-1]
    assert b.calibration["monotone"] and b.calibration["rmse_blend_hu"] < b.calibration["rmse_cnn_hu"]


def test_calibration_on_a_constant_uncertainty_gives_a_constant_rule():
    """Tiny slices (too little tissue to measure the noise) all read the fallback ratio:
    the table is then the one least-squares weight, not an error."""
    from hybrid.blend import calibrate

    rng = np.random.default_rng(4)
    nd = rng.normal(0, 50, 5000).astype(np.float32)
    x, base = nd + rng.normal(0, 10, nd.size), nd + rng.normal(0, 10, nd.size)
    ratio = np.full(nd.size, 1.6, np.float32)
    b = calibrate([(base.astype(np.float32), x.astype(np.float32), ratio, nd,
                    np.ones(nd.size, bool))], candidate="input", monotone=True)
    w = b.modes["input"].weight(np.array([0.5, 1.6, 9.0], np.float32))
    assert np.ptp(w) == 0 and 0.3 < w[0] < 0.7  # equal noise: about half each
