"""hybrid batch on a real Dask LocalCluster (2 worker processes, 1 thread each).

One cluster and one set of small custom models (built in seconds, saved to a
folder, passed by path as ``hybrid batch --cnn/--dictionary/--blender`` takes
them) serve the whole module.  The reference is ``hybrid.Enhancer`` with the
same models run here, one series at a time, on the same inputs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("tensorflow")
pytest.importorskip("faiss")

from distributed import Client, LocalCluster, WorkerPlugin  # noqa: E402

import hybrid  # noqa: E402
from hybrid.batch import MANIFEST_NAME, output_digest, plan_series, run_batch  # noqa: E402
from hybrid.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_import_hybrid_does_not_import_dask():
    code = ("import sys, hybrid, hybrid.batch, hybrid.cli; hybrid.cli.build_parser(); "
            "print(','.join(m for m in ('dask', 'distributed', 'tensorflow', 'faiss') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True)
    assert out.stdout.strip() == ""


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Paths of a tiny CNN pair, dictionary and blender (see tests/test_pipeline.py)."""
    from hybrid.blend import Blender, SoftMode
    from hybrid.cnn.config import CNNConfig
    from hybrid.cnn.infer import CNNPair
    from hybrid.dictionary import DictionaryConfig, PatchDictionary
    from hybrid.phantom import make_patient, scan_phantom

    root = tmp_path_factory.mktemp("assets")
    ph = make_patient(3, shape=(2, 128, 128))
    nd = scan_phantom(ph, dose_fraction=1.0, rng=1)
    uld = scan_phantom(ph, dose_fraction=0.02, rng=2)
    PatchDictionary.build([(uld.array, nd.array, ph.body_mask)],
                          config=DictionaryConfig(max_patches=5000, n_heldout=200)
                          ).save(root / "dictionary")
    CNNPair.build(CNNConfig.for_region("lung", depth=3, width=8),
                  CNNConfig.for_region("body", depth=3, width=8)).save(root / "cnn")
    Blender(SoftMode(1.0, 0.1)).save(root / "blend.json")
    return {"cnn": root / "cnn", "dictionary": root / "dictionary",
            "blender": root / "blend.json"}


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Three small ultra-low-dose series: HDF5, NIfTI and a DICOM folder."""
    from hybrid.phantom import make_patient, scan_phantom

    root = tmp_path_factory.mktemp("inputs")
    paths = []
    for seed, name in ((5, "a.h5"), (6, "b.nii.gz"), (7, "c_dicom")):
        vol = scan_phantom(make_patient(seed, shape=(3, 128, 128)), dose_fraction=0.02, rng=seed)
        paths.append(hybrid.save(vol, root / name).path)
    return paths


@pytest.fixture(scope="module")
def reference(assets, series, tmp_path_factory):
    """Each series enhanced here one by one, saved in its format and read back."""
    root = tmp_path_factory.mktemp("reference")
    enhancer = hybrid.Enhancer(**assets)
    ref = {}
    for src in series:
        out = enhancer.enhance(hybrid.load(src), progress=False)
        ref[Path(src).name] = hybrid.load(hybrid.save(out, root / Path(src).name)).array
    return ref


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
                           "TF_NUM_INTEROP_THREADS": "1"}) as c:
        yield c


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]


def _outputs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name not in (MANIFEST_NAME,
                                                                   ".hybrid-batch.lock"))


def _assert_same_image(got: np.ndarray, expected: np.ndarray) -> None:
    # A 1-thread Dask worker and the in-process reference may sum the CNN's products in
    # another order (oneDNN picks its blocking by thread count and load): float32 rounding
    # of at most 1.2e-4 HU was seen.  1e-3 HU is four orders of magnitude below the noise.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)


# ----------------------------------------------------------------------------- tests
def test_plan_names_outputs_after_inputs(series, tmp_path):
    jobs = plan_series([series[0].parent], tmp_path / "out")
    assert [(Path(j["output"]).name, j["format"]) for j in jobs] == [
        ("a.h5", "hdf5"), ("b.nii.gz", "nifti"), ("c_dicom", "dicom")]
    assert [j["format"] for j in plan_series(series, tmp_path / "o", "nifti")] == ["nifti"] * 3
    with pytest.raises(ValueError, match="inside the input folder"):
        plan_series([series[2]], series[2] / "out")
    # two series of one name: both get a suffix from their source, the same on every run
    other = tmp_path / "elsewhere" / "a.h5"
    other.parent.mkdir()
    other.write_bytes(series[0].read_bytes())
    names = [Path(j["output"]).name for j in plan_series([series[0], other], tmp_path / "o2")]
    assert len(set(names)) == 2 and all(n.startswith("a-") and n.endswith(".h5") for n in names)
    assert names == [Path(j["output"]).name
                     for j in plan_series([series[0], other], tmp_path / "o2")]


def test_batch_equals_enhance_one_by_one_and_resumes(cluster, assets, series, reference,
                                                     tmp_path):
    out = tmp_path / "out"
    s = run_batch(series, out, scheduler=cluster.scheduler_address, progress=False, **assets)
    assert (s.total, s.done, s.skipped, s.failed, s.slices) == (3, 3, 0, 0, 9)
    assert _outputs(out) == ["a.h5", "b.nii.gz", "c_dicom"]
    for name, expected in reference.items():
        _assert_same_image(hybrid.load(out / name).array, expected)
    recs = {Path(r["source"]).name: r for r in _manifest(out)}
    assert sorted(recs) == ["a.h5", "b.nii.gz", "c_dicom"]
    for name, r in recs.items():
        assert r["status"] == "done" and r["error"] is None
        assert r["output"] == str(out / name) and r["slices"] == 3
        assert r["output_sha256"] == output_digest(out / name)
        assert r["noise_before_hu"] is None or r["noise_before_hu"] > 0
        assert set(r["timings_s"]) == {"models", "load", "enhance", "save", "total",
                                      "enhance_cpu"}
    assert recs["c_dicom"]["series_uid"] and recs["c_dicom"]["output_series_uid"]
    assert recs["c_dicom"]["output_series_uid"] != recs["c_dicom"]["series_uid"]

    # the same command again: nothing to do, nothing touched
    before = (out / MANIFEST_NAME).read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    s2 = run_batch(series, out, scheduler=cluster.scheduler_address, progress=False, **assets)
    assert (s2.done, s2.skipped, s2.failed, s2.records) == (0, 3, 0, [])
    assert (out / MANIFEST_NAME).read_text() == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes

    # a missing output and a damaged one are redone; the intact one is kept
    (out / "a.h5").unlink()
    with open(out / "b.nii.gz", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\0" * 16)
    s3 = run_batch(series, out, scheduler=cluster.scheduler_address, progress=False, **assets)
    assert (s3.done, s3.skipped, s3.failed) == (2, 1, 0)
    assert sorted(Path(r["source"]).name for r in s3.records) == ["a.h5", "b.nii.gz"]
    _assert_same_image(hybrid.load(out / "b.nii.gz").array, reference["b.nii.gz"])
    assert len(_manifest(out)) == 3 and _outputs(out) == ["a.h5", "b.nii.gz", "c_dicom"]


def test_batch_without_a_dictionary_equals_enhance_and_has_its_own_config(
        cluster, assets, series, tmp_path):
    """The default path (no dictionary, issue 17) on the workers: the same images as
    Enhancer(cnn, None, blender) here; and a batch run with a dictionary is another
    configuration (its outputs are not taken for this one's)."""
    from hybrid.batch.manifest import config_key
    from hybrid.pipeline import default_asset_paths

    no_dict = {"cnn": assets["cnn"], "blender": assets["blender"]}
    out = tmp_path / "out"
    s = run_batch(series[:1], out, scheduler=cluster.scheduler_address, progress=False, **no_dict)
    assert (s.done, s.failed) == (1, 0)
    enh = hybrid.Enhancer(cnn=assets["cnn"], blender=assets["blender"])
    assert enh.dictionary is None
    expected = enh.enhance(hybrid.load(series[0]), progress=False).array
    _assert_same_image(hybrid.load(out / Path(series[0]).name).array, expected)
    paths = {k: str(v) for k, v in assets.items()}
    keys = {config_key({**paths, "dictionary": d}, {}, None)
            for d in (None, paths["dictionary"], str(default_asset_paths()["dictionary"]))}
    assert len(keys) == 3


def test_corrupt_series_is_reported_and_the_others_finish(cluster, assets, series, reference,
                                                          tmp_path, capsys):
    bad = tmp_path / "in" / "broken.h5"
    bad.parent.mkdir()
    bad.write_bytes(b"not an HDF5 file" * 64)
    out = tmp_path / "out"
    argv = ["batch", str(series[0]), str(bad), str(series[2]), "--out", str(out),
            "--scheduler", cluster.scheduler_address, "--no-progress", "--json",
            "--cnn", str(assets["cnn"]), "--dictionary", str(assets["dictionary"]),
            "--blender", str(assets["blender"])]
    assert main(argv) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["done"], summary["failed"], summary["ok"]) == (2, 1, False)
    assert [f["source"] for f in summary["failures"]] == [str(bad)]
    recs = {Path(r["source"]).name: r for r in _manifest(out)}
    assert recs["broken.h5"]["status"] == "failed" and recs["broken.h5"]["error"]
    assert "output_sha256" not in recs["broken.h5"]
    assert recs["a.h5"]["status"] == recs["c_dicom"]["status"] == "done"
    assert _outputs(out) == ["a.h5", "c_dicom"]
    _assert_same_image(hybrid.load(out / "a.h5").array, reference["a.h5"])
    # again: the done ones are skipped, the broken one is tried (and fails) again
    assert main(argv) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 2, 1)
    # bad usage: exit 2 with what was expected
    assert main(["batch", str(tmp_path / "missing.h5"), "--out", str(out)]) == 2
    assert "nothing exists at" in capsys.readouterr().err


