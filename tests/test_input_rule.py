"""The input rule: a scan that is not noisy comes back (nearly) as it went in.

``noise_ratio`` (the estimated noise over a normal-dose scan's of that texture), the
"input" proposer that carries it, the blender applying the rule last, the Enhancer's
maps, and the calibration samples that teach it (doses 0.5-100 %, at 100 % the input
is the target).  Phantom slices are seeded; tolerances are stated where they are used.
"""

from __future__ import annotations

import numpy as np
import pytest

from hybrid.cnn.noise import NORMAL_DOSE_SIGMA_HU, estimate_noise, noise_ratio


@pytest.fixture(scope="module")
def scans():
    """One 512² phantom slice (smaller ones hold too little soft tissue for the estimator)
    scanned at three doses with a standard and a sharp kernel."""
    from hybrid.phantom import make_patient, scan_phantom

    ph = make_patient(4, shape=(1, 512, 512))
    return ph, {(k, f): scan_phantom(ph, dose_fraction=f, kernel=k, rng=10).array
                for k in ("standard", "sharp") for f in (1.0, 0.25, 0.02)}


def test_noise_ratio_divides_by_the_normal_dose_noise_of_the_kernel(scans):
    """A known kernel class picks its reference; unknown: the texture's class per slice."""
    ph, s = scans
    x = s["sharp", 0.25]
    est = estimate_noise(x, ph.body_mask)
    np.testing.assert_allclose(noise_ratio(x, ph.body_mask, kernel="sharp"),
                               est.sigma_hu / NORMAL_DOSE_SIGMA_HU["sharp"], rtol=1e-9)
    np.testing.assert_allclose(noise_ratio(x, ph.body_mask),
                               est.sigma_hu / NORMAL_DOSE_SIGMA_HU[est.kernel_class[0]], rtol=1e-9)
    with pytest.raises(ValueError, match="kernel"):
        noise_ratio(x, kernel="B70f")


def test_thickness_factor_reads_the_noise_at_the_reference_thickness(scans):
    """CT noise goes as 1 / sqrt(thickness): a 5 mm scan read at 2 mm is sqrt(2.5) times
    as noisy (exact: the factor multiplies the plain ratio); unknown or sparse (> 6 mm
    spacing, the phantom's 15-19 mm) thickness, or no reference: the plain ratio."""
    from hybrid.cnn.noise import MAX_SLICE_MM, thickness_factor

    assert thickness_factor(5.0, 2.0) == pytest.approx(np.sqrt(2.5), rel=1e-12)
    assert thickness_factor(1.0, 2.0) == pytest.approx(np.sqrt(0.5), rel=1e-12)
    assert thickness_factor(2.0, 2.0) == 1.0
    assert thickness_factor(None, 2.0) == thickness_factor(3.0, None) == 1.0
    assert thickness_factor(MAX_SLICE_MM + 0.1, 2.0) == thickness_factor(15.0, 2.0) == 1.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="slice_mm"):
            thickness_factor(bad, 2.0)
    ph, s = scans
    x = s["standard", 0.25]
    plain = noise_ratio(x, ph.body_mask, kernel="standard")
    np.testing.assert_allclose(noise_ratio(x, ph.body_mask, kernel="standard", slice_mm=5.0,
                                           reference_mm=2.0), plain * np.sqrt(2.5), rtol=1e-12)


