"""hybrid.metrics: RMSE in HU, windowed PSNR/SSIM, regions, evaluate_image."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid import Volume
from hybrid.metrics import (
    LUNG,
    METRIC_KEYS,
    REGIONS,
    SOFT_TISSUE,
    Window,
    apply_window,
    evaluate_image,
    psnr,
    rmse,
    ssim,
)

# ---------------------------------------------------------------- fixtures


def analytic_pair() -> tuple[np.ndarray, np.ndarray]:
    """A deterministic 64 x 64 reference and a distorted image (no RNG)."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    ref = (-300.0 + 500.0 * np.sin(x / 5.0) * np.cos(y / 7.0)).astype(np.float32)
    img = (ref + 60.0 * np.sin(1.3 * x + 0.7 * y)).astype(np.float32)
    return img, ref


# Golden values, produced once (scikit-image 0.26.0, numpy 2.4) with
#     from skimage.metrics import structural_similarity, peak_signal_noise_ratio
#     a, b = apply_window(img, w), apply_window(ref, w)      # img, ref = analytic_pair()
#     structural_similarity(b, a, data_range=1.0)            # defaults: 7x7 uniform window
#     peak_signal_noise_ratio(b, a, data_range=1.0)
# and, for the RMSE, np.sqrt(np.mean((img.astype(np.float64) - ref) ** 2)).
GOLDEN = {
    "ssim_lung": 0.9281925978792408,
    "ssim_soft_tissue": 0.898034007508888,
    "psnr_lung": 31.124430146828374,
    "psnr_soft_tissue": 25.119950794003042,
    "rmse_hu": 42.420668166097805,
}


@pytest.fixture
def pair():
    return analytic_pair()


@pytest.fixture
def noisy_volume(rng):
    ref = np.full((3, 48, 48), -1000.0, np.float32)
    ref[:, 8:40, 8:40] = 40.0
    ref[:, 12:36, 12:22] = -850.0
    img = ref + rng.normal(0, 70, ref.shape).astype(np.float32)
    return img, ref


# ------------------------------------------------------------- identities


@pytest.mark.parametrize("shape", [(32, 32), (3, 32, 32)])
def test_identity(shape, rng):
    x = rng.normal(-300, 400, shape).astype(np.float32)
    assert rmse(x, x) == 0.0
    assert psnr(x, x, window=LUNG) == np.inf
    for w in (LUNG, SOFT_TISSUE):
        assert ssim(x, x, window=w) == pytest.approx(1.0, abs=1e-12)
    mask = np.zeros(shape, bool)
    mask[..., 10:20, 5:25] = True
    assert ssim(x, x, window=SOFT_TISSUE, mask=mask) == pytest.approx(1.0, abs=1e-12)
    assert rmse(x, x, mask=mask) == 0.0


# ----------------------------------------------------------- golden values


def test_golden_values(pair):
    img, ref = pair
    assert rmse(img, ref) == pytest.approx(GOLDEN["rmse_hu"], rel=1e-9)
    assert ssim(img, ref, window=LUNG) == pytest.approx(GOLDEN["ssim_lung"], rel=1e-9)
    assert ssim(img, ref, window=SOFT_TISSUE) == pytest.approx(GOLDEN["ssim_soft_tissue"], rel=1e-9)
    assert psnr(img, ref, window=LUNG) == pytest.approx(GOLDEN["psnr_lung"], rel=1e-9)
    assert psnr(img, ref, window=SOFT_TISSUE) == pytest.approx(GOLDEN["psnr_soft_tissue"], rel=1e-9)


def test_matches_scikit_image_live(pair):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    img, ref = pair
    for w in (LUNG, SOFT_TISSUE):
        a, b = apply_window(img, w), apply_window(ref, w)
        assert ssim(img, ref, window=w) == pytest.approx(
            structural_similarity(b, a, data_range=1.0), rel=1e-12
        )
        # scikit-image squares the float32 difference; we accumulate in float64
        assert psnr(img, ref, window=w) == pytest.approx(
            peak_signal_noise_ratio(b, a, data_range=1.0), rel=1e-9
        )