class KillOnce(WorkerPlugin):
    """Kills its worker process (SIGKILL) as a batch task starts executing there, once."""

    name = "test-kill-once"

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or not str(key).startswith("hybrid-enhance-"):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{key} {os.getpid()}".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)  # the task is in flight: Dask must re-run it


def test_killed_worker_mid_batch_every_output_once(cluster, assets, series, reference, tmp_path):
    marker = tmp_path / "killed"
    out = tmp_path / "out"
    # what an earlier run killed while writing leaves: a temporary, a cut-short output
    out.mkdir()
    (out / ".a.h5.k2j4x.tmp").write_bytes(b"half")
    (out / "b.nii.gz").write_bytes(b"\x1f\x8b cut short")
    with Client(cluster) as client:
        pids = set(client.run(os.getpid).values())
        client.register_plugin(KillOnce(str(marker)))
        try:
            s = run_batch(series, out, scheduler=cluster.scheduler_address, progress=False,
                          **assets)
        finally:
            client.unregister_worker_plugin(KillOnce.name)
        assert marker.exists()
        killed_pid = int(marker.read_text().split()[1])
        assert killed_pid in pids
        client.wait_for_workers(2, timeout=60)
        assert killed_pid not in set(client.run(os.getpid).values())
    assert (s.done, s.failed) == (3, 0)
    assert _outputs(out) == ["a.h5", "b.nii.gz", "c_dicom"]  # each once, no temporaries left
    recs = _manifest(out)
    assert sorted(Path(r["source"]).name for r in recs) == ["a.h5", "b.nii.gz", "c_dicom"]
    for r in recs:
        assert r["status"] == "done"
        assert r["output_sha256"] == output_digest(r["output"])
    for name, expected in reference.items():
        _assert_same_image(hybrid.load(out / name).array, expected)
    s2 = run_batch(series, out, scheduler=cluster.scheduler_address, progress=False, **assets)
    assert (s2.done, s2.skipped) == (0, 3)


