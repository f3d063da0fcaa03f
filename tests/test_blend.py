"""The confidence blender: weights, calibration, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid.blend import Blender, calibrate
from hybrid.proposal import Proposal


def _synthetic(rng, n=200_000):
    """Dictionary exact where its distance < 1, off by 60 HU beyond; CNN 20 HU everywhere."""
    nd = rng.normal(0, 200, n).astype(np.float32)
    dist = rng.uniform(0, 2, n).astype(np.float32)
    dic = nd + np.where(dist < 1.0, rng.normal(0, 2, n), rng.normal(0, 60, n)).astype(np.float32)
    cnn = nd + rng.normal(0, 20, n).astype(np.float32)
    return cnn, dic, dist, nd, np.ones(n, bool)


def test_weight_hard_and_soft():
    d = np.array([0.0, 0.9, 1.0, 1.1, 5.0, np.inf], np.float32)
    np.testing.assert_array_equal(Blender("hard", 1.0).weight(d), [1, 1, 0, 0, 0, 0])
    w = Blender("soft", 1.0, 0.1).weight(d)
    assert w[2] == pytest.approx(0.5) and np.all(np.diff(w) <= 0) and w[-1] == 0 and w[0] > 0.99


def test_calibration_finds_the_threshold_and_beats_both_parts(rng):
    b = calibrate([_synthetic(rng)])
    # The dictionary is trustworthy below distance 1: the threshold lands there (grid spacing 0.06).
    assert 0.85 < b.threshold < 1.15
    c = b.calibration
    # Ideal: dictionary (2 HU) on half the pixels, CNN (20 HU) on the rest → sqrt((4 + 400) / 2) = 14.2 HU.
    assert c["rmse_blend_hu"] < 15.0 < 0.75 * min(c["rmse_cnn_hu"], c["rmse_dictionary_hu"])


def test_blend_uses_weights_and_checks_shapes(rng):
    cnn, dic, dist, nd, _ = _synthetic(rng, 100)
    b = Blender("hard", 1.0)
    out = b.blend(Proposal(cnn), Proposal(dic, dist, "nn_distance"))
    np.testing.assert_array_equal(out.image, np.where(dist < 1.0, dic, cnn))
    np.testing.assert_array_equal(out.dictionary_weight, (dist < 1.0).astype(np.float32))
    with pytest.raises(ValueError, match="one shape"):
        b.blend(Proposal(cnn[:50]), Proposal(dic, dist, "nn_distance"))
    with pytest.raises(ValueError, match="distance map"):
        b.blend(Proposal(cnn), Proposal(dic))


def test_save_load_round_trip(tmp_path, rng):
    b = calibrate([_synthetic(rng, 20_000)])
    path = b.save(tmp_path / "blend.json")
    assert Blender.load(path) == b
    path.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="hybrid-blender"):
        Blender.load(path)


@pytest.mark.parametrize("kw,match", [({"mode": "x"}, "mode"), ({"softness": 0.0}, "softness")])
def test_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        Blender(**kw)


def test_table_weight_is_least_squares_optimal_per_bin(rng):
    """Where both parts are unbiased with independent errors σd and σc, the optimal weight
    is σc² / (σc² + σd²): here 20² / (20² + 20²) = 0.5 for d ≥ 1 and ≈ 1 for d < 1."""
    n = 400_000
    nd = rng.normal(0, 200, n).astype(np.float32)
    dist = rng.uniform(0, 2, n).astype(np.float32)
    dic = nd + np.where(dist < 1.0, rng.normal(0, 2, n), rng.normal(0, 20, n)).astype(np.float32)
    cnn = nd + rng.normal(0, 20, n).astype(np.float32)
    b = calibrate([(cnn, dic, dist, nd, np.ones(n, bool))], max_pixels=n)
    assert b.mode == "table"
    w = b.weight(np.array([0.2, 0.5, 1.5, 1.8, np.inf], np.float32))
    np.testing.assert_allclose(w[:2], 0.99, atol=0.02)  # 20² / (20² + 2²) = 0.990
    np.testing.assert_allclose(w[2:4], 0.5, atol=0.05)
    assert w[4] == 0
    c = b.calibration
    assert c["rmse_blend_hu"] < min(c["rmse_cnn_hu"], c["rmse_dictionary_hu"])
