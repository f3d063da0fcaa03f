"""Tests of hybrid.cnn: configuration, models, sampler, training and whole-slice inference.

Synthetic data only: a disc "body" at 40 HU holding two disc "lungs" at -850 HU, air
outside; ND = clean + light noise, ULD = clean + strong Gaussian noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from hybrid.cnn.config import CNNConfig
from hybrid.cnn.sampler import PatchSampler, as_training_pairs, split_pairs
from hybrid.volume import Volume

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from hybrid.cnn.infer import CNNPair, Proposal, blend_weight  # noqa: E402
from hybrid.cnn.models import build_model, compile_model, get_strategy, set_threads  # noqa: E402
from hybrid.cnn.train import train_model, train_pair  # noqa: E402

set_threads(2)

TINY = {"depth": 3, "width": 8}

# Keras' own numpy conversion of variables (not ours) triggers this with NumPy 2.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(autouse=True)
def _clear_session():
    keras.backend.clear_session()
    yield
    keras.backend.clear_session()


def phantom(z=3, size=160, *, seed=0, uld_noise=60.0, nd_noise=8.0):
    """Clean phantom, masks, ND and ULD arrays (z, size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = (size - 1) / 2
    body = (yy - c) ** 2 + (xx - c) ** 2 <= (0.47 * size) ** 2
    r = 0.14 * size
    lung = ((yy - c) ** 2 + (xx - 0.28 * size) ** 2 <= r**2) | (
        (yy - c) ** 2 + (xx - 0.72 * size) ** 2 <= r**2
    )
    clean = np.where(lung, -850.0, np.where(body, 40.0, -1000.0)).astype(np.float32)
    clean = np.broadcast_to(clean, (z, size, size))
    nd = (clean + rng.normal(0, nd_noise, clean.shape)).astype(np.float32)
    uld = (clean + rng.normal(0, uld_noise, clean.shape)).astype(np.float32)
    lungs = np.broadcast_to(lung, clean.shape).copy()
    bodies = np.broadcast_to(body, clean.shape).copy()
    return uld, nd, lungs, bodies


@pytest.fixture(scope="module")
def pairs():
    return [phantom(z=3, seed=s) + (f"p{s}",) for s in range(3)]


def randomize(model, seed=0, scale=0.05):
    rng = np.random.default_rng(seed)
    model.set_weights(
        [rng.normal(0, scale, w.shape).astype(np.float32) for w in model.get_weights()]
    )


def constant_residual(model, config, residual_hu):
    """Make a residual model output ULD + residual_hu everywhere."""
    weights = [np.zeros_like(w) for w in model.get_weights()]
    weights[-1][...] = residual_hu / config.hu_per_unit  # bias of the last conv
    model.set_weights(weights)


# ---------------------------------------------------------------------------- import
def test_import_hybrid_does_not_import_tensorflow():
    code = (
        "import sys, hybrid, hybrid.cnn, hybrid.cnn.config, hybrid.cnn.sampler\n"
        "cfg = hybrid.cnn.CNNConfig()\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------- config
def test_config_round_trip(tmp_path):
    cfg = CNNConfig.for_region(
        "body",
        depth=6,
        width=16,
        kernel_size=5,
        dilation=(1, 2, 4, 2, 1, 1),
        normalization="window",
        window_center=40.0,
        window_width=400.0,
        loss="huber",
        learning_rate=3e-4,
        residual=False,
    )
    assert cfg.patch_size == 64
    assert CNNConfig.for_region("lung").patch_size == 32
    assert CNNConfig.from_dict(cfg.to_dict()) == cfg
    assert CNNConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert CNNConfig.from_json(tmp_path / "c.json") == cfg
    assert json.loads(cfg.to_json())["dilation"] == [1, 2, 4, 2, 1, 1]
    assert cfg.receptive_field == 1 + 4 * (1 + 2 + 4 + 2 + 1 + 1)
    with pytest.raises(dataclasses_frozen_error()):
        cfg.depth = 3  # frozen
    hu = np.array([-1000.0, -850.0, 40.0, 1000.0], np.float32)
    lin = CNNConfig()
    np.testing.assert_allclose(lin.normalize(hu), (hu + 1000) / 1000, rtol=1e-6)
    np.testing.assert_allclose(lin.denormalize(lin.normalize(hu)), hu, atol=1e-3)


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"width": 0},
            "Invalid value for argument `width`. Expected a strictly positive value. Received width=0",
        ),
        (
            {"depth": 1},
            "Invalid value for argument `depth`. Expected an integer >= 2. Received depth=1",
        ),
        ({"kernel_size": 4}, "Expected an odd value"),
        ({"region": "liver"}, "Invalid value for argument `region`"),
        ({"normalization": "zscore"}, "Invalid value for argument `normalization`"),
        ({"dilation": (1, 2)}, "Invalid value for argument `dilation`"),
        ({"dilation": 0}, "Received dilation=0"),
        ({"hu_scale": -1.0}, "Received hu_scale=-1.0"),
        ({"learning_rate": float("nan")}, "Invalid value for argument `learning_rate`"),
        ({"patch_size": 2}, "Invalid value for argument `patch_size`"),
        ({"width": 8.5}, "Received width=8.5"),
        ({"residual": "yes"}, "Invalid value for argument `residual`"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError) as info:
        CNNConfig(**kwargs)
    assert message in str(info.value)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="Invalid keys for CNNConfig: \\['widht'\\]"):
        CNNConfig.from_dict({"widht": 3})


