"""The noise-aware CNN pair: noise estimate, multi-dose sampler, U-Net, resumable training."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from hybrid.cnn.config import CNNConfig
from hybrid.cnn.multidose import MultiDoseSampler, make_sources, noise_scale
from hybrid.cnn.noise import estimate_noise

pytest.importorskip("tensorflow")

ROOT = Path(__file__).resolve().parents[1]


def _anatomy(shape=(3, 96, 96), seed=0):
    """A body of 40 HU soft tissue with two lungs (-850 HU), air around; masks."""
    z, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.47 * w)) ** 2 < 1
    lung = np.zeros((h, w), bool)
    for cx in (0.3 * w, 0.7 * w):
        lung |= ((yy - h / 2) / (0.25 * h)) ** 2 + ((xx - cx) / (0.14 * w)) ** 2 < 1
    img = np.where(body, 40.0, -1000.0)
    img = np.where(lung, -850.0, img).astype(np.float32)
    return (np.repeat(img[None], z, 0), np.repeat(lung[None], z, 0),
            np.repeat(body[None], z, 0))


def _noise(shape, sigma, rng, corr=0.7):
    n = gaussian_filter(rng.standard_normal(shape), (0, corr, corr))
    return (n / n.std() * sigma).astype(np.float32)


def _case(seed=0, shape=(3, 96, 96), sigma_q=10.0, kind="real"):
    rng = np.random.default_rng(seed)
    clean, lung, body = _anatomy(shape)
    nd = clean + _noise(shape, sigma_q, rng)
    f0, faug = 0.02, 0.05
    uld = nd + _noise(shape, sigma_q * np.sqrt(1 / f0 - 1), rng)
    aug = nd + _noise(shape, sigma_q * np.sqrt(1 / faug - 1), rng)
    return types.SimpleNamespace(
        case_id=f"toy{seed}", patient_id=f"toy{seed}", kind=kind, nd=nd,
        uld=types.SimpleNamespace(array=uld), uld_aug=aug, lung_mask=lung, body_mask=body,
        meta={"kernel": "standard", "dose_fraction": f0, "aug_dose_fraction": faug})


# ------------------------------------------------------------------ noise estimate
def test_noise_estimate_tracks_dose_within_12_percent():
    rng = np.random.default_rng(1)
    clean, _, body = _anatomy((2, 128, 128))
    sigma_q = 10.0
    estimates = []
    for f in (1.0, 0.25, 0.05, 0.01):
        img = clean + _noise(clean.shape, sigma_q / np.sqrt(f), rng)
        est = estimate_noise(img, body)
        true = sigma_q / np.sqrt(f)
        assert est.measured.all()
        np.testing.assert_allclose(est.sigma_hu, true, rtol=0.12)
        estimates.append(est.sigma_hu.mean())
    assert np.all(np.diff(estimates) > 0)  # monotone in dose


def test_noise_texture_orders_kernels():
    rng = np.random.default_rng(2)
    clean, _, body = _anatomy((1, 128, 128))
    white = estimate_noise(clean + 30 * rng.standard_normal(clean.shape), body)
    smooth = estimate_noise(clean + _noise(clean.shape, 30, rng, corr=1.5), body)
    assert smooth.texture[0] < 0.55 < white.texture[0]
    assert smooth.kernel_class == ("smooth",) and white.kernel_class == ("sharp",)


def test_noise_estimate_without_soft_tissue_falls_back():
    est = estimate_noise(np.full((2, 64, 64), -1000.0, np.float32))
    assert not est.measured.any() and np.all(est.sigma_hu > 0)


def test_noise_estimate_on_the_body_box_equals_the_whole_slice():
    """The estimate works on each slice's body box (for speed); the numbers are those of the
    whole slice, to rounding (1e-9 relative: the filters' running sums start elsewhere)."""
    from hybrid.cnn.noise import _SMOOTHING, slice_noise_variances, tissue_mask

    rng = np.random.default_rng(3)
    clean, _, body = _anatomy((2, 160, 192))
    body[:, :, :40] = False  # a body well inside the slice: the box is a real crop
    img = clean + _noise(clean.shape, 25.0, rng)
    est = estimate_noise(img, body)
    for k in range(2):
        v, dv, n = slice_noise_variances(img[k], tissue_mask(img[k], body[k],
                                                             smoothing=_SMOOTHING[0]))
        assert n >= 200
        np.testing.assert_allclose(est.sigma_hu[k], np.sqrt(v), rtol=1e-9)
        np.testing.assert_allclose(est.texture[k], np.sqrt(dv / 2) / np.sqrt(v), rtol=1e-9)
    empty = estimate_noise(img, np.zeros_like(body))
    assert not empty.measured.any()


# ------------------------------------------------------------------ sampler
@pytest.fixture(scope="module")
def sources():
    return make_sources([_case(0), _case(1)], kernels=("standard",))


def test_rescaled_noise_has_the_requested_sigma(sources):
    s = MultiDoseSampler(sources, region="body", patch_size=32, seed=0, augment=False)
    for f in (0.005, 0.02, 0.1, 0.5):
        uld, nd, maps, info = s.sample(64, rng=np.random.default_rng(3), doses=[f],
                                       return_info=True)
        measured = np.sqrt(np.mean((uld - nd) ** 2))
        expected = np.sqrt(np.mean(info["added_sigma_hu"] ** 2))
        assert measured == pytest.approx(expected, rel=0.10)
        assert expected == pytest.approx(10.0 * np.sqrt(1 / f - 1), rel=0.15)
        assert np.all(np.diff(maps[:, 0]) == 0) or maps[:, 0].std() < 0.2 * maps[:, 0].mean()
    uld, nd, maps = s.sample(16, rng=np.random.default_rng(4), doses=[1.0])
    np.testing.assert_array_equal(uld, nd)  # f = 1: the target is the input
    assert noise_scale(1.0, 0.02, independent=True) == 0


def test_quieter_phantom_targets_keep_the_share_of_their_own_noise(tmp_path):
    """A phantom's noise-free scan (same blur, no noise) leaves exactly each scan's own
    noise: the normal dose's and the low dose's are uncorrelated (|r| < 0.05; 10^4 body
    pixels give a standard error of 0.01).  With ``phantom_noise_scale`` 0.5 the source's
    target is that scan plus half the normal dose's own noise (to float rounding), its
    realisations half the low doses' own noise, and a second call reads the cached scan."""
    from hybrid.data import make_phantom_case, noise_free_scan

    case = make_phantom_case(6, shape=(2, 128, 128))
    clean = noise_free_scan(case)
    b = case.body_mask
    own, low = (case.nd - clean)[b], (case.uld.array - clean)[b]
    assert abs(np.corrcoef(own, low)[0, 1]) < 0.05
    # the residual noise of the noise-free scan is 1 % of the normal dose's: own noise is all
    # there is (2 HU at this 128-pixel size); 2 %: sqrt(50) = 7x the normal dose's noise
    assert np.std(own) > 1.0 and np.std(low) > 4 * np.std(own)
    (src,) = make_sources([case], kernels=("smooth",), cache_dir=tmp_path,
                          phantom_noise_scale=0.5)
    np.testing.assert_allclose(src.nd - clean, 0.5 * (case.nd - clean), atol=1e-3)
    np.testing.assert_allclose(src.noise[0], 0.5 * (case.uld.array - clean), atol=1e-3)
    assert not src.independent and list(tmp_path.glob("clean-P06-*.npy"))
    (again,) = make_sources([case], kernels=("smooth",), cache_dir=tmp_path,
                            phantom_noise_scale=0.5)
    np.testing.assert_array_equal(again.nd, src.nd)
    with pytest.raises(ValueError, match="phantom_noise_scale"):
        make_sources([case], phantom_noise_scale=1.5)


def test_sampler_batches_are_stateless_and_mix_doses(sources):
    s = MultiDoseSampler(sources, region="body", patch_size=32, seed=5)
    a, b = s.batch(8, epoch=3, step=2), s.batch(8, epoch=3, step=2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    _, _, _, info = s.sample(400, rng=np.random.default_rng(0), return_info=True)
    f = info["dose"]
    assert 0.05 < np.mean(f == 1.0) < 0.2 and f.min() < 0.01 and f.max() == 1.0


def test_slice_weighting_draws_sources_by_their_slices():
    """A 1-slice and a 6-slice source: "uniform" draws each half the time, "slices" 1:6.
    4000 draws: the binomial standard error of a share is below 0.008, so 0.03 is ~4 SE."""
    srcs = make_sources([_case(0, shape=(1, 96, 96)), _case(1, shape=(6, 96, 96))],
                        kernels=("standard",))
    for weighting, share in (("uniform", 0.5), ("slices", 6 / 7)):
        s = MultiDoseSampler(srcs, region="body", patch_size=32, seed=0, weighting=weighting)
        _, _, _, info = s.sample(4000, rng=np.random.default_rng(0), return_info=True)
        assert np.mean(info["source"] == 1) == pytest.approx(share, abs=0.03)
    with pytest.raises(ValueError, match="Expected one of"):
        MultiDoseSampler(srcs, region="body", patch_size=32, weighting="cases")


# ------------------------------------------------------------------ the U-Net
UNET = dict(region="body", architecture="unet", noise_input=True, depth=2, width=24, scales=3,
            bottleneck_dilations=(1, 2, 4, 8), patch_size=64, loss="huber")


def _measured_receptive_field(model, last: str, n: int) -> int:
    """Side of the gradient support of the central output pixel, the layer ``last`` (which
    starts at zero) given random weights, on a random n x n input (ReLUs active)."""
    import tensorflow as tf

    res = model.get_layer(last)
    res.set_weights([np.random.default_rng(0).standard_normal(w.shape).astype(np.float32)
                     for w in res.get_weights()])
    rng = np.random.default_rng(1)
    x = tf.Variable(rng.standard_normal((1, n, n, 1)).astype(np.float32))
    m = tf.constant(rng.random((1, n, n, 2)).astype(np.float32))
    with tf.GradientTape() as tape:
        y = model([x, m], training=False)[0, n // 2, n // 2, 0]
    g = np.abs(tape.gradient(y, x).numpy()[0, :, :, 0]) > 0
    rows, cols = np.flatnonzero(g.any(1)), np.flatnonzero(g.any(0))
    return int(max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1)


def test_unet_shape_and_receptive_field_at_least_100_px():

    from hybrid.cnn.models import build_model, predict_hu

    cfg = CNNConfig(**UNET)
    assert cfg.receptive_field >= 100
    model = build_model(cfg, seed=0)
    out = predict_hu(model, cfg, np.zeros((2, 37, 50), np.float32),
                     noise=np.ones((2, 2), np.float32))
    assert out.shape == (2, 37, 50)
    measured = _measured_receptive_field(model, "residual", 256)
    assert 100 <= measured <= cfg.receptive_field


def test_shuffle_model_identity_shape_and_receptive_field():
    """FFDNet-style "shuffle": starts as the identity on any slice size, and the measured
    receptive field (gradient support of one output pixel) is within the stated bound
    and more than twice the plain stack's of the same depth."""

    from hybrid.cnn.models import build_model, predict_hu

    cfg = CNNConfig(region="body", architecture="shuffle", noise_input=True, depth=6, width=8,
                    patch_size=32)
    assert cfg.size_multiple == 2 and CNNConfig.from_json(cfg.to_json()) == cfg
    model = build_model(cfg, seed=0)
    x = np.random.default_rng(0).normal(0, 50, (2, 37, 50)).astype(np.float32)
    np.testing.assert_array_equal(predict_hu(model, cfg, x, noise=np.ones((2, 2), np.float32)), x)
    measured = _measured_receptive_field(model, "residual_half", 64)
    plain = CNNConfig(region="body", depth=6, width=8).receptive_field
    assert 2 * plain <= measured <= cfg.receptive_field


def test_shipped_configs_keep_their_json():
    cfg = CNNConfig.for_region("body")
    assert "architecture" not in cfg.to_dict()
    assert CNNConfig.from_dict(cfg.to_dict()) == cfg
    u = CNNConfig(**UNET)
    assert CNNConfig.from_json(u.to_json()) == u


def test_pair_save_load_round_trip(tmp_path):
    from hybrid.cnn.infer import CNNPair

    lung = CNNConfig(**{**UNET, "region": "lung", "width": 8, "patch_size": 32})
    body = CNNConfig(**{**UNET, "width": 8})
    pair = CNNPair.build(lung, body, seed=0)
    for m in (pair.lung_model, pair.body_model):  # not the identity
        r = m.get_layer("residual")
        r.set_weights([0.01 * np.ones(w.shape, np.float32) for w in r.get_weights()])
    nd, lmask, _ = _anatomy((2, 96, 96))
    vol = nd + _noise(nd.shape, 50, np.random.default_rng(0))
    before = pair.with_settings(precision="float32").propose(vol, lung_mask=lmask).image
    pair.save(tmp_path / "pair")
    loaded = CNNPair.load(tmp_path / "pair", precision="float32")
    np.testing.assert_array_equal(loaded.propose(vol, lung_mask=lmask).image, before)
    weaker = loaded.with_settings(strength=0.0).propose(vol, lung_mask=lmask).image
    assert not np.array_equal(weaker, before)


# ------------------------------------------------------------------ training
TINY = dict(region="body", architecture="unet", noise_input=True, depth=2, width=8, scales=2,
            bottleneck_dilations=(1, 2), patch_size=32, loss="mse", learning_rate=3e-3)


def test_resume_equals_uninterrupted(tmp_path, sources):
    from hybrid.cnn.resumable import train_noise_aware

    cfg = CNNConfig(**TINY)
    kw = dict(epochs=3, steps_per_epoch=12, batch_size=8, val_patches=8, seed=0)
    full = train_noise_aware(cfg, sources, sources[:1], out_dir=tmp_path / "a", **kw)
    train_noise_aware(cfg, sources, sources[:1], out_dir=tmp_path / "b", stop_after=1, **kw)
    resumed = train_noise_aware(cfg, sources, sources[:1], out_dir=tmp_path / "b", resume=True,
                                **kw)
    assert resumed.epochs_run == full.epochs_run == 3
    for wa, wb in zip(full.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert full.history["val_rmse_hu"] == resumed.history["val_rmse_hu"]
    assert (tmp_path / "a" / "progress.png").is_file() and (tmp_path / "a" / "log.csv").is_file()


def test_noise_map_conditions_the_output(sources):
    """After a short training on a toy problem, a model told sigma = 0 changes its input
    less than the same model told the input's true sigma."""
    import keras

    from hybrid.cnn.models import build_model, predict_hu
    from hybrid.cnn.resumable import _compile, _inputs

    cfg = CNNConfig(region="body", noise_input=True, depth=4, width=16, patch_size=32,
                    loss="mse", learning_rate=3e-3)
    s = MultiDoseSampler(sources, region="body", patch_size=32, seed=2)
    uld, nd, maps = s.sample(512, rng=np.random.default_rng(0))
    x, m = _inputs(cfg, uld, maps)
    keras.utils.set_random_seed(0)
    model = _compile(build_model(cfg, seed=0), cfg, 400)
    model.fit([x, m], cfg.normalize(nd)[..., None], batch_size=16, epochs=6, verbose=0)
    uld, _, maps = s.sample(16, rng=np.random.default_rng(9), doses=[0.05])
    change = {}
    for sigma in (0.0, float(maps[:, 0].mean())):
        out = predict_hu(model, cfg, uld, noise=np.tile([[sigma, maps[0, 1]]], (16, 1)))
        change[sigma > 0] = np.sqrt(np.mean((out - uld) ** 2))
    assert change[False] < 0.7 * change[True]


def test_recipe_configs_load_and_shipped_is_unchanged():
    from hybrid import recipe

    shipped = recipe.load_config("shipped")
    assert shipped.cnn.noise is None and "noise" not in shipped.to_dict()["cnn"]
    for name in ("noise_aware", "noise_aware_fast"):
        cfg = recipe.load_config(name)
        assert cfg.cnn.noise["dose_range"] == [0.005, 1.0]
        body = CNNConfig.from_dict(cfg.cnn.body)
        assert body.noise_input and body.architecture == "unet"
    assert CNNConfig.from_dict(recipe.load_config("noise_aware").cnn.body).receptive_field >= 100
    from hybrid.artifacts import default_asset_paths

    plain = "experiments/checkpoints/plain_pair/model"  # the plain pair shipped before the U-Net
    plain_body = CNNConfig.from_json(ROOT / plain / "body.config.json")
    assert plain_body.architecture == "plain"
    shipped_body = CNNConfig.from_json(default_asset_paths()["cnn"] / "body.config.json")
    assert shipped_body.architecture == "unet" and shipped_body.receptive_field >= 100
    for name in ("noise_aware_warm", "noise_aware_native", "noise_aware_uniform"):
        cfg = recipe.load_config(name)  # the warm starts: the plain layers plus noise maps
        assert cfg.cnn.noise["warm_start"] == plain
        body = CNNConfig.from_dict(cfg.cnn.body)
        assert body.noise_input and body.architecture == "plain"
        assert (body.depth, body.width) == (plain_body.depth, plain_body.width)


def test_estimate_survives_very_noisy_slices():
    rng = np.random.default_rng(3)
    clean, _, body = _anatomy((1, 160, 160))
    est = estimate_noise(clean + 600 * rng.standard_normal(clean.shape), body)
    assert est.measured.all() and est.sigma_hu[0] == pytest.approx(600, rel=0.15)


def test_warm_start_copies_a_plain_model_whatever_the_noise_maps():
    """A noise-aware model warm-started from a trained plain model of the same layers gives
    that model's output exactly, for any noise maps (the noise channels start at zero);
    a source of another width is refused with the shapes named."""
    from hybrid.cnn.models import build_model, predict_hu
    from hybrid.cnn.resumable import warm_start

    plain_cfg = CNNConfig(region="body", depth=4, width=8, patch_size=32)
    plain = build_model(plain_cfg, seed=3)
    res = plain.get_layer("residual")  # not the identity
    res.set_weights([0.05 * np.ones(w.shape, np.float32) for w in res.get_weights()])
    aware_cfg = CNNConfig(region="body", noise_input=True, depth=4, width=8, patch_size=32)
    aware = build_model(aware_cfg, seed=0)
    assert warm_start(aware, plain) == ["conv0", "conv1", "conv2", "residual"]
    x = np.random.default_rng(1).normal(0, 80, (2, 40, 36)).astype(np.float32)
    want = predict_hu(plain, plain_cfg, x)
    assert np.abs(want - x).max() > 1.0
    for maps in ([[0.0, 1.0], [0.0, 1.0]], [[0.9, 0.3], [2.0, 1.5]]):
        got = predict_hu(aware, aware_cfg, x, noise=np.asarray(maps, np.float32))
        np.testing.assert_allclose(got, want, atol=1e-3)  # float32 sums in another order
    wider = build_model(CNNConfig(region="body", noise_input=True, depth=4, width=12,
                                  patch_size=32), seed=0)
    with pytest.raises(ValueError, match=r"conv0.*\(3, 3, 1, 8\).*\(3, 3, 3, 12\)"):
        warm_start(wider, plain)


def test_warm_start_path_is_the_repositorys_whatever_the_working_directory(tmp_path, monkeypatch):
    """A config's relative ``warm_start`` names a path in the repository (as the configs in
    experiments/configs write it), not in the working directory; a missing one is refused
    with the path looked for."""
    from hybrid._paths import REPO_ROOT
    from hybrid.artifacts import default_asset_paths
    from hybrid.cnn.resumable import _warm_start_path

    monkeypatch.chdir(tmp_path)
    assert _warm_start_path("shipped") == Path(default_asset_paths()["cnn"])
    assert _warm_start_path("hybrid/assets/cnn") == REPO_ROOT / "hybrid/assets/cnn"
    assert _warm_start_path(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match=r"'no/such/pair'.*looked for .*no/such/pair"):
        _warm_start_path("no/such/pair")