def test_the_input_proposer_reads_a_volumes_spacing_as_its_thickness(scans):
    """With a reference thickness the input proposer's ratio scales with the Volume's slice
    thickness (its slices' DICOM SliceThickness, else its z spacing; or the given
    ``slice_mm``); an array has none; a bad setting fails at once."""
    from hybrid.baselines import InputBaseline
    from hybrid.volume import Provenance, Volume

    ph, s = scans
    x = s["standard", 0.02]
    plain = InputBaseline(kernel="standard").noise_ratio(Volume(x, (5.0, 0.8, 0.8)), ph.body_mask)
    thick = InputBaseline(kernel="standard", reference_mm=2.0)
    np.testing.assert_allclose(thick.noise_ratio(Volume(x, (5.0, 0.8, 0.8)), ph.body_mask),
                               plain * np.sqrt(2.5), rtol=1e-12)
    np.testing.assert_allclose(thick.noise_ratio(x, ph.body_mask), plain, rtol=1e-12)
    # an overlapping reconstruction: 5 mm slices every 2.5 mm read as 5 mm
    headers = tuple({"SliceThickness": "5.0"} for _ in range(len(x)))
    overlap = Volume(x, (2.5, 0.8, 0.8), Provenance(slice_headers=headers))
    assert overlap.slice_thickness_mm == 5.0
    np.testing.assert_allclose(thick.noise_ratio(overlap, ph.body_mask), plain * np.sqrt(2.5),
                               rtol=1e-12)
    missing = Volume(x, (2.5, 0.8, 0.8), Provenance(slice_headers=({},) * len(x)))
    assert missing.slice_thickness_mm == 2.5  # not every slice says: the spacing
    given = InputBaseline(kernel="standard", reference_mm=2.0, slice_mm=1.0)
    np.testing.assert_allclose(given.noise_ratio(x, ph.body_mask), plain * np.sqrt(0.5), rtol=1e-12)
    assert given.params == {"kernel": "standard", "reference_mm": 2.0, "slice_mm": 1.0}
    with pytest.raises(ValueError, match="reference_mm"):
        InputBaseline(reference_mm=-2.0, slice_mm=1.0)


def test_noise_ratio_grows_as_the_dose_falls_whatever_the_kernel(scans):
    """A normal-dose scan reads about 1 or below, whichever kernel (the sharp kernel's
    noise is 5x the standard's: 124 vs 22 HU here); 2 % reads at least 4x its normal dose
    (quantum noise alone: sqrt(50) = 7; the phantom's own tissue texture adds a
    dose-independent part to the estimate, so less)."""
    ph, s = scans
    for k in ("standard", "sharp"):
        r = {f: float(noise_ratio(s[k, f], ph.body_mask, kernel=k)[0]) for f in (1.0, 0.25, 0.02)}
        assert r[1.0] < 1.25, (k, r)
        assert r[1.0] < r[0.25] < r[0.02] and r[0.02] > 4 * r[1.0], (k, r)
    assert noise_ratio(s["standard", 1.0][0]).shape == (1,)


def test_input_proposer_carries_the_noise_ratio(scans):
    from hybrid.baselines import InputBaseline
    from hybrid.volume import Provenance, Volume

    ph, s = scans
    x = np.concatenate([s["standard", 0.25], s["sharp", 0.02]])
    before = x.copy()
    body = np.concatenate([ph.body_mask, ph.body_mask])
    p = InputBaseline().propose(x, body_mask=body)
    np.testing.assert_array_equal(p.image, before)
    np.testing.assert_array_equal(x, before)
    assert p.kind == "noise_ratio" and p.uncertainty.shape == x.shape
    ratio = noise_ratio(x, body)
    for z in range(2):
        np.testing.assert_allclose(p.uncertainty[z], ratio[z], rtol=1e-6)
    one = InputBaseline().propose(x[1], body_mask=body[1])
    np.testing.assert_array_equal(one.uncertainty, p.uncertainty[1])
    # the kernel: a setting, or a DICOM series' ConvolutionKernel ("B70f": sharp)
    sharp = InputBaseline(kernel="sharp").propose(x, body_mask=body).uncertainty
    np.testing.assert_allclose(sharp[:, 0, 0], noise_ratio(x, body, kernel="sharp"), rtol=1e-6)
    vol = Volume(x, (1.0, 0.7, 0.7), Provenance(kernel="B70f"))
    np.testing.assert_array_equal(InputBaseline().propose(vol, body_mask=body).uncertainty, sharp)
    with pytest.raises(ValueError, match="kernel"):
        InputBaseline(kernel="B70f")


