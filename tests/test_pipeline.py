"""hybrid.enhance / Enhancer: kinds in and out, batching, maps, errors, default assets.

The tests build small custom assets (an untrained residual CNN pair, which
returns its input; a tiny dictionary from one phantom pair; a soft blender)
so they do not depend on the shipped models.  One test uses the shipped
defaults and skips when they are absent.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("faiss")

import hybrid  # noqa: E402
from hybrid import Volume  # noqa: E402
from hybrid.volume import Provenance  # noqa: E402


@pytest.fixture(scope="module")
def small_assets():
    """(CNNPair, PatchDictionary, Blender) small enough to build in a few seconds."""
    from hybrid.blend import Blender, SoftMode
    from hybrid.cnn.config import CNNConfig
    from hybrid.cnn.infer import CNNPair
    from hybrid.dictionary import DictionaryConfig, PatchDictionary
    from hybrid.phantom import make_patient, scan_phantom

    ph = make_patient(3, shape=(2, 128, 128))
    nd = scan_phantom(ph, dose_fraction=1.0, rng=1)
    uld = scan_phantom(ph, dose_fraction=0.02, rng=2)
    dic = PatchDictionary.build(
        [(uld.array, nd.array, ph.body_mask)],
        config=DictionaryConfig(max_patches=5000, n_heldout=200),
    )
    pair = CNNPair.build(
        CNNConfig.for_region("lung", depth=3, width=8),
        CNNConfig.for_region("body", depth=3, width=8),
    )
    return pair, dic, Blender(SoftMode(1.0, 0.1))


@pytest.fixture(scope="module")
def enhancer(small_assets):
    return hybrid.Enhancer(*small_assets)


@pytest.fixture(scope="module")
def uld():
    """A 3-slice ultra-low-dose phantom Volume (another patient than the dictionary's)."""
    from hybrid.phantom import make_patient, scan_phantom

    ph = make_patient(5, shape=(3, 128, 128))
    vol = scan_phantom(ph, dose_fraction=0.02, rng=3)
    return Volume(vol.array, vol.spacing, Provenance(source="/data/uld-series", series_uid="1.2.3",
                                                      kernel="B"))


def test_volume_and_array_give_the_same_result(enhancer, uld):
    out_vol = enhancer.enhance(uld, progress=False)
    # an array carries no spacing: compare with a Volume of the segmentation's default spacing
    same_spacing = Volume(uld.array, (1.0, 0.8, 0.8))
    out_arr = enhancer.enhance(uld.array, progress=False)
    assert isinstance(out_vol, Volume)
    assert isinstance(out_arr, np.ndarray) and out_arr.dtype == np.float32
    assert out_arr.shape == uld.shape
    np.testing.assert_array_equal(out_arr, enhancer.enhance(same_spacing, progress=False).array)
    # the result differs from the input (the dictionary acts) but stays close in HU
    assert not np.array_equal(out_vol.array, uld.array)
    assert np.isfinite(out_vol.array).all()


def test_volume_keeps_shape_spacing_and_provenance(enhancer, uld):
    out = enhancer.enhance(uld, progress=False)
    assert out.shape == uld.shape
    assert out.spacing == uld.spacing
    prov, src = out.provenance, uld.provenance
    assert prov.derived_from[:-1] == src.derived_from
    assert prov.derived_from[-1].startswith(f"hybrid.enhance {hybrid.__version__}; input noise ")
    assert dataclasses.replace(prov, derived_from=src.derived_from) == src


def test_dose_fraction_is_recorded(enhancer, uld):
    out, maps = enhancer.enhance(uld, dose_fraction=0.02, progress=False, return_maps=True)
    assert out.provenance.derived_from[-1].startswith(f"hybrid.enhance {hybrid.__version__}")
    assert "dose_fraction=0.02" in out.provenance.derived_from[-1]
    assert maps.info["dose_fraction"] == 0.02
    # informational: the image is the same as without it
    np.testing.assert_array_equal(out.array, enhancer.enhance(uld, progress=False).array)
    with pytest.warns(UserWarning, match="outside the range"):
        enhancer.enhance(uld.array[:1], dose_fraction=0.5, progress=False)
    with pytest.raises(ValueError, match="dose_fraction"):
        enhancer.enhance(uld, dose_fraction=2.0, progress=False)


def test_2d_slice_equals_one_slice_volume(enhancer, uld):
    sl = uld.array[1].copy()
    out2 = enhancer.enhance(sl, progress=False)
    out3 = enhancer.enhance(sl[np.newaxis], progress=False)
    assert out2.shape == sl.shape and out2.dtype == np.float32
    np.testing.assert_array_equal(out2, out3[0])
    _, maps = enhancer.enhance(sl, progress=False, return_maps=True)
    assert maps.cnn.shape == sl.shape and maps.lung_mask.shape == sl.shape


def test_input_is_not_modified(enhancer, uld):
    arr = uld.array.copy()
    before_vol = uld.array.copy()
    enhancer.enhance(arr, progress=False)
    enhancer.enhance(uld, progress=False, return_maps=True)
    np.testing.assert_array_equal(arr, before_vol)
    np.testing.assert_array_equal(uld.array, before_vol)
    assert uld.provenance.derived_from == ()


def test_batching_does_not_change_the_result(small_assets, uld):
    one = hybrid.Enhancer(*small_assets, batch_slices=1).enhance(uld, progress=False,
                                                                   return_maps=True)
    eight = hybrid.Enhancer(*small_assets, batch_slices=8).enhance(uld, progress=False,
                                                                     return_maps=True)
    # The CNN's matrix products may sum in another order for another batch size (oneDNN picks
    # its blocking by shape and load): float32 rounding of about 1e-4 HU was seen.  1e-3 HU is
    # four orders of magnitude below the noise; masks and the search must match exactly.
    np.testing.assert_allclose(one[0].array, eight[0].array, rtol=0, atol=1e-3)
    for name in one[1].ARRAYS:
        a, b = getattr(one[1], name), getattr(eight[1], name)
        if a.dtype == bool:
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-3, err_msg=name)


