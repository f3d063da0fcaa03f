"""hybrid.evaluate: held-out comparison and leave-one-patient-out CV on a tiny phantom set."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from hybrid import evaluate as ev
from hybrid.data import build_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    build_dataset(root, n_patients=3, shape=(2, 128, 128), real=False, figure=False, progress=False)
    return root


def test_central_slices():
    assert ev.central_slices(16, 8) == list(range(4, 12))
    assert ev.central_slices(3, 8) == [0, 1, 2]
    assert ev.central_slices(5, None) == list(range(5))
    with pytest.raises(ValueError, match="positive"):
        ev.central_slices(5, 0)


def test_default_tune_cases_never_use_held_out_patients(tiny):
    # P01 standard, P02 sharp, P03 smooth: no other training case of P01's kernel -> an error
    with pytest.raises(ValueError, match="kernel class"):
        ev.default_tune_cases(tiny, "P01", exclude_patients=["P01"])
    # a tuning set is never a held-out patient
    with pytest.raises(ValueError, match="held-out"):
        ev.compare_on_heldout(tiny, patients=("P01", "P02"), baselines=("gaussian",),
                              tune_cases={"P01": ["P02"], "P02": ["P03"]}, enhancer=object())


def test_tune_pairs_round_robin(tiny):
    pairs, picked = ev._tune_pairs(tiny, ["P02", "P03"], 3)
    assert sum(len(v) for v in picked.values()) == 3 == len(pairs)
    assert picked["P02"] == [0, 1] and picked["P03"] == [0]  # 2 slices: both central, lower first
    uld, nd, body = pairs[0]
    assert uld.shape == nd.shape == body.shape == (128, 128) and body.dtype == bool


class _FakeMaps:
    def __init__(self, a):
        self.cnn, self.dictionary = a - 1, a + 1


class _FakeEnhancer:
    """Stands in for the shipped models: returns the input as every proposal."""

    def enhance(self, vol, return_maps=False, progress=False):
        return vol, _FakeMaps(vol.array)


def test_compare_on_heldout_report(tiny, tmp_path, monkeypatch):
    res = ev.compare_on_heldout(
        tiny, patients=("P01",), baselines=("gaussian", "tv"), tune_cases={"P01": ["P02", "P03"]},
        tune_slices=2, slices=1, grids=ev.FAST_GRIDS, enhancer=_FakeEnhancer(), out=tmp_path)
    c = res["cases"]["P01"]
    assert c["slices"] == [0]  # one central slice of two
    assert set(c["methods"]) == {"input", "gaussian", "tv", "cnn", "dictionary", "hybrid"}
    # the fake hybrid is the input: identical scores
    assert c["methods"]["hybrid"]["metrics"] == c["methods"]["input"]["metrics"]
    tuned = res["tuning"]["P02+P03"]["baselines"]
    assert tuned["gaussian"]["params"]["sigma_px"] in ev.FAST_GRIDS["gaussian"]["sigma_px"]
    saved = json.loads((tmp_path / "baselines_heldout.json").read_text())
    assert saved["verdict"]["P01"]["best_baseline"] in ("gaussian", "tv")
    md = (tmp_path / "baselines_heldout.md").read_text()
    assert "SSIM lung window (−600/1500)" in md and "SSIM soft-tissue window (40/400)" in md
    assert "sigma_px=" in md and "same slices" in md
    # new models, the same inputs: tuning and baseline scores reused, nothing tuned again
    class _OtherEnhancer(_FakeEnhancer):
        def enhance(self, vol, return_maps=False, progress=False):
            return vol.with_array(vol.array + 5), _FakeMaps(vol.array)

    import hybrid.evaluate.heldout as heldout

    def no_tuning(*a, **k):
        raise AssertionError("tuned again although the baselines could be reused")

    kw = dict(patients=("P01",), baselines=("gaussian", "tv"), tune_cases={"P01": ["P02", "P03"]},
              tune_slices=2, slices=1, grids=ev.FAST_GRIDS)
    with monkeypatch.context() as m:
        m.setattr(heldout, "_tune_sets", no_tuning)
        again = ev.compare_on_heldout(tiny, enhancer=_OtherEnhancer(), out=tmp_path / "again",
                                      reuse_baselines=tmp_path / "baselines_heldout.json", **kw)
    a = again["cases"]["P01"]["methods"]
    assert again["reused_baselines"]["cases"] == ["P01"] and again["tuning"] == saved["tuning"]
    for b in ("gaussian", "tv", "input"):
        assert a[b]["metrics"]["body"]["rmse_hu"] == pytest.approx(
            c["methods"][b]["metrics"]["body"]["rmse_hu"], rel=1e-12)
    assert a["hybrid"]["metrics"]["body"]["rmse_hu"] != c["methods"]["hybrid"]["metrics"]["body"]["rmse_hu"]
    assert list(a) == list(c["methods"])  # the report's method order is kept
    assert "reused from" in (tmp_path / "again" / "baselines_heldout.md").read_text()
    # a different input (other slices) is scored afresh
    fresh = ev.compare_on_heldout(tiny, enhancer=_FakeEnhancer(), **{**kw, "slices": 2},
                                  reuse_baselines=tmp_path / "baselines_heldout.json")
    assert fresh["reused_baselines"] is None and fresh["cases"]["P01"]["slices"] == [0, 1]


def test_cv_settings_come_from_the_config_files():
    from hybrid.recipe import load_config

    cv = ev.load_cv_settings("cv")
    assert cv["grids"] is ev.CV_GRIDS and cv["other_set"] is True and cv["eval_slices"] == 4
    fast = ev.load_cv_settings("cv-fast", {"eval_slices": 3})
    assert fast["grids"] is ev.FAST_GRIDS and fast["eval_slices"] == 3 and fast["note"]
    with pytest.raises(ValueError, match="unknown keys"):
        ev.load_cv_settings("cv", {"eval_slice": 3})
    with pytest.raises(ValueError, match="'cv' section"):
        ev.load_cv_settings("shipped")
    # the recipe section: short budgets for both regions, the shipped CNN configurations
    config = load_config("cv")
    assert config.cnn.lung is None and config.cnn.body is None
    assert {b["epochs"] for b in config.cnn.budget.values()} == {4}


def test_cv_command_line_maps_to_the_config_files(monkeypatch, tmp_path):
    import hybrid.evaluate.cli as cli
    from hybrid.recipe import load_config

    seen = {}

    def fake(data, out, **kw):
        seen.update(kw, out=out)
        (tmp_path / "cv_summary.md").write_text("summary")
        return []

    monkeypatch.setattr(cli, "cross_validate", fake)
    cli.main(["cv", "--fast", "--epochs", "2", "--steps", "3", "--eval-slices", "5",
              "--out", str(tmp_path)])
    assert seen["settings"] == "cv-fast" and seen["cv"] == {"eval_slices": 5}
    assert seen["max_folds"] == {"phantom": 2, "real": 1}
    budget = seen["config"].cnn.budget
    assert {(b["epochs"], b["steps_per_epoch"], b["batch_size"]) for b in budget.values()} == {(2, 3, 8)}
    cli.main(["cv", "--out", str(tmp_path)])
    assert seen["settings"] == "cv" and seen["cv"] is None and seen["max_folds"] is None
    assert seen["config"] == load_config("cv")  # no flag: the file's budgets


def test_cross_validate_fast_end_to_end(tiny, tmp_path):
    from hybrid.dictionary import PatchDictionary
    from hybrid.recipe import load_config

    if not hasattr(PatchDictionary, "with_settings"):  # the fold runs through hybrid.recipe
        pytest.skip("needs PatchDictionary.with_settings (the dictionary refactor's branch)")

    config = load_config("cv-fast").with_cnn(patch_sizes=(16, 32))  # 128² phantoms: smaller patches
    rows = ev.cross_validate(tiny, tmp_path, sets=("phantom",), max_folds=1,
                             baselines=("gaussian",), settings="cv-fast", config=config, threads=2)
    # fold P01: test patient P01; the shipped calibration patients are absent, so the training
    # patient with the most lung voxels calibrates (its CNN validation needs lung patches) and
    # the other one fills the dictionary
    import h5py

    lung = {}
    for p in ("P02", "P03"):
        with h5py.File(tiny / "phantom" / f"{p}.h5", "r") as f:
            lung[p] = int(f["lung_mask"][...].sum())
    calib = max(sorted(lung), key=lambda p: lung[p])
    info = json.loads((tmp_path / "cv_folds.json").read_text())["folds"]
    assert [(f["test_patient"], f["calibration_patient"]) for f in info] == [("P01", calib)]
    assert "P01" not in {c.split("~")[0] for c in info[0]["train_cases"]}
    with open(tmp_path / "cv_results.csv", newline="") as fh:
        saved = list(csv.DictReader(fh))
    assert len(saved) == len(rows) > 0
    assert {r["patient"] for r in saved} == {"P01"}
    assert {r["method"] for r in saved} == {"input", "gaussian", "cnn", "dictionary", "hybrid"}
    assert {r["region"] for r in saved} == {"body", "lung", "non_lung"}
    body_rmse = {r["method"]: float(r["value"]) for r in saved
                 if r["region"] == "body" and r["metric"] == "rmse_hu"}
    assert all(np.isfinite(v) and v > 0 for v in body_rmse.values())
    summary = (tmp_path / "cv_summary.md").read_text()
    assert "RMSE HU (body)" in summary and "SSIM lung window (−600/1500)" in summary
    input_row = next(line for line in summary.splitlines() if line.startswith("| input"))
    assert "±" not in input_row  # one fold: a mean, no sd
    for png in ("cv_boxplots.png", "cv_example.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # resume: the finished fold is skipped, its rows kept
    again = ev.cross_validate(tiny, tmp_path, sets=("phantom",), max_folds=1,
                              baselines=("gaussian",), settings="cv-fast", config=config,
                              figures=False)
    assert len(again) == len(rows)
    assert len(json.loads((tmp_path / "cv_folds.json").read_text())["folds"]) == 1
    assert not (tmp_path / "work").exists()  # training folders go to a temporary folder
    # resume with other settings (another CNN patch size): refused, nothing written
    before = (tmp_path / "cv_results.csv").read_bytes()
    with pytest.raises(ValueError, match="other settings.*cnn_configs.*--no-resume"):
        ev.cross_validate(tiny, tmp_path, sets=("phantom",), max_folds=1, baselines=("gaussian",),
                          settings="cv-fast", config=config.with_cnn(patch_sizes=(16, 48)),
                          figures=False)
    assert (tmp_path / "cv_results.csv").read_bytes() == before


def test_tune_baselines_extends_a_grid_whose_best_is_its_largest():
    rng = np.random.default_rng(0)
    nd = np.zeros((64, 64), np.float32)
    nd[16:48, 16:48] = 100
    uld = nd + rng.normal(0, 70, nd.shape).astype(np.float32)
    body = np.ones_like(nd, bool)
    r = ev.tune_baselines([(uld, nd, body)], ["input", "gaussian"],
                          grids={"gaussian": {"sigma_px": [0.25, 0.5, 1.0]}})
    g = r["gaussian"]
    assert g["grid"]["sigma_px"][:4] == [0.25, 0.5, 1.0, 2.0]  # extended by the last ratio
    assert g["params"]["sigma_px"] >= 2.0 and g["grid_edge"] == []
    assert r["input"]["params"] == {}
    with pytest.raises(ValueError, match="Unknown baseline"):
        ev.tune_baselines([(uld, nd, body)], ["median"])


def test_dose_sweep_fast_end_to_end(tiny, tmp_path):
    doses = ev.DOSE_SWEEP_FRACTIONS
    res = ev.dose_sweep(tiny, patients=("P01",), tune_cases={"P01": ["P02", "P03"]}, fast=True,
                        enhancer=_FakeEnhancer(), out=tmp_path)
    saved = json.loads((tmp_path / "dose_sweep.json").read_text())
    by = {(r["dose_fraction"], r["method"]): r for r in saved["rows"]}
    assert set(by) == {(f, m) for f in doses for m in ("input", "cnn", "hybrid", "bm3d", "nlm")}
    # at 100 % the input is the normal-dose scan: no change; the row reports change vs own noise
    full = by[(1.0, "input")]
    assert full["rmse_hu"] == 0.0 and full["change_vs_noise"] == 0.0 and full["noise_hu"] > 0
    assert by[(1.0, "cnn")]["change_vs_noise"] > 0  # the fake CNN is the input − 1 HU
    assert by[(0.01, "input")]["rmse_hu"] > 2 * by[(0.5, "input")]["rmse_hu"]
    # tuned per dose, on training patients only
    (tset,) = saved["tuning"].values()
    assert "P01" not in tset["patients"] and set(tset["patients"]) <= {"P02", "P03"}
    assert set(tset["per_dose"]) == {f"{f:.2f}" for f in doses if f < 1}
    assert by[(0.05, "bm3d")]["params"] == tset["per_dose"]["0.05"]["bm3d"]["params"]
    assert set(res["gate"]) == {"hybrid", "cnn"} and not res["gate"]["hybrid"]["passes"]
    md = (tmp_path / "dose_sweep.md").read_text()
    assert "SSIM lung window (−600/1500)" in md and "SSIM soft-tissue window (40/400)" in md
    assert (tmp_path / "dose_sweep.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="held-out"):
        ev.dose_sweep(tiny, patients=("P01", "P02"), tune_cases={"P01": ["P02"], "P02": ["P03"]},
                      fast=True, enhancer=_FakeEnhancer())
    # new models, same inputs: the baseline rows and tuning are reused, not recomputed
    again = ev.dose_sweep(tiny, patients=("P01",), tune_cases={"P01": ["P02", "P03"]}, fast=True,
                          enhancer=_FakeEnhancer(), reuse_baselines=tmp_path / "dose_sweep.json")
    assert len(again["reused_baselines"]["case_doses"]) == len(doses)
    assert again["tuning"] == saved["tuning"]
    key = lambda r: (r["dose_fraction"], r["method"])  # noqa: E731
    for r, q in zip(sorted(again["rows"], key=key), sorted(saved["rows"], key=key)):
        assert key(r) == key(q)
        assert r["rmse_hu"] == pytest.approx(q["rmse_hu"], rel=1e-12)


def test_real_pairs_fast_end_to_end(tiny, tmp_path):
    from hybrid.evaluate.real_pairs import default_real_pairs_dir, real_pairs

    folder = default_real_pairs_dir()
    if not sorted(folder.glob("*.npz")):
        pytest.skip(f"the real quarter-dose pairs are not there ({folder})")
    res = real_pairs(tiny, exclude_patients=("P01",), fast=True, enhancer=_FakeEnhancer(),
                     out=tmp_path)
    saved = json.loads((tmp_path / "real_pairs.json").read_text())
    assert len(saved["cases"]) == 3 and "McCollough" in saved["citation"]
    for c in saved["cases"].values():
        assert set(c["methods"]) == {"input", "gaussian", "nlm", "bm3d", "cnn", "hybrid"}
        assert c["methods"]["hybrid"]["rmse_hu"] == c["methods"]["input"]["rmse_hu"]  # fake
    assert "P01" not in saved["tuning"]["patients"] and saved["tuning"]["dose_fraction"] == 0.25
    assert not res["verdict"]["passes"]  # the fake hybrid is the input
    assert (tmp_path / "real_pairs.png").read_bytes()[:4] == b"\x89PNG"
    assert "McCollough" in (tmp_path / "real_pairs.md").read_text()


def test_dose_sweep_and_real_pairs_command_lines(capsys):
    for cmd in ("dose-sweep", "real-pairs"):
        with pytest.raises(SystemExit) as e:
            ev.main([cmd, "--help"])
        assert e.value.code == 0
    assert "--fast" in capsys.readouterr().out