def test_the_input_rule_applies_last_and_gives_a_clean_scan_back():
    """Rule "input" trusted (ratio below the threshold): the result is the input whatever
    the dictionary did; not trusted: the CNN/dictionary blend alone."""
    from hybrid.blend import Blender, HardMode
    from hybrid.proposal import Proposal

    rng = np.random.default_rng(0)
    cnn, dic, x = (rng.normal(size=(2, 8, 8)).astype(np.float32) for _ in range(3))
    dist = np.zeros_like(cnn)
    ratio = np.stack([np.full((8, 8), 0.9), np.full((8, 8), 5.0)]).astype(np.float32)
    b = Blender({"dictionary": HardMode(1.0), "input": HardMode(2.0)})
    out = b.blend(Proposal(cnn, name="cnn"), Proposal(dic, dist, "nn_distance", name="dictionary"),
                  Proposal(x, ratio, "noise_ratio", name="input"))
    np.testing.assert_array_equal(out.image[0], x[0])  # normal dose: the input itself
    np.testing.assert_array_equal(out.image[1], dic[1])  # noisy: the dictionary blend
    np.testing.assert_array_equal(out.weights["dictionary"][0], 0.0)


def test_input_rule_samples_span_the_doses_and_leave_the_normal_dose_alone():
    """One sample per kernel variant and dose; at f = 1 the input is the normal-dose image
    exactly (a = 0), at f < 1 it is noisier than at the case's nominal dose when f is
    lower (one realisation rescaled by ``a(f)``: a(0.01) / a(0.1) = sqrt(99 / 9))."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("faiss")
    from hybrid.calibration import input_rule_samples
    from hybrid.cnn.config import CNNConfig
    from hybrid.cnn.infer import CNNPair
    from hybrid.data import make_phantom_case

    case = make_phantom_case(6, shape=(3, 96, 96))
    pair = CNNPair.build(CNNConfig.for_region("lung", depth=3, width=8),
                         CNNConfig.for_region("body", depth=3, width=8))
    samples = input_rule_samples([case], pair, doses=(0.01, 0.1, 1.0), slices_per_case=2)
    assert len(samples) == 3  # a phantom: its own kernel only
    (_, x01, r01, nd, body), (_, x1, r1, _, _) = samples[1], samples[2]
    assert nd.shape == (2, 96, 96) and body.dtype == bool
    np.testing.assert_array_equal(x1, nd)
    x001 = samples[0][1]  # one noise realisation rescaled: the ratio is exact
    np.testing.assert_allclose(np.std((x001 - nd)[body]) / np.std((x01 - nd)[body]),
                               np.sqrt(99 / 9), rtol=1e-4)
    assert r1.shape == r01.shape == nd.shape  # (96² holds too little tissue to tell doses apart)


def test_enhancer_applies_the_input_rule_and_shows_it_in_the_maps():
    """An input rule that always trusts the input returns the input exactly (a clean scan
    left alone); one that never does returns what the blender without it returns."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("faiss")
    import hybrid
    from hybrid.blend import Blender, HardMode, SoftMode
    from hybrid.cnn.config import CNNConfig
    from hybrid.cnn.infer import CNNPair
    from hybrid.dictionary import DictionaryConfig, PatchDictionary
    from hybrid.phantom import make_patient, scan_phantom

    ph = make_patient(3, shape=(2, 128, 128))
    nd, uld = scan_phantom(ph, dose_fraction=1.0, rng=1), scan_phantom(ph, dose_fraction=0.02, rng=2)
    dic = PatchDictionary.build([(uld.array, nd.array, ph.body_mask)],
                                config=DictionaryConfig(max_patches=3000, n_heldout=100))
    pair = CNNPair.build(CNNConfig.for_region("lung", depth=3, width=8),
                         CNNConfig.for_region("body", depth=3, width=8))
    x = scan_phantom(make_patient(5, shape=(2, 128, 128)), dose_fraction=0.05, rng=3).array
    before = x.copy()
    plain = hybrid.Enhancer(pair, dic, Blender(SoftMode(1.0, 0.1))).enhance(x, progress=False)
    keep, maps = hybrid.Enhancer(pair, dic, Blender({"dictionary": SoftMode(1.0, 0.1),
                                                     "input": HardMode(1e9)})).enhance(
        x, return_maps=True, progress=False)
    never = hybrid.Enhancer(pair, dic, Blender({"dictionary": SoftMode(1.0, 0.1),
                                                "input": HardMode(-1.0)})).enhance(x, progress=False)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(keep, x)
    np.testing.assert_array_equal(never, plain)
    assert not np.array_equal(plain, x)
    np.testing.assert_array_equal(maps.input_weight, 1.0)
    np.testing.assert_array_equal(maps.dictionary_weight, 0.0)
    np.testing.assert_allclose(maps.noise_ratio[:, 0, 0], noise_ratio(x, maps.body_mask), rtol=1e-6)


