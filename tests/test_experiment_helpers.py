"""The helpers of the data-source experiment (experiments/data_sources.py, continue_body.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _case(case_id: str, kind: str, kernel: str, z: int, seed: int):
    rng = np.random.default_rng(seed)
    nd = rng.normal(0.0, 10.0, (z, 64, 64)).astype(np.float32)
    uld = nd + rng.normal(0.0, 50.0, nd.shape).astype(np.float32)
    mask = np.ones(nd.shape, bool)
    return SimpleNamespace(case_id=case_id, patient_id=case_id.split("-")[0], kind=kind,
                           meta={"kernel": kernel}, nd=nd, uld=SimpleNamespace(array=uld),
                           uld_aug=uld * 0.5, lung_mask=~mask, body_mask=mask)


@pytest.fixture(scope="module")
def cases():
    return [_case("P01", "phantom", "standard", 2, 0), _case("P02", "phantom", "sharp", 2, 1),
            _case("A1-a", "real", "standard", 1, 2), _case("A1-b", "real", "standard", 1, 3),
            _case("T", "real", "standard", 3, 4)]


def test_patch_shares_follow_the_sampler(cases):
    # the sampler draws each training pair in equal shares, so a source's share is its share
    # of the cases (2 of 5 phantom), whatever their slice counts (a one-slice case weighs
    # as much as a series)
    shares = _load("data_sources")._shares(cases)
    assert shares["phantom"] == {"patients": 2, "cases": 2, "slices": 4, "case_ids": ["P01", "P02"],
                                 "patch_share": 0.4}
    assert shares["real"]["patients"] == 2 and shares["real"]["slices"] == 5
    assert shares["real"]["patch_share"] == 0.6
    # with the real cases' smooth and sharp variants each of the 3 real standard-kernel cases
    # counts 3 times: 9 of 11
    shares = _load("data_sources")._shares(cases, ("smooth", "sharp"))
    assert shares["real"]["patch_share"] == round(9 / 11, 3)
    assert shares["phantom"]["patch_share"] == round(2 / 11, 3)
    assert shares["real"]["kernel_variants"] == ["smooth", "sharp"]


def test_kernel_variants_refilter_standard_cases_of_the_kinds_asked(cases):
    from hybrid.physics import convert_kernel

    out = _load("continue_body").kernel_variants(cases, "sharp", kinds=("real",))
    # 3 real standard-kernel cases x (nominal, aug); the phantoms are left out
    assert [p.patient_id for p in out] == ["A1-a~sharp", "A1-a~sharp~aug", "A1-b~sharp",
                                           "A1-b~sharp~aug", "T~sharp", "T~sharp~aug"]
    t = cases[4]
    np.testing.assert_array_equal(out[4].nd, convert_kernel(t.nd, "standard", "sharp"))
    np.testing.assert_array_equal(out[5].uld, convert_kernel(t.uld_aug, "standard", "sharp"))
    # to a sharper kernel, white noise gets louder (the ratio of the windows is > 1 above 0)
    assert out[4].uld.std() > 1.5 * t.uld.array.std()
    # default: every kind's standard-kernel cases, to the smooth kernel (continue_body's
    # --smooth-variants)
    smooth = _load("continue_body").kernel_variants(cases)
    assert len(smooth) == 8 and smooth[0].patient_id == "P01~smooth"
    assert smooth[0].uld.std() < cases[0].uld.array.std()