def test_volume_ssim_is_mean_of_slices(noisy_volume):
    from skimage.metrics import structural_similarity

    img, ref = noisy_volume
    per_slice = [
        structural_similarity(apply_window(r, LUNG), apply_window(i, LUNG), data_range=1.0)
        for i, r in zip(img, ref)
    ]
    assert ssim(img, ref, window=LUNG) == pytest.approx(np.mean(per_slice), rel=1e-12)
    # a Volume is accepted and gives the same value
    assert ssim(Volume(img), Volume(ref), window=LUNG) == ssim(img, ref, window=LUNG)


def test_window_by_name(pair):
    img, ref = pair
    assert psnr(img, ref, window="lung") == psnr(img, ref, window=LUNG)
    assert ssim(img, ref, window="soft_tissue") == ssim(img, ref, window=SOFT_TISSUE)


# ------------------------------------------------------------------ regions


def test_pixels_outside_mask_do_not_count(noisy_volume):
    img, ref = noisy_volume
    mask = np.zeros(img.shape, bool)
    mask[:, 14:30, 14:30] = True
    changed = img.copy()
    # far enough (> 3 px, the SSIM window's half-width) from the mask for SSIM too
    far = np.ones(img.shape, bool)
    far[:, 10:34, 10:34] = False
    changed[far] = 3000.0
    assert rmse(changed, ref, mask=mask) == rmse(img, ref, mask=mask)
    for w in (LUNG, SOFT_TISSUE):
        assert psnr(changed, ref, window=w, mask=mask) == psnr(img, ref, window=w, mask=mask)
        assert ssim(changed, ref, window=w, mask=mask) == ssim(img, ref, window=w, mask=mask)
    # and without the mask the change shows
    assert rmse(changed, ref) > rmse(img, ref)
    assert ssim(changed, ref, window=LUNG) < ssim(img, ref, window=LUNG)


def test_mask_value_is_the_region_mean():
    ref = np.zeros((16, 16), np.float32)
    img = ref.copy()
    img[:8] = 10.0
    img[8:] = 20.0
    top = np.zeros((16, 16), bool)
    top[:8] = True
    assert rmse(img, ref, mask=top) == pytest.approx(10.0)
    assert rmse(img, ref, mask=~top) == pytest.approx(20.0)
    assert rmse(img, ref) == pytest.approx(np.sqrt((100 + 400) / 2))
    # 0/1 integer masks are accepted
    assert rmse(img, ref, mask=top.astype(np.uint8)) == pytest.approx(10.0)


# ------------------------------------------------------------------ windows


def test_apply_window_maps_and_clips():
    w = Window("test", 0.0, 200.0)
    out = apply_window(np.array([-500.0, -100.0, 0.0, 100.0, 500.0]), w)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert out.dtype == np.float32
    assert LUNG.low == -1350 and LUNG.high == 150
    assert SOFT_TISSUE.low == -160 and SOFT_TISSUE.high == 240
    # integer CT is used as HU, not rescaled like skimage.img_as_float would
    np.testing.assert_allclose(apply_window(np.array([-600], np.int16), LUNG), [0.5])


def test_values_outside_window_clip():
    # both below the lung window's low end (-1350): different in HU, same in the window
    ref = np.full((3, 16, 16), -1400.0, np.float32)
    img = np.full((3, 16, 16), -2000.0, np.float32)
    assert rmse(img, ref) == pytest.approx(600.0)
    assert psnr(img, ref, window=LUNG) == np.inf
    assert ssim(img, ref, window=LUNG) == pytest.approx(1.0)
    # bone vs contrast, both above the soft-tissue window's high end (240)
    ref[:] = 300.0
    img[:] = 1200.0
    assert psnr(img, ref, window=SOFT_TISSUE) == np.inf
    assert ssim(img, ref, window=SOFT_TISSUE) == pytest.approx(1.0)
    # while the lung window (high end 150) ... also clips both: same
    assert psnr(img, ref, window=LUNG) == np.inf
    # one inside the window: difference counts, in window units (width 400 HU)
    img[:] = 40.0  # 0.5 in the soft-tissue window, ref clips to 1.0
    assert psnr(img, ref, window=SOFT_TISSUE) == pytest.approx(10 * np.log10(1 / 0.25))