def test_enhancer_reads_the_ratio_at_the_thickness_its_input_rule_was_calibrated_at():
    """A blender whose input rule records ``thickness_reference_mm`` gets the noise ratio
    of a Volume read at that thickness (maps.noise_ratio = plain x sqrt(t / ref)), and so
    gives a thick slice less of its input back than the same pixels at 1 mm; without the
    record (a blender calibrated before), the plain ratio."""
    pytest.importorskip("tensorflow")
    import hybrid
    from hybrid.blend import Blender, TableMode
    from hybrid.cnn.config import CNNConfig
    from hybrid.cnn.infer import CNNPair
    from hybrid.phantom import make_patient, scan_phantom
    from hybrid.volume import Volume

    pair = CNNPair.build(CNNConfig.for_region("lung", depth=3, width=8),
                         CNNConfig.for_region("body", depth=3, width=8))
    x = scan_phantom(make_patient(5, shape=(2, 128, 128)), dose_fraction=0.05, rng=3).array
    rule = TableMode(knots=((0.0, 1.0), (20.0, 0.0)))  # input weight falls with the ratio
    old = Blender({"input": rule}, calibration={"input": {}})
    new = Blender({"input": rule}, calibration={"input": {"thickness_reference_mm": 2.0}})
    maps = {}
    for name, b in (("old", old), ("new", new)):
        for t in (1.0, 5.0):
            _, maps[name, t] = hybrid.Enhancer(pair, blender=b, allow_uncalibrated=True).enhance(
                Volume(x, (t, 0.8, 0.8)), return_maps=True, progress=False)
    plain = maps["old", 5.0].noise_ratio
    np.testing.assert_allclose(maps["old", 1.0].noise_ratio, plain, rtol=1e-6)
    np.testing.assert_allclose(maps["new", 5.0].noise_ratio, plain * np.sqrt(2.5), rtol=1e-6)
    np.testing.assert_allclose(maps["new", 1.0].noise_ratio, plain * np.sqrt(0.5), rtol=1e-6)
    body = maps["new", 5.0].body_mask
    assert maps["new", 5.0].input_weight[body].mean() < maps["new", 1.0].input_weight[body].mean()


def test_reading_classes_and_kernel_source():
    """``reading`` (what the user is told): median noise over the slices, the class bounds
    of DOSE_READING_BOUNDS taken inclusively, the given kernel class over the textures'."""
    from hybrid.cnn.noise import DOSE_READING_BOUNDS, NoiseEstimate, reading

    ref = NORMAL_DOSE_SIGMA_HU["standard"]
    lo, hi = DOSE_READING_BOUNDS

    def est(ratios, classes=None):
        n = len(ratios)
        return NoiseEstimate(sigma_hu=np.asarray(ratios, float) * ref, texture=np.full(n, 0.8),
                             kernel_class=tuple(classes or ["standard"] * n),
                             measured=np.ones(n, bool))

    assert reading(est([0.4, lo, 9.0]), "standard")["reads_as"] == "normal-dose noise"
    assert reading(est([lo + 0.01]), "standard")["reads_as"] == "low-dose noise"
    assert reading(est([hi]), "standard")["reads_as"] == "low-dose noise"
    assert reading(est([hi + 0.01]), "standard")["reads_as"] == "ultra-low-dose noise"
    r = reading(est([2.0, 2.0, 2.0], ["standard", "standard", "sharp"]))
    assert (r["kernel_class"], r["kernel_class_from"]) == ("standard", "noise texture")
    assert r["noise_hu"] == pytest.approx(2.0 * ref, abs=0.05)
    assert reading(est([2.0]), "smooth")["noise_ratio"] == pytest.approx(
        2.0 * ref / NORMAL_DOSE_SIGMA_HU["smooth"], abs=0.01)


class _NeverRun:
    """A stand-in noise-aware pair that fails if the Enhancer runs it."""

    digest = None

    def with_settings(self, **_):
        return self

    def propose(self, *a, **k):  # pragma: no cover - the failure being tested for
        raise AssertionError("the noise-aware pair ran where its rule gives it no weight")