# ---------------------------------------------------------------------------- models
@pytest.mark.parametrize("shape", [(1, 33, 47), (2, 64, 64), (1, 31, 30), (1, 7, 5)])
@pytest.mark.parametrize("region", ["lung", "body"])
def test_model_output_shape_any_slice_size(shape, region):
    cfg = CNNConfig.for_region(region, depth=4, width=4, dilation=2)
    model = build_model(cfg)
    x = np.zeros(shape + (1,), np.float32)
    assert tuple(model(x).shape) == shape + (1,)


def test_residual_model_starts_as_identity():
    cfg = CNNConfig.for_region("lung", **TINY)
    x = np.random.default_rng(0).normal(size=(2, 19, 23, 1)).astype(np.float32)
    np.testing.assert_allclose(build_model(cfg)(x).numpy(), x, atol=1e-6)


@pytest.mark.parametrize("normalization", ["linear", "window"])
def test_residual_is_added_in_hu_even_outside_the_window(normalization):
    from hybrid.cnn.models import predict_hu

    cfg = CNNConfig.for_region(
        "body", **TINY, normalization=normalization, window_center=40.0, window_width=400.0
    )
    model = build_model(cfg)
    constant_residual(model, cfg, -25.0)
    hu = np.array(
        [[[-1000.0, -850.0, 40.0, 900.0]]], np.float32
    )  # -1000, -850, 900 lie outside the window
    np.testing.assert_allclose(predict_hu(model, cfg, hu), hu - 25.0, atol=1e-2)


def test_set_threads_rejects_zero():
    with pytest.raises(ValueError, match="Received n=0"):
        set_threads(0)


def test_build_model_rejects_non_config():
    with pytest.raises(ValueError, match="Expected a hybrid.cnn.CNNConfig"):
        build_model({"depth": 3})


def test_one_training_step_lowers_loss(pairs):
    cfg = CNNConfig.for_region("lung", **TINY, learning_rate=1e-3)
    uld, nd = PatchSampler(pairs, region="lung", seed=0).sample(16)
    x, y = cfg.normalize(uld)[..., None], cfg.normalize(nd)[..., None]
    model = compile_model(build_model(cfg), cfg)
    before = float(model.evaluate(x, y, verbose=0)[0])
    model.train_on_batch(x, y)
    after = float(model.evaluate(x, y, verbose=0)[0])
    assert after < before


