"""The paired dataset: build, manifest, folds, case round trip, figure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybrid.data import build_dataset, iter_cases, load_case, load_manifest
from tests.conftest import DATA_ROOT


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    ct = DATA_ROOT if DATA_ROOT.exists() else root / "absent"
    m = build_dataset(root, n_patients=2, shape=(2, 128, 128), real=True, ct_root=ct,
                      max_real_slices=1, figure=True, progress=False)
    return root, m


def test_manifest_and_cases(tiny_dataset):
    root, m = tiny_dataset
    phantoms = [c for c in m["cases"] if c["kind"] == "phantom"]
    assert [c["case_id"] for c in phantoms] == ["P01", "P02"]
    assert load_manifest(root)["hash"] == m["hash"]
    for _entry, path in iter_cases(root):
        case = load_case(path)
        assert case.uld.shape == case.nd.shape == case.uld_aug.shape == case.lung_mask.shape
        assert case.lung_mask.dtype == bool and case.body_mask.dtype == bool
        assert case.meta["dose_fraction"] == 0.02
        assert 0.01 <= case.meta["aug_dose_fraction"] <= 0.10
        # the simulated low dose is noisier than the normal dose inside the body
        body = case.body_mask & ~case.lung_mask
        assert np.std(case.uld.array[body] - case.nd[body]) > 10
    if DATA_ROOT.exists():
        real = [c for c in m["cases"] if c["kind"] == "real"]
        assert {c["patient_id"] for c in real} >= {"A0001", "pancreas"}
        assert all(c["n_slices"] == 1 for c in real)


def test_folds_leave_one_patient_out(tiny_dataset):
    root, m = tiny_dataset
    folds = json.loads((root / "folds.json").read_text())
    for fl in folds.values():
        for fold in fl:
            patients = {c["patient_id"] for c in m["cases"] if c["case_id"] in fold["train"]}
            assert fold["test_patient"][0] not in patients
            assert not set(fold["test"]) & set(fold["train"])
    # Both kernels of A0001 are one patient: held out together.
    if DATA_ROOT.exists():
        a = next(f for f in folds["real"] if f["test_patient"] == ["A0001"])
        assert sorted(a["test"]) == ["A0001-B", "A0001-L"]


def test_rebuild_is_a_no_op(tiny_dataset):
    root, m = tiny_dataset
    before = {p.name: p.stat().st_mtime_ns for p in (root / "phantom").glob("*.h5")}
    m2 = build_dataset(root, n_patients=2, shape=(2, 128, 128), real=False, max_real_slices=1,
                       figure=False, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (root / "phantom").glob("*.h5")}
    assert before == after
    assert [c["sha256"] for c in m2["cases"]] == [c["sha256"] for c in m["cases"] if c["kind"] == "phantom"]


def test_overview_figure_is_png(tiny_dataset):
    root, _ = tiny_dataset
    png = root / "figures" / "data_overview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_case_rejects_plain_volume(tmp_path, small_volume):
    import hybrid

    p = hybrid.save(small_volume, tmp_path / "v.h5")
    with pytest.raises(ValueError, match="paired case"):
        load_case(p)