def test_enhancer_routes_slices_to_the_noise_aware_pair_by_their_noise_ratio():
    """Rule "noise_aware" trusted on the quiet slice (ratio below the threshold) and not on
    the noisy one: the quiet slice is the noise-aware pair's proposal exactly, the noisy
    one the base pair's; a rule that never trusts it never runs it (the result is the
    base pair's to the bit); a pair without the rule is refused."""
    pytest.importorskip("tensorflow")
    import hybrid
    from hybrid.blend import Blender, HardMode
    from hybrid.cnn.config import CNNConfig
    from hybrid.cnn.infer import CNNPair
    from hybrid.lung import body_mask, segment
    from hybrid.phantom import make_patient, scan_phantom

    ph = make_patient(5, shape=(1, 256, 256))
    x = np.concatenate([scan_phantom(ph, dose_fraction=f, rng=3).array for f in (0.5, 0.02)])
    before = x.copy()
    base = CNNPair.build(CNNConfig.for_region("lung", depth=3, width=8),
                         CNNConfig.for_region("body", depth=3, width=8), seed=0)
    aware = CNNPair.build(CNNConfig(region="lung", noise_input=True, depth=3, width=8,
                                    patch_size=32),
                          CNNConfig(region="body", noise_input=True, depth=3, width=8,
                                    patch_size=32), seed=1)
    for m in (aware.lung_model, aware.body_model):  # built as the identity: make it differ
        last = [layer for layer in m.layers if layer.get_weights()][-1]
        last.set_weights([0.01 * np.ones(w.shape, np.float32) for w in last.get_weights()])
    body = body_mask(x)
    lung = segment(x, body=body)
    r = noise_ratio(x, body)
    assert r[0] < r[1]
    split = float(np.mean(r))
    routed, maps = hybrid.Enhancer(base, blender=Blender({"noise_aware": HardMode(split),
                                                          "input": HardMode(-1.0)}),
                                   noise_aware=aware).enhance(x, return_maps=True,
                                                              progress=False)
    np.testing.assert_array_equal(x, before)
    want_aware = aware.propose(x[:1], lung_mask=lung[:1], body_mask=body[:1]).image[0]
    want_base = base.propose(x, lung_mask=lung, body_mask=body).image
    np.testing.assert_allclose(routed[0], want_aware, atol=1e-3)  # HU; float rounding only
    np.testing.assert_allclose(routed[1], want_base[1], atol=1e-3)
    assert np.abs(want_aware - want_base[0])[body[0]].mean() > 1.0  # the two pairs differ
    assert hybrid.Enhancer(base, blender=Blender({"noise_aware": HardMode(split)}),
                           noise_aware=aware).last_info is None
    never = hybrid.Enhancer(base, blender=Blender({"noise_aware": HardMode(-1.0),
                                                   "input": HardMode(-1.0)}),
                            noise_aware=_NeverRun()).enhance(x, progress=False)
    np.testing.assert_array_equal(never, maps.cnn)
    with pytest.raises(ValueError, match="noise_aware"):
        hybrid.Enhancer(base, blender=Blender({"input": HardMode(1.0)}), noise_aware=aware)


def test_noise_aware_rule_trusts_the_pair_where_it_is_better():
    """Synthetic samples: the noise-aware proposal is exact on quiet samples (ratio 1) and
    far off on noisy ones (ratio 8), the base the other way round: the fitted rule gives
    the pair weight > 0.9 at ratio 1 and < 0.1 at 8, never rising with the ratio, and the
    input-rule samples it returns carry the blend."""
    from hybrid.calibration import noise_aware_rule

    rng = np.random.default_rng(0)
    samples = []
    for ratio in (1.0, 1.5, 2.0, 4.0, 6.0, 8.0):
        nd = rng.normal(0, 50, (16, 16)).astype(np.float32)
        err = rng.normal(0, 20, nd.shape).astype(np.float32)
        quiet = ratio <= 2.0
        na, base = (nd, nd + err) if quiet else (nd + err, nd)
        samples.append((base, nd + 2 * err, np.full(nd.shape, ratio, np.float32), nd,
                        np.ones(nd.shape, bool), na))
    mode, info, over = noise_aware_rule(samples)
    w = mode.weight(np.array([1.0, 2.0, 4.0, 8.0], np.float32))
    assert w[0] > 0.9 and w[-1] < 0.1 and np.all(np.diff(w) <= 1e-6), w
    assert info["rmse_blend_hu"] < min(info["rmse_base_hu"], info["rmse_noise_aware_hu"])
    assert len(over) == len(samples) and len(over[0]) == 5
    np.testing.assert_allclose(over[0][0], samples[0][5], atol=0.1 * 20)  # ~ the pair there