# ---------------------------------------------------------------------------- sampler
def test_sampler_lung_patches_inside_lungs(pairs):
    s = PatchSampler(pairs, region="lung", seed=1)
    uld, nd, lung, body = s.sample(200, return_masks=True)
    assert uld.shape == nd.shape == (200, 32, 32) and uld.dtype == np.float32
    assert lung.mean(axis=(1, 2)).mean() >= 0.9
    assert s.n_patients == 3


def test_sampler_body_patches_outside_lungs(pairs):
    s = PatchSampler(pairs, region="body", seed=1)
    uld, nd, lung, body = s.sample(200, return_masks=True)
    assert uld.shape == (200, 64, 64)
    assert lung.mean(axis=(1, 2)).mean() <= 0.1
    assert body.mean(axis=(1, 2)).min() >= 0.5
    # the centre pixel is body, not lung
    assert body[:, 32, 32].all() and not lung[:, 32, 32].any()


def test_sampler_is_seeded_balanced_and_physical(pairs):
    a = PatchSampler(pairs, region="lung", seed=7).sample(30)
    b = PatchSampler(pairs, region="lung", seed=7).sample(30)
    c = PatchSampler(pairs, region="lung", seed=8).sample(30)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    # balanced: patient i is identified by its own noise; give each a distinct offset
    tagged = [(u + 1000.0 * i, n + 1000.0 * i, lm, bm) for i, (u, n, lm, bm, _) in enumerate(pairs)]
    uld, nd = PatchSampler(tagged, region="body", seed=0, augment=False).sample(99)
    who = np.round((nd[:, 32, 32] - 40.0) / 1000.0).astype(int)
    assert np.bincount(who, minlength=3).tolist() == [33, 33, 33]
    # augmentation permutes pixels only: ULD and ND patches stay aligned
    s = PatchSampler(pairs, region="lung", seed=3, augment=True)
    uld, nd = s.sample(50)
    assert np.abs(uld - nd).std() < 80  # aligned noise-only difference (uld 60 HU + nd 8 HU)


def test_sampler_rejects_bad_input(pairs):
    with pytest.raises(ValueError, match="Invalid value for argument `region`"):
        PatchSampler(pairs, region="heart")
    empty = [(pairs[0][0], pairs[0][1], np.zeros_like(pairs[0][2]), pairs[0][3])]
    with pytest.raises(ValueError, match="No admissible lung patch"):
        PatchSampler(empty, region="lung")
    with pytest.raises(ValueError, match="lung_mask` of the image's shape"):
        as_training_pairs([(pairs[0][0], pairs[0][1], pairs[0][2][:, :10], None)])


def test_split_pairs_without_leakage(pairs):
    train, val = split_pairs(as_training_pairs(pairs), val_fraction=0.34, seed=0)
    assert len(train) == 2 and len(val) == 1
    assert {p.patient_id for p in train}.isdisjoint({p.patient_id for p in val})
    one = as_training_pairs([pairs[0]])
    t, v = split_pairs(one, val_fraction=0.34)
    assert t[0].shape[0] + v[0].shape[0] == 3 and v[0].shape[0] == 1


# ---------------------------------------------------------------------------- inference
def make_pair(seed=0):
    lung_cfg = CNNConfig.for_region("lung", **TINY)
    body_cfg = CNNConfig.for_region("body", **TINY, dilation=2)
    pair = CNNPair.build(lung_cfg, body_cfg)
    randomize(pair.lung_model, seed)
    randomize(pair.body_model, seed + 1)
    return pair