def test_maps_shapes_and_ranges(enhancer, uld):
    out, maps = enhancer.enhance(uld, progress=False, return_maps=True)
    for name in maps.ARRAYS:
        assert getattr(maps, name).shape == uld.shape, name
    assert maps.lung_mask.dtype == bool and maps.body_mask.dtype == bool
    assert maps.lung_mask.any(), "the phantom has lungs"
    assert not (maps.lung_mask & ~maps.body_mask).any()
    w = maps.dictionary_weight
    assert w.min() >= 0.0 and w.max() <= 1.0
    assert np.all(w[~maps.body_mask] == 0.0), "outside the body the CNN decides"
    assert np.all(np.isinf(maps.distance[~maps.body_mask]))
    assert np.isfinite(maps.distance[maps.body_mask]).all()
    np.testing.assert_array_equal(maps.source_map, w)
    # the output is the blend of the two proposals with that weight
    np.testing.assert_allclose(out.array, w * maps.dictionary + (1 - w) * maps.cnn, atol=1e-3)


def test_without_a_dictionary_the_cnn_and_the_input_rule_decide(small_assets, uld, tmp_path):
    """The default path (issue 17: the dictionary left it): no dictionary is loaded nor
    searched, the maps carry no dictionary proposal, and the output is the input rule's
    blend of the CNN's proposal and the input, exactly."""
    import h5py

    from hybrid.blend import Blender, SoftMode, TableMode

    pair, _, _ = small_assets
    rule = TableMode(knots=((0.5, 1.0), (1.0, 0.8), (2.0, 0.3), (4.0, 0.0)))
    enh = hybrid.Enhancer(pair, None, Blender({"dictionary": SoftMode(1.0, 0.1), "input": rule}))
    assert enh.dictionary is None and enh.stride is None
    out, maps = enh.enhance(uld, progress=False, return_maps=True)
    assert maps.dictionary is None and maps.distance is None
    np.testing.assert_array_equal(maps.dictionary_weight, 0.0)
    wi = maps.input_weight
    assert wi.min() >= 0.0 and wi.max() <= 1.0 and wi.max() > 0.0  # a phantom at 2 %: kept in part
    np.testing.assert_allclose(out.array, wi * uld.array + (1 - wi) * maps.cnn, atol=1e-3)
    assert enh.last_info["seconds_by_stage"]["dictionary"] == 0.0
    assert "dictionary" not in enh.last_info["models"]
    path = maps.save(tmp_path / "maps.h5")
    with h5py.File(path, "r") as f:
        assert "dictionary" not in f and "distance" not in f
        np.testing.assert_array_equal(f["input_weight"][...], wi)