def test_residual_guard_share():
    """The share of the CNN's change a slice keeps: 1 above the normal-dose reading bound or
    where the CNN changed no more than the noise (q <= 1); else the larger of the low dose's
    share of the noise variance over q and the floor q^-GUARD_POWER."""
    from hybrid.blend import GUARD_POWER, residual_guard
    from hybrid.cnn.noise import DOSE_READING_BOUNDS

    ratio = np.array([1.2, 1.2, 1.2, 0.9, DOSE_READING_BOUNDS[0] + 0.01, 3.0])
    q = np.array([0.8, 1.0, 2.0, 3.0, 10.0, 10.0])
    expected = [1.0, 1.0, (1 - 1 / 1.44) / 2.0, 3.0 ** -GUARD_POWER, 1.0, 1.0]
    np.testing.assert_allclose(residual_guard(ratio, q), expected, rtol=1e-12)


def test_the_residual_guard_gives_a_clean_scan_back_what_an_oversmoothing_cnn_took(scans):
    """A normal-dose slice (ratio about 1) through a 'CNN' that blurs it (q >> 1) and a rule
    that trusts the CNN fully: the guard keeps the share ``residual_guard`` gives, so the
    result is much closer to the scan than the blur; a 2 % slice (ratio > 1.6) is not
    guarded (bit-identical to the rules alone)."""
    pytest.importorskip("tensorflow")
    from scipy.ndimage import gaussian_filter

    import hybrid
    from hybrid.blend import Blender, HardMode, residual_guard
    from hybrid.cnn.config import CNNConfig
    from hybrid.cnn.infer import CNNPair
    from hybrid.cnn.noise import estimate_noise, ratio_of
    from hybrid.proposal import Proposal

    ph, s = scans
    pair = CNNPair.build(CNNConfig.for_region("lung", depth=3, width=8),
                         CNNConfig.for_region("body", depth=3, width=8))

    def blur(x, lung_mask=None, body_mask=None):
        return Proposal(gaussian_filter(np.asarray(x, np.float32), (0, 3, 3)), name="cnn")

    out = {}
    for guard in (True, False):
        enh = hybrid.Enhancer(pair, None, Blender({"input": HardMode(-1.0)}), residual_guard=guard)
        enh.cnn.propose = blur
        for f in (1.0, 0.02):
            res, maps = enh.enhance(s["standard", f], return_maps=True, progress=False)
            out[guard, f] = (res, maps, enh.last_info["input"])
    x = s["standard", 1.0]
    body = out[True, 1.0][1].body_mask
    est = estimate_noise(x, body)
    ratio = ratio_of(est)
    assert ratio[0] <= 1.6
    cnn = blur(x).image
    q = np.mean((cnn - x)[body] ** 2) / est.sigma_hu[0] ** 2
    share = float(residual_guard(ratio, np.array([q]))[0])
    assert q > 1.5 and share < 0.5, (q, share)
    np.testing.assert_allclose(out[True, 1.0][0], x + share * (cnn - x), atol=1e-3)
    np.testing.assert_allclose(out[False, 1.0][0], cnn, atol=1e-3)
    np.testing.assert_allclose(out[True, 1.0][1].input_weight, 1 - share, atol=1e-6)
    change = {g: np.sqrt(np.mean((out[g, 1.0][0] - x)[body] ** 2)) for g in (True, False)}
    assert change[True] < 0.5 * change[False], change
    assert out[True, 1.0][2]["residual_guard_slices"] == 1
    np.testing.assert_array_equal(out[True, 0.02][0], out[False, 0.02][0])
    assert out[True, 0.02][2]["residual_guard_slices"] == 0