# ------------------------------------------------------------------- errors


def test_errors(pair):
    img, ref = pair
    with pytest.raises(ValueError, match="same shape"):
        rmse(img, ref[:-1])
    with pytest.raises(ValueError, match="NaN"):
        bad = img.copy()
        bad[3, 3] = np.nan
        ssim(bad, ref, window=LUNG)
    with pytest.raises(ValueError, match="NaN"):
        bad = ref.copy()
        bad[0, 0] = np.inf
        psnr(img, bad, window=LUNG)
    with pytest.raises(ValueError, match="empty mask"):
        rmse(img, ref, mask=np.zeros(img.shape, bool))
    with pytest.raises(ValueError, match="shape"):
        rmse(img, ref, mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="boolean"):
        rmse(img, ref, mask=np.full(img.shape, 0.5))
    with pytest.raises(ValueError, match="Window"):
        psnr(img, ref, window=None)
    with pytest.raises(ValueError, match="one of"):
        ssim(img, ref, window="bone")
    border = np.zeros(img.shape, bool)
    border[0, :] = True
    with pytest.raises(ValueError, match="border"):
        ssim(img, ref, window=LUNG, mask=border)
    with pytest.raises(ValueError, match="at least 7"):
        ssim(img[:5, :5], ref[:5, :5], window=LUNG)
    with pytest.raises(ValueError, match="2-D"):
        rmse(img[0], ref[0])


# ----------------------------------------------------------- evaluate_image


def test_evaluate_image(noisy_volume):
    img, ref = noisy_volume
    body = ref > -500
    lung = np.zeros(ref.shape, bool)
    lung[:, 12:36, 12:22] = True
    body |= lung
    res = evaluate_image(img, ref, lung_mask=lung, body_mask=body)
    assert tuple(res) == REGIONS
    for region in REGIONS:
        assert tuple(res[region]) == METRIC_KEYS
        assert not any(np.isnan(v) for v in res[region].values())
    # lung parenchyma (-850 HU) clips to 0 in the soft-tissue window: identical there
    assert res["lung"]["psnr_soft_tissue"] == np.inf
    regions = {"body": body, "lung": lung & body, "non_lung": body & ~lung}
    for region, m in regions.items():
        assert res[region]["rmse_hu"] == pytest.approx(rmse(img, ref, mask=m))
        assert res[region]["ssim_lung"] == pytest.approx(ssim(img, ref, window=LUNG, mask=m))
        assert res[region]["ssim_soft_tissue"] == pytest.approx(
            ssim(img, ref, window=SOFT_TISSUE, mask=m)
        )
        assert res[region]["psnr_lung"] == pytest.approx(psnr(img, ref, window=LUNG, mask=m))
        assert res[region]["psnr_soft_tissue"] == pytest.approx(
            psnr(img, ref, window=SOFT_TISSUE, mask=m)
        )
    assert res["body"]["rmse_hu"] == pytest.approx(70, rel=0.1)


def test_evaluate_image_empty_region(noisy_volume):
    img, ref = noisy_volume
    body = np.ones(ref.shape, bool)
    no_lung = np.zeros(ref.shape, bool)
    with pytest.raises(ValueError, match="'lung' region"):
        evaluate_image(img, ref, lung_mask=no_lung, body_mask=body)
    res = evaluate_image(img, ref, lung_mask=no_lung, body_mask=body, on_empty="nan")
    assert all(np.isnan(v) for v in res["lung"].values())
    assert res["non_lung"] == res["body"]
    with pytest.raises(ValueError, match="body_mask"):
        evaluate_image(img, ref, lung_mask=no_lung, body_mask=no_lung, on_empty="nan")