def test_maps_save_hdf5(enhancer, uld, tmp_path):
    import h5py

    _, maps = enhancer.enhance(uld, progress=False, return_maps=True)
    path = maps.save(tmp_path / "maps.h5", spacing=uld.spacing)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "hybrid-enhance-maps"
        assert sorted(f) == sorted(maps.ARRAYS)
        np.testing.assert_array_equal(f["dictionary_weight"][...], maps.dictionary_weight)
    with pytest.raises(FileExistsError):
        maps.save(path)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((2, 32, 32), np.nan, np.float32), "NaN"),
        (np.zeros((1, 2, 32, 32), np.float32), "rank 4"),
        (np.zeros(32, np.float32), "rank 1"),
        (np.array([["a", "b"]]), "numeric"),
        (np.zeros((2, 4, 4), np.float32), "at least 7 x 7"),
    ],
)
def test_bad_input_is_rejected_clearly(enhancer, bad, match):
    with pytest.raises(ValueError, match=match):
        enhancer.enhance(bad, progress=False)


def test_path_input_is_rejected_with_a_hint(enhancer):
    with pytest.raises(TypeError, match="hybrid.load"):
        enhancer.enhance("some/folder", progress=False)


def test_views_reach_the_cnn_and_the_provenance(small_assets, uld):
    """``Enhancer(views=4)`` runs the CNN over 4 views: its CNN proposal is the pair's own
    4-view one, it differs from one view's (a pair with random weights: the fixture's
    untrained residual pair is the identity, the same in every view), and the derived
    series says so."""
    from hybrid.cnn.infer import CNNPair

    pair, dic, blender = small_assets
    pair = CNNPair.build(pair.lung_config, pair.body_config)
    rng = np.random.default_rng(0)
    for model in (pair.lung_model, pair.body_model):
        model.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32)
                           for w in model.get_weights()])
    one = hybrid.Enhancer(pair, dic, blender)
    four = hybrid.Enhancer(pair, dic, blender, views=4)
    assert (one.views, four.views, four.cnn.views) == (1, 4, 4)
    _, m1 = one.enhance(uld, progress=False, return_maps=True)
    out4, m4 = four.enhance(uld, progress=False, return_maps=True)
    direct = four.cnn.propose(uld.array, lung_mask=m4.lung_mask, body_mask=m4.body_mask).image
    np.testing.assert_allclose(m4.cnn, direct, rtol=0, atol=1e-3)
    assert np.abs(m4.cnn - m1.cnn).max() > 0.1
    assert "CNN over 4 views" in out4.provenance.derived_from[-1]
    assert four.last_info["views"] == 4 and "views" not in one.last_info["step"]
    with pytest.raises(ValueError, match="Received views=3"):
        hybrid.Enhancer(*small_assets, views=3)


def test_enhancer_arguments_are_checked(small_assets, tmp_path):
    with pytest.raises(ValueError, match="batch_slices"):
        hybrid.Enhancer(*small_assets, batch_slices=0)
    for bad in (9, (2, 8), (2, 3, 4), (0, 2), 2.0):
        with pytest.raises(ValueError, match="stride"):
            hybrid.Enhancer(*small_assets, stride=bad)
    assert hybrid.Enhancer(*small_assets, stride=(2, 2)).stride == 2
    assert hybrid.Enhancer(*small_assets, stride=[2, 3]).stride == (2, 3)
    with pytest.raises(FileNotFoundError, match="CNN pair folder"):
        hybrid.Enhancer(tmp_path / "nope", *small_assets[1:])


def test_missing_defaults_say_how_to_make_them(monkeypatch, tmp_path):
    from hybrid import artifacts

    monkeypatch.setattr(artifacts, "default_assets_dir", lambda: tmp_path / "assets")
    with pytest.raises(FileNotFoundError, match="make train dictionary"):
        hybrid.Enhancer()


def test_shipped_defaults_enhance_a_phantom_slice():
    from hybrid.artifacts import missing_shipped_assets

    missing = [str(p) for p in missing_shipped_assets()]
    if missing:
        pytest.skip(f"shipped default models absent ({', '.join(missing)}); run `make train dictionary`")
    from hybrid.metrics import rmse
    from hybrid.phantom import make_patient, scan_phantom

    ph = make_patient(99, shape=(1, 512, 512))
    nd = scan_phantom(ph, dose_fraction=1.0, rng=11)
    low = scan_phantom(ph, dose_fraction=0.02, rng=12)
    out = hybrid.enhance(low, progress=False)
    assert out.shape == low.shape
    assert rmse(out, nd, mask=ph.body_mask) < rmse(low, nd, mask=ph.body_mask)
    assert hybrid.pipeline.default_enhancer().dictionary is None  # off by default (issue 17)
    # the opt-in shipped dictionary: the blender's dictionary rule joins it, and (measured on
    # the held-out patients, docs/dictionary.md) it changes the error by under 1 %
    with_dict = hybrid.Enhancer(dictionary="shipped")
    out_d, maps = with_dict.enhance(low, progress=False, return_maps=True)
    assert maps.dictionary is not None and maps.dictionary_weight.max() > 0
    e, e_d = rmse(out, nd, mask=ph.body_mask), rmse(out_d, nd, mask=ph.body_mask)
    assert abs(e_d - e) < 0.02 * e


