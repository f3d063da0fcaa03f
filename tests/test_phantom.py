"""Tests of the procedural chest phantom (hybrid.phantom)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from hybrid.phantom import HU_RANGES, LABELS, Phantom, make_patient, scan_phantom
from hybrid.volume import Volume

SHAPE = (16, 192, 192)  # small: ~0.2 s per patient, enough anatomy for every check


@pytest.fixture(scope="module")
def patients() -> list[Phantom]:
    return [make_patient(s, shape=SHAPE) for s in range(4)]


def test_same_seed_gives_identical_patient():
    a = make_patient(11, shape=(8, 128, 128))
    b = make_patient(11, shape=(8, 128, 128))
    np.testing.assert_array_equal(a.truth, b.truth)
    np.testing.assert_array_equal(a.lung_mask, b.lung_mask)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.spacing == b.spacing
    assert a.params == b.params


def test_different_seeds_differ_in_size_and_anatomy(patients):
    widths = [p.params["body_half_width_mm"] for p in patients]
    heights = [p.params["lung_height_mm"] for p in patients]
    lung_ml = [p.lung_mask.sum() * np.prod(p.spacing) / 1000 for p in patients]
    # drawn from continuous distributions: all distinct, and a real spread
    assert len(set(np.round(widths, 3))) == len(patients)
    assert max(widths) - min(widths) > 5.0  # mm
    assert max(heights) - min(heights) > 5.0  # mm
    assert max(lung_ml) / min(lung_ml) > 1.05
    for p, q in zip(patients, patients[1:]):
        assert np.mean(p.body_mask != q.body_mask) > 0.01  # outlines differ by > 1 % of voxels


def test_output_types_shapes_and_spacing(patients):
    p = patients[0]
    assert p.truth.shape == SHAPE and p.truth.dtype == np.float32
    assert p.lung_mask.dtype == bool and p.body_mask.dtype == bool
    assert p.labels.shape == SHAPE and p.labels.dtype == np.uint8
    assert np.isfinite(p.truth).all()
    assert len(p.spacing) == 3 and all(s > 0 for s in p.spacing)
    assert p.spacing[1] == pytest.approx(430.0 / SHAPE[2])  # default 430 mm field of view
    v = p.to_volume()
    assert isinstance(v, Volume) and v.shape == SHAPE and v.spacing == p.spacing


@pytest.mark.parametrize(
    "label,ranges",
    [
        ("air", ("air",)),
        ("fat", ("fat",)),
        ("muscle", ("muscle",)),
        ("lung", ("lung",)),
        ("cortical_bone", ("cortical_bone",)),
        ("trabecular_bone", ("trabecular_bone",)),
        ("blood", ("blood", "blood_contrast")),
    ],
)
def test_tissue_hu_within_published_ranges(patients, label, ranges):
    # Median over all voxels of a class: texture (a few HU in soft tissue,
    # ~18 HU in lung) and the gravity gradient of the lung (-15..+30 HU) average
    # out; the tolerance of 10 HU covers the texture mean of the smallest classes.
    tol = 10.0
    for p in patients:
        vals = p.truth[p.labels == LABELS[label]]
        assert vals.size > 50, f"seed {p.seed}: too few {label} voxels ({vals.size})"
        med = float(np.median(vals))
        ok = any(HU_RANGES[r][0] - tol <= med <= HU_RANGES[r][1] + tol for r in ranges)
        assert ok, (
            f"seed {p.seed}: median {label} {med:.0f} HU outside {[HU_RANGES[r] for r in ranges]}"
        )
    # nominal values drawn per patient lie inside the published ranges
    for p in patients:
        for name in ("fat", "muscle", "cortical_bone", "trabecular_bone", "lung"):
            lo, hi = HU_RANGES[name]
            assert lo <= p.hu[name] <= hi, (name, p.hu[name])


def test_air_outside_body_and_table_present(patients):
    for p in patients:
        outside = ~p.body_mask & (p.labels == LABELS["air"])
        np.testing.assert_array_equal(p.truth[outside], -1000.0)
        table = p.labels == LABELS["table"]
        assert table.any()
        assert not (table & p.body_mask).any()
        # under the patient's midline the table lies below (larger y than) the body
        mid = SHAPE[2] // 2
        ys_table = np.nonzero(table[:, :, mid].any(axis=0))[0]
        ys_body = np.nonzero(p.body_mask[:, :, mid].any(axis=0))[0]
        assert ys_table.min() > ys_body.max()


def test_masks_consistent_and_lung_fraction_plausible(patients):
    for p in patients:
        assert p.lung_mask.any()
        assert not (p.lung_mask & ~p.body_mask).any(), "lung outside the body"
        # lung volume of an adult at full inspiration (total lung capacity
        # ~4-8 L); the default stack covers the whole lungs
        ml = p.lung_mask.sum() * np.prod(p.spacing) / 1000
        assert 3000 < ml < 8500, ml
        # at mid-chest the lungs fill 25-75 % of the body cross-section (real A0001: 36-46 %)
        k = SHAPE[0] // 2
        frac = p.lung_mask[k].sum() / p.body_mask[k].sum()
        assert 0.25 < frac < 0.75, frac
        # two lungs: left and right of the midline, each one 3-D component
        lab, n = ndimage.label(p.lung_mask[k])
        assert n >= 2
        # the trachea (air outside the lung mask) is not part of the lung mask
        lumen_out = (p.labels == LABELS["airway_lumen"]) & ~p.lung_mask
        assert lumen_out.any()
        # lung voxels are dark, body voxels outside the lung mostly are not
        assert np.median(p.truth[p.lung_mask]) < -700


def test_nodules_and_emphysema_options():
    p = make_patient(5, shape=(16, 192, 192), n_nodules=2, emphysema=0.8)
    assert len(p.nodules) == 2
    assert (p.labels == LABELS["nodule"]).any()
    assert (p.labels == LABELS["emphysema"]).sum() > 100
    emph = p.truth[p.labels == LABELS["emphysema"]]
    assert np.median(emph) < -940  # emphysema -950..-990 HU
    q = make_patient(5, shape=(16, 192, 192), n_nodules=0, emphysema=0.0)
    assert q.nodules == () and not (q.labels == LABELS["emphysema"]).any()


def test_invalid_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="Expected shape"):
        make_patient(0, shape=(8, 32, 32))
    with pytest.raises(ValueError, match="pixel_mm"):
        make_patient(0, pixel_mm=-1.0)
    with pytest.raises(ValueError, match="emphysema"):
        make_patient(0, emphysema=2.0)
    with pytest.raises(TypeError, match="make_patient"):
        scan_phantom(np.zeros((2, 64, 64)), dose_fraction=0.1)


def test_scan_phantom_returns_noisy_volume():
    physics = pytest.importorskip("hybrid.physics")
    if not hasattr(physics, "scan"):
        pytest.skip("hybrid.physics.scan not available yet")
    p = make_patient(2, shape=(2, 128, 128))
    v = scan_phantom(p, dose_fraction=0.02, rng=0)
    assert isinstance(v, Volume) and v.shape == p.shape and v.spacing == p.spacing
    diff = v.array - p.truth
    # ultra-low dose: tens of HU of noise in soft tissue, but unbiased on average
    soft = p.labels == LABELS["muscle"]
    assert 20 < diff[soft].std() < 400
    assert abs(np.median(diff[soft])) < 30
    v2 = scan_phantom(p, dose_fraction=0.02, rng=0)
    np.testing.assert_array_equal(v.array, v2.array)  # seeded