def test_save_load_round_trip_identical_predictions(tmp_path, pairs):
    pair = make_pair()
    pair.metadata["data_manifest"] = [{"patient_id": "p0"}]
    uld, _, lung, _, _ = pairs[0]
    before = pair.propose(uld, lung_mask=lung).image
    pair.save(tmp_path / "m")
    loaded = CNNPair.load(tmp_path / "m", expected_manifest=[{"patient_id": "p0"}])
    assert loaded.lung_config == pair.lung_config and loaded.body_config == pair.body_config
    np.testing.assert_array_equal(loaded.propose(uld, lung_mask=lung).image, before)
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert (
        meta["format_version"] == 1 and meta["hybrid_version"] and meta["metadata"]["data_manifest"]
    )

    with pytest.raises(FileExistsError, match="overwrite=True"):
        pair.save(tmp_path / "m")
    pair.save(tmp_path / "m", overwrite=True)
    with pytest.raises(ValueError, match="trained on other data"):
        CNNPair.load(tmp_path / "m", expected_manifest=[{"patient_id": "p9"}])
    with open(tmp_path / "m" / "body.weights.h5", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="SHA-256 differs"):
        CNNPair.load(tmp_path / "m")
    meta["format_version"] = 99
    pair.save(tmp_path / "n")
    (tmp_path / "n" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Unsupported CNN pair format_version=99"):
        CNNPair.load(tmp_path / "n")
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        CNNPair.load(tmp_path / "nowhere")


def test_propose_shapes_batches_and_crop(pairs):
    pair = make_pair(seed=3)
    pair.precision = "float32"  # exact comparisons (bfloat16: see the next test)
    uld, _, lung, _, _ = pairs[1]
    uld, lung = uld[:, 5:-4, 3:], lung[:, 5:-4, 3:]  # odd size
    p1 = pair.with_settings(batch_size=1).propose(Volume(uld, spacing=(2.0, 0.7, 0.7)), lung_mask=lung)
    p3 = pair.with_settings(batch_size=3).propose(uld, lung_mask=lung)
    assert isinstance(p1, Proposal) and p1.name == "cnn" and p1.uncertainty is None
    assert p1.image.shape == uld.shape and p1.image.dtype == np.float32
    np.testing.assert_allclose(p1.image, p3.image, atol=1e-3)
    single = pair.propose(uld[1], lung_mask=lung[1])
    assert single.image.shape == uld.shape[1:]
    np.testing.assert_allclose(single.image, p1.image[1], atol=1e-3)
    # cropping the lung model to the lungs gives the same result as running it everywhere
    w = blend_weight(lung)
    full = w * pair.predict_region("lung", uld) + (1 - w) * pair.predict_region("body", uld)
    np.testing.assert_allclose(p1.image, full, atol=1e-2)
    # no lungs: the body model alone
    none = pair.propose(uld, lung_mask=np.zeros_like(lung))
    np.testing.assert_allclose(none.image, pair.predict_region("body", uld), atol=1e-3)
    flip = pair.with_settings(uncertainty="flip").propose(uld[:1], lung_mask=lung[:1])
    assert flip.uncertainty.shape == (1,) + uld.shape[1:] and (flip.uncertainty >= 0).all()
    with pytest.raises(ValueError, match="`lung_mask` of the image.s shape"):
        pair.propose(uld, lung_mask=lung[:, :-1])
    with pytest.raises(ValueError, match="Received batch_size=0"):
        pair.with_settings(batch_size=0).propose(uld, lung_mask=lung)


@pytest.mark.parametrize("arch", ["plain", "shuffle"])
def test_body_crop_gives_the_whole_slice_result_inside_the_body(pairs, arch):
    """With a body mask the body model runs on the body's box only: inside the body the
    result equals the whole-slice one (float rounding of other tensor sizes: 1e-2 HU),
    outside the box the input smoothed (a small body in a large slice)."""
    from scipy.ndimage import gaussian_filter

    from hybrid.cnn.infer import OUTSIDE_SIGMA_PX

    extra = {} if arch == "plain" else {"architecture": "shuffle", "noise_input": True}
    lung_cfg = CNNConfig.for_region("lung", **TINY)
    body_cfg = CNNConfig.for_region("body", **TINY, **extra)
    pair = CNNPair.build(lung_cfg, body_cfg)
    randomize(pair.lung_model, 1)
    randomize(pair.body_model, 2)
    pair.precision = "float32"
    uld, _, lung, body, _ = pairs[2]
    pad = ((0, 0), (30, 41), (25, 60))  # air around the body: odd sides, off-grid box
    uld = np.pad(uld, pad, constant_values=-1000.0)
    uld = uld + np.random.default_rng(0).normal(0, 20, uld.shape).astype(np.float32)
    lung, body = np.pad(lung, pad), np.pad(body, pad)
    whole = pair.propose(uld, lung_mask=lung).image
    crop = pair.propose(uld, lung_mask=lung, body_mask=body).image
    np.testing.assert_allclose(crop[body], whole[body], atol=1e-2)
    far = np.zeros_like(body)
    far[:, :5], far[:, :, -5:] = True, True  # outside the grown box
    smooth = gaussian_filter(uld, (0, OUTSIDE_SIGMA_PX, OUTSIDE_SIGMA_PX), mode="nearest")
    np.testing.assert_allclose(crop[far], smooth[far], atol=1e-3)
    assert not np.allclose(whole[far], smooth[far], atol=1e-1)


def test_views_average_the_mirrored_restorations_and_eight_make_the_pair_equivariant(pairs):
    """``views=2`` is the mean of the restoration and the mirrored input's restoration turned
    back; ``views=8`` averages over all symmetries of the square, so restoring a transposed
    (or mirrored) slice gives the transposed restoration, which one view does not (float32
    rounding of another memory layout: 1e-3 HU)."""
    pair = make_pair(seed=3)
    pair.precision = "float32"
    uld, _, lung, _, _ = pairs[1]
    uld, lung = uld[:, 3:, :-7], lung[:, 3:, :-7]  # not square
    one = pair.predict_region("body", uld)
    mirrored = pair.predict_region("body", np.ascontiguousarray(uld[..., ::-1]))[..., ::-1]
    two = pair.with_settings(views=2)
    np.testing.assert_allclose(two._run("body", uld, flip=False), (one + mirrored) / 2, atol=1e-3)
    p8 = pair.with_settings(views=8)
    img = p8.propose(uld, lung_mask=lung).image
    t = p8.propose(uld.swapaxes(1, 2), lung_mask=lung.swapaxes(1, 2)).image
    np.testing.assert_allclose(t, img.swapaxes(1, 2), atol=1e-3)
    ud = p8.propose(uld[:, ::-1], lung_mask=lung[:, ::-1]).image
    np.testing.assert_allclose(ud, img[:, ::-1], atol=1e-3)
    plain = pair.propose(uld, lung_mask=lung).image
    plain_t = pair.propose(uld.swapaxes(1, 2), lung_mask=lung.swapaxes(1, 2)).image
    assert np.abs(plain_t - plain.swapaxes(1, 2)).max() > 0.1  # a random pair is not symmetric
    with pytest.raises(ValueError, match="Expected one of \\(1, 2, 4, 8\\). Received views=3"):
        pair.with_settings(views=3)


def test_bfloat16_inference_is_close_to_float32(pairs):
    """bfloat16 inference (the default on CPUs with native bfloat16) against float32.

    The residual is computed in bfloat16 (8-bit mantissa: ~0.4 % relative
    rounding per operation) and added to the input in float32, so the error is a
    small fraction of the residual, not of the HU value; batching changes the
    arithmetic order only."""
    pair = make_pair(seed=3)
    uld, _, lung, _, _ = pairs[1]
    pair.precision = "float32"
    ref = pair.propose(uld, lung_mask=lung).image
    pair.precision = "bfloat16"
    assert pair.active_precision == "bfloat16"
    low = pair.propose(uld, lung_mask=lung).image
    low1 = pair.with_settings(batch_size=1).propose(uld, lung_mask=lung).image
    residual = np.sqrt(np.mean((ref - uld) ** 2))
    err = np.sqrt(np.mean((low - ref) ** 2))
    # seen: 0.056 HU RMS against a 10.8 HU RMS residual (0.5 %); bound 4x that
    assert err < 0.02 * residual, (err, residual)
    assert np.abs(low1 - low).max() < 0.05 * residual  # 0.09 HU seen
    with pytest.raises(ValueError, match="precision"):
        CNNPair(pair.lung_model, pair.body_model, lung_config=pair.lung_config,
                body_config=pair.body_config, precision="float16")


def test_mask_composition_has_no_seam():
    """Constant residuals (+15 HU lung model, -15 HU body model) on a noisy flat image.

    With the smooth blend (default transition) the gradient magnitude of the output
    along the lung border is no larger than elsewhere (within sampling error, 5 %); a
    hard mask switch (sigma=0) shows a seam that the same criterion catches.
    """
    from scipy.ndimage import binary_dilation, binary_erosion

    lung_cfg = CNNConfig.for_region("lung", **TINY)
    body_cfg = CNNConfig.for_region("body", **TINY)
    pair = CNNPair.build(lung_cfg, body_cfg)
    constant_residual(pair.lung_model, lung_cfg, +15.0)
    constant_residual(pair.body_model, body_cfg, -15.0)
    rng = np.random.default_rng(0)
    size = 224
    image = rng.normal(0.0, 20.0, (6, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= 80**2
    lung = np.broadcast_to(disc, image.shape)
    border = binary_dilation(disc, iterations=2) & ~binary_erosion(disc, iterations=2)
    far = ~binary_dilation(disc, iterations=14) | binary_erosion(disc, iterations=14)
    far[:4], far[-4:], far[:, :4], far[:, -4:] = False, False, False, False

    def ratio(out):
        g = np.hypot(*np.gradient(out, axis=(1, 2)))
        return g[:, border].mean() / g[:, far].mean()

    smooth = pair.propose(image, lung_mask=lung).image
    assert np.isclose(
        np.median(smooth[:, disc] - image[:, disc]), 15.0, atol=0.5
    )  # lung model inside
    assert np.isclose(np.median(smooth[:, far & ~disc] - image[:, far & ~disc]), -15.0, atol=0.5)
    assert ratio(smooth) <= 1.05
    hard = pair.with_settings(transition_sigma=0.0).propose(image, lung_mask=lung).image
    assert ratio(hard) > 1.12  # the criterion does see a seam
    # the blended correction changes by at most 30 HU * max|grad w| per pixel (sigma = 3)
    corr = smooth - image
    step = max(np.abs(np.diff(corr, axis=1)).max(), np.abs(np.diff(corr, axis=2)).max())
    assert step <= 30.0 / (3.0 * np.sqrt(2 * np.pi)) * 1.05


# ---------------------------------------------------------------------------- training
def test_train_model_cpu_writes_logs_and_returns_val_rmse(tmp_path, pairs):
    assert get_strategy().num_replicas_in_sync == 1
    cfg = CNNConfig.for_region("lung", **TINY, learning_rate=3e-3)
    res = train_model(
        cfg,
        pairs,
        out_dir=tmp_path / "lung",
        epochs=3,
        steps_per_epoch=4,
        batch_size=8,
        val_patches=32,
        patience=2,
        seed=0,
    )
    assert np.isfinite(res.val_rmse_hu) and res.val_rmse_hu > 0
    assert 1 <= res.best_epoch <= res.epochs_run <= 3
    assert set(res.history) >= {"loss", "val_loss", "rmse_hu", "val_rmse_hu"}
    for key in ("log", "weights", "figure", "config"):
        assert res.files[key].is_file(), key
    assert res.files["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(res.files["tensorboard"].rglob("*"))
    assert CNNConfig.from_json(res.files["config"]) == cfg
    lines = res.files["log"].read_text().strip().splitlines()
    assert len(lines) == res.epochs_run + 1 and "val_rmse_hu" in lines[0]
    assert {m["split"] for m in res.manifest} == {"train", "validation"}
    # RMSE in HU is RMSE in normalised units times 1000
    assert np.isclose(res.val_rmse_hu, np.sqrt(res.val_loss) * 1000, rtol=1e-3)
    # whole-slice validation over the lung pixels: the ULD noise is 60 HU, the model must not be worse
    assert 0 < res.val_slice_rmse_hu < 60
    with pytest.raises(ValueError, match="Received epochs=0"):
        train_model(cfg, pairs, out_dir=tmp_path / "x", epochs=0)


def test_train_model_warm_start_begins_at_the_given_weights(tmp_path, pairs):
    # the lung model of the shipped recipe starts from the body model's weights (a lung config
    # of the body's architecture): the first step must see exactly those weights, not a seeded init
    body_cfg = CNNConfig.for_region("body", **TINY)
    lung_cfg = CNNConfig.for_region("lung", **TINY, patch_size=body_cfg.patch_size)
    source = build_model(body_cfg, seed=7)
    randomize(source, seed=3)
    seen = []

    class AtStart(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.extend(w.copy() for w in self.model.get_weights())

    train_model(lung_cfg, pairs, out_dir=tmp_path / "lung", epochs=1, steps_per_epoch=1,
                batch_size=4, val_patches=8, val_slices=0, tensorboard=False,
                sampler_options={"min_lung_fraction": 0.2}, init_model=source,
                callbacks=[AtStart()])
    want = source.get_weights()
    assert len(seen) == len(want) and all(np.array_equal(a, b) for a, b in zip(seen, want))
    seen.clear()  # without init_model: the seeded random start, which differs
    train_model(lung_cfg, pairs, out_dir=tmp_path / "cold", epochs=1, steps_per_epoch=1,
                batch_size=4, val_patches=8, val_slices=0, tensorboard=False,
                sampler_options={"min_lung_fraction": 0.2}, callbacks=[AtStart()])
    assert not all(np.array_equal(a, b) for a, b in zip(seen, want))


def test_train_model_under_mirrored_strategy_on_cpu(tmp_path, pairs):
    """The distributed code path (what >1 GPU uses), on one CPU replica."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    cfg = CNNConfig.for_region("body", **TINY)
    res = train_model(
        cfg,
        pairs,
        out_dir=tmp_path,
        epochs=1,
        steps_per_epoch=2,
        batch_size=4,
        val_patches=8,
        val_slices=1,
        tensorboard=False,
        strategy=strategy,
    )
    assert np.isfinite(res.val_rmse_hu) and np.isfinite(res.val_slice_rmse_hu)


def test_train_pair_saves_loadable_pair(tmp_path, pairs):
    pair, results = train_pair(
        CNNConfig.for_region("lung", **TINY),
        CNNConfig.for_region("body", **TINY),
        pairs,
        out_dir=tmp_path,
        epochs=1,
        steps_per_epoch=2,
        batch_size=4,
        val_patches=8,
        tensorboard=False,
    )
    assert set(results) == {"lung", "body"}
    loaded = CNNPair.load(tmp_path / "model", expected_manifest=results["lung"].manifest)
    uld, _, lung, _, _ = pairs[2]
    np.testing.assert_array_equal(
        loaded.propose(uld[:1], lung_mask=lung[:1]).image, pair.propose(uld[:1], lung_mask=lung[:1]).image
    )


@pytest.mark.gpu
def test_training_on_gpus_uses_mirrored_strategy(tmp_path, pairs):
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        pytest.skip("no GPU visible")
    strategy = get_strategy()
    if len(gpus) > 1:
        assert isinstance(strategy, tf.distribute.MirroredStrategy)
        assert strategy.num_replicas_in_sync == len(gpus)
    cfg = CNNConfig.for_region("body", **TINY)
    res = train_model(
        cfg, pairs, out_dir=tmp_path, epochs=1, steps_per_epoch=2, batch_size=8, val_patches=16
    )
    assert np.isfinite(res.val_rmse_hu)