def test_models_the_blender_was_not_calibrated_with_are_refused(small_assets, tmp_path):
    from hybrid.blend import Blender

    pair, dic, blender = small_assets
    saved = pair.save(tmp_path / "cnn")
    from hybrid.cnn.infer import CNNPair

    cnn = CNNPair.load(saved)
    assert cnn.digest and len(cnn.digest) == 64
    right = Blender(blender.modes, calibrated_with={"cnn": cnn.digest})
    assert hybrid.Enhancer(cnn, dic, right).calibration_check == "matched"
    wrong = Blender(blender.modes, calibrated_with={"cnn": "0" * 64})
    with pytest.raises(ValueError, match="calibrated with.*allow_uncalibrated=True"):
        hybrid.Enhancer(cnn, dic, wrong)
    enh = hybrid.Enhancer(cnn, dic, wrong, allow_uncalibrated=True)
    assert enh.calibration_check == "mismatch allowed"
    # a blender that records no digests (calibrated in memory) constrains nothing
    assert hybrid.Enhancer(cnn, dic, blender).calibration_check == "not recorded"


def test_the_shipped_blender_names_the_shipped_models():
    from hybrid.artifacts import missing_shipped_assets
    from hybrid.blend import Blender
    from hybrid.pipeline import default_asset_paths

    paths = default_asset_paths()
    if missing_shipped_assets():
        pytest.skip("shipped default models absent; run `make train dictionary calibrate`")
    from hybrid.artifacts import read_manifest

    want = Blender.load(paths["blender"]).calibrated_with
    assert want["cnn"] == read_manifest(paths["cnn"], format="hybrid.cnn.CNNPair",
                                        max_version=1)["digest"]
    assert want["dictionary"] == read_manifest(
        paths["dictionary"], format="hybrid.dictionary.PatchDictionary", max_version=1)["digest"]


def test_the_input_is_described_normal_dose_and_ultra_low_dose():
    """Issue 18: the user is told what the input looks like and what was done about it.
    A real normal-dose slab (A0001, kernel B, 5 mm) reads as normal-dose noise and keeps
    most of the input; its simulated 2 % dose does not, and keeps little.  Its noise ratio
    is 0.4 at normal dose and 2.9 at 2 %: the first bound (1.6) lies 4x and 0.55x away."""
    from hybrid.artifacts import missing_shipped_assets
    from hybrid.io.derivation import save_options
    from hybrid.physics import kernel_for, simulate_low_dose
    from hybrid.pipeline import describe_reading
    from tests.conftest import real_series

    if missing_shipped_assets():
        pytest.skip("shipped default models are absent (hybrid/assets)")
    vol = hybrid.load(real_series("lung-pet-ct-dx-a0001/kernel-B-5mm"))
    mid = len(vol) // 2
    nd = vol.slab(mid - 1, mid + 1)
    uld = simulate_low_dose(nd, 0.02, rng=np.random.default_rng(5),
                            kernel=kernel_for(nd.provenance.kernel), progress=False)
    enh = hybrid.Enhancer()
    readings = {}
    for name, v in (("normal", nd), ("uld", uld)):
        out = enh.enhance(v, progress=False)
        readings[name] = r = enh.last_info["input"]
        assert r["kernel_class"] == "standard" and r["kernel_class_from"] == "DICOM kernel"
        text = describe_reading(r)
        assert text in out.provenance.derived_from[-1]
        assert text in save_options(out, "dicom")["derivation"]  # the derived series says it
    assert readings["normal"]["reads_as"] == "normal-dose noise"
    assert readings["uld"]["reads_as"] == "low-dose noise"
    assert readings["uld"]["noise_hu"] > 3 * readings["normal"]["noise_hu"]
    assert readings["normal"]["input_weight_body"] > 0.5 > readings["uld"]["input_weight_body"]
