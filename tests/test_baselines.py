"""hybrid.baselines: one contract for every classical denoiser, plus tuning."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hybrid import Volume
from hybrid.baselines import (
    BASELINES,
    HU_SCALE,
    Baseline,
    BM3DBaseline,
    GaussianBaseline,
    InputBaseline,
    NonLocalMeansBaseline,
    TotalVariationBaseline,
    estimate_noise_sigma,
    tune,
)
from hybrid.metrics import rmse
from hybrid.proposal import Proposal

NOISE_HU = 70.0


def phantom(h: int, w: int) -> np.ndarray:
    """Piecewise-constant chest-like slice in HU: air, body, two lungs, a bone."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.full((h, w), -1000.0, np.float32)
    img[((y - h / 2) / (0.42 * h)) ** 2 + ((x - w / 2) / (0.45 * w)) ** 2 < 1] = 40.0
    for cx in (0.32, 0.68):
        img[((y - h / 2) / (0.28 * h)) ** 2 + ((x - cx * w) / (0.12 * w)) ** 2 < 1] = -850.0
    img[(y - 0.7 * h) ** 2 + (x - w / 2) ** 2 < (0.08 * h) ** 2] = 400.0
    return img


@pytest.fixture(scope="module")
def slice_pair():
    """128 x 128 clean phantom and its noisy version (Gaussian, σ = 70 HU)."""
    clean = phantom(128, 128)
    noisy = clean + np.random.default_rng(0).normal(0, NOISE_HU, clean.shape).astype(np.float32)
    return clean, noisy


@pytest.fixture(scope="module")
def volume_pair():
    """(2, 32, 32) clean phantom volume and its noisy version."""
    clean = np.stack([phantom(32, 32)] * 2)
    noisy = clean + np.random.default_rng(1).normal(0, NOISE_HU, clean.shape).astype(np.float32)
    return clean, noisy


def make(name: str) -> Baseline:
    if name == "bm3d":
        pytest.importorskip("bm3d", reason="optional dependency bm3d (pip install 'bm3d>=4.0,<5')")
    return BASELINES[name]()


@pytest.fixture(scope="module")
def slice_results(slice_pair):
    """Each baseline run once on the 128 x 128 slice (BM3D is slow: share the result)."""
    cache: dict[str, Proposal] = {}

    def get(name: str) -> Proposal:
        if name not in cache:
            _, noisy = slice_pair
            before = noisy.copy()
            cache[name] = make(name).propose(noisy)
            np.testing.assert_array_equal(noisy, before)  # input not modified
        return cache[name]

    return get


# ----------------------------------------------------------------- registry


def test_registry():
    assert set(BASELINES) == {"input", "gaussian", "nlm", "tv", "bm3d"}
    for name, cls in BASELINES.items():
        assert issubclass(cls, Baseline)
        assert cls.name == name
        baseline = cls()
        assert set(cls.default_grid) <= set(baseline.params)
        assert type(baseline).__name__ in repr(baseline)


# ----------------------------------------------------- contract (every one)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_2d_shape_dtype_and_input_untouched(name, slice_pair, slice_results):
    _, noisy = slice_pair
    prop = slice_results(name)  # asserts the input is not modified
    assert isinstance(prop, Proposal)
    assert prop.name == name
    assert prop.image.shape == noisy.shape
    assert prop.image.dtype == np.float32
    if name == "input":  # the input carries its noise ratio for the blender (test_input_rule.py)
        assert prop.kind == "noise_ratio" and prop.uncertainty.shape == noisy.shape
    else:
        assert prop.uncertainty is None
    assert np.isfinite(prop.image).all()


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_3d_shape_dtype_deterministic(name, volume_pair):
    _, noisy = volume_pair
    before = noisy.copy()
    baseline = make(name)
    first = baseline.propose(noisy).image
    np.testing.assert_array_equal(noisy, before)
    assert first.shape == noisy.shape and first.dtype == np.float32
    second = baseline.propose(Volume(noisy, (2.5, 0.7, 0.7))).image  # a Volume works alike
    np.testing.assert_array_equal(first, second)
    # slice by slice: the second slice alone gives the same result
    np.testing.assert_array_equal(baseline.propose(noisy[1]).image, first[1])


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_lowers_rmse_on_noisy_phantom(name, slice_pair, slice_results):
    clean, noisy = slice_pair
    out = slice_results(name).image
    before = rmse(noisy, clean)
    after = rmse(out, clean)
    assert before == pytest.approx(NOISE_HU, rel=0.05)
    if name == "input":
        np.testing.assert_array_equal(out, noisy)
    else:
        assert after < 0.9 * before, f"{name}: RMSE {after:.1f} HU vs input {before:.1f} HU"


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_body_mask_outside_unchanged(name, volume_pair):
    clean, noisy = volume_pair
    body = clean > -500
    lung = clean < -800
    out = make(name).propose(noisy, body_mask=body, lung_mask=lung).image
    np.testing.assert_array_equal(out[~body], noisy[~body])
    assert out.shape == noisy.shape