def test_cli_local_cluster(assets, series, reference, tmp_path, capsys):
    """No --scheduler: hybrid batch starts (and stops) its own LocalCluster."""
    out = tmp_path / "out"
    argv = ["batch", str(series[1]), "--out", str(out), "--workers", "1", "--no-progress",
            "--cnn", str(assets["cnn"]), "--dictionary", str(assets["dictionary"]),
            "--blender", str(assets["blender"])]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "batch: 1 done, 0 already done, 0 failed of 1 series; 3 slices" in text
    _assert_same_image(hybrid.load(out / "b.nii.gz").array, reference["b.nii.gz"])


def test_cli_and_batch_write_the_same_derivation_text(assets, series, tmp_path, capsys):
    """The derived DICOM of ``hybrid enhance`` and of a batch worker says the same thing."""
    import pydicom

    from hybrid.batch.worker import enhance_series

    src = series[2]
    argv = ["enhance", str(src), str(tmp_path / "cli"), "--no-progress",
            "--cnn", str(assets["cnn"]), "--dictionary", str(assets["dictionary"]),
            "--blender", str(assets["blender"])]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    job = {"source": str(src), "output": str(tmp_path / "batch"), "format": "dicom"}
    rec = enhance_series(job, "local-test", {k: str(v) for k, v in assets.items()}, {}, 1)
    assert rec["status"] == "done", rec["error"]
    keys = ("DerivationDescription", "SeriesDescription", "SoftwareVersions", "ImageType")
    cli_ds = pydicom.dcmread(sorted((tmp_path / "cli").glob("*.dcm"))[0], stop_before_pixels=True)
    batch_files = sorted((tmp_path / "batch").glob("*.dcm"))
    batch_ds = pydicom.dcmread(batch_files[0], stop_before_pixels=True)
    assert [cli_ds.get(k) for k in keys] == [batch_ds.get(k) for k in keys]
    assert "research software, no diagnostic claim" in cli_ds.DerivationDescription
    # each names the series it wrote, as it is in the files
    assert f"wrote derived DICOM series {cli_ds.SeriesInstanceUID} to" in printed
    assert rec["output_series_uid"] == str(batch_ds.SeriesInstanceUID)


def test_batch_reports_one_page_per_series_and_an_index(cluster, assets, series, tmp_path):
    """--report: one self-contained page per series in DIR/reports and an index linking
    them; a second run skips them; a series done earlier without a report gets one."""
    out = tmp_path / "out"
    run_batch(series[:1], out, scheduler=cluster.scheduler_address, progress=False, **assets)
    assert not (out / "reports").exists()
    s = run_batch(series, out, scheduler=cluster.scheduler_address, progress=False,
                  report=True, **assets)
    assert (s.done, s.skipped, s.failed) == (3, 0, 0)  # a.h5 redone: it had no report
    pages = sorted(p.name for p in (out / "reports").iterdir())
    assert pages == ["a.html", "b.html", "c_dicom.html", "index.html"]
    index = (out / "reports" / "index.html").read_text(encoding="utf-8")
    for name in ("a.html", "b.html", "c_dicom.html"):
        assert f'href="{name}"' in index
        page = (out / "reports" / name).read_text(encoding="utf-8")
        assert page.count("data:image/png;base64,") >= 5 and "no diagnostic claim" in page
    s2 = run_batch(series, out, scheduler=cluster.scheduler_address, progress=False,
                   report=True, **assets)
    assert (s2.done, s2.skipped) == (0, 3)