def test_input_baseline_is_identity(rng):
    x = rng.normal(-500, 300, (3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(InputBaseline().propose(x).image, x)
    ints = np.array([[-1024, 40], [400, 0]], np.int16)  # integer HU kept as HU
    np.testing.assert_array_equal(InputBaseline().propose(ints).image, ints.astype(np.float32))


# -------------------------------------------------------- noise estimation


def test_estimate_noise_sigma(slice_pair, rng):
    assert estimate_noise_sigma(rng.normal(0, NOISE_HU, (128, 128))) == pytest.approx(
        NOISE_HU, rel=0.08
    )
    clean, noisy = slice_pair
    inside = np.zeros(clean.shape, bool)
    inside[40:88, 56:72] = True  # flat soft tissue between the lungs
    assert estimate_noise_sigma(noisy, mask=inside) == pytest.approx(NOISE_HU, rel=0.15)
    # a linear ramp carries no noise
    ramp = np.add.outer(np.arange(32.0), 3 * np.arange(32.0))
    assert estimate_noise_sigma(ramp) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="2-D"):
        estimate_noise_sigma(np.zeros((2, 8, 8)))


def test_given_sigma_is_used(slice_pair):
    _, noisy = slice_pair
    weak = NonLocalMeansBaseline(sigma_hu=5.0).propose(noisy).image
    strong = NonLocalMeansBaseline(sigma_hu=NOISE_HU).propose(noisy).image
    assert np.std(weak - noisy) < np.std(strong - noisy)
    assert HU_SCALE == 1000.0


# ------------------------------------------------------------------- tuning


def test_tune_picks_the_minimum(slice_pair):
    clean, noisy = slice_pair
    body = np.ones(clean.shape, bool)
    pairs = [(noisy[:64], clean[:64], body[:64]), (noisy[64:], clean[64:], body[64:])]
    grid = {"weight": [0.005, 0.05, 0.5]}
    best, table = tune(TotalVariationBaseline, pairs, grid=grid)
    assert [row["weight"] for row in table] == grid["weight"]
    scores = [row["rmse_hu"] for row in table]
    assert best == {"weight": grid["weight"][int(np.argmin(scores))]}
    assert best == {"weight": 0.05}
    for row in table:
        assert row["seconds_per_slice"] >= 0
        expected = np.mean(
            [
                rmse(TotalVariationBaseline(weight=row["weight"]).propose(u).image, n)
                for u, n, _ in pairs
            ]
        )
        assert row["rmse_hu"] == pytest.approx(expected)


def test_tune_by_name_default_grid_and_ssim(slice_pair):
    clean, noisy = slice_pair
    body = clean > -500
    best, table = tune("gaussian", [(noisy, clean, body)])
    assert len(table) == len(GaussianBaseline.default_grid["sigma_px"])
    assert set(best) == {"sigma_px"}
    best_ssim, table_ssim = tune(
        GaussianBaseline,
        [(noisy, clean, body)],
        grid={"sigma_px": [0.3, 1.0]},
        metric="ssim_soft_tissue",
    )
    scores = [row["ssim_soft_tissue"] for row in table_ssim]
    assert best_ssim["sigma_px"] == [0.3, 1.0][int(np.argmax(scores))]  # SSIM is maximised
    best_in, table_in = tune(InputBaseline, [(noisy, clean, body)])
    assert best_in == {} and len(table_in) == 1
    assert table_in[0]["rmse_hu"] == pytest.approx(rmse(noisy, clean, mask=body))


def test_tune_errors(slice_pair):
    clean, noisy = slice_pair
    body = np.ones(clean.shape, bool)
    with pytest.raises(ValueError, match="metric"):
        tune(GaussianBaseline, [(noisy, clean, body)], metric="mae")
    with pytest.raises(ValueError, match="Unknown baseline"):
        tune("median", [(noisy, clean, body)])
    with pytest.raises(ValueError, match="list"):
        tune(GaussianBaseline, (noisy, clean, body))
    with pytest.raises(ValueError, match="one shape"):
        tune(GaussianBaseline, [(noisy, clean[:10], body)])
    with pytest.raises(ValueError, match="at least one"):
        tune(GaussianBaseline, [])


# ------------------------------------------------------------------- errors


def test_parameter_and_input_errors(slice_pair):
    _, noisy = slice_pair
    with pytest.raises(ValueError, match="sigma_px"):
        GaussianBaseline(sigma_px=-1)
    with pytest.raises(ValueError, match="patch_size"):
        NonLocalMeansBaseline(patch_size=5.5)
    with pytest.raises(ValueError, match="profile"):
        BM3DBaseline(profile="fast")
    with pytest.raises(ValueError, match="2-D slice"):
        GaussianBaseline().propose(noisy[0])
    with pytest.raises(ValueError, match="NaN"):
        bad = noisy.copy()
        bad[0, 0] = np.nan
        GaussianBaseline().propose(bad)
    with pytest.raises(ValueError, match="body_mask"):
        GaussianBaseline().propose(noisy, body_mask=np.ones((4, 4), bool))


def test_import_stays_light():
    code = (
        "import sys, hybrid, hybrid.baselines, hybrid.metrics; "
        "heavy = [m for m in ('skimage.restoration', 'skimage.metrics', 'bm3d', 'bm4d') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
