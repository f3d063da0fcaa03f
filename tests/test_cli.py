"""The ``hybrid`` command line: version, help, info, enhance, exit codes and messages."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hybrid
from hybrid.cli import EXIT_BAD_INPUT, EXIT_OK, main

SUBCOMMANDS = ("info", "enhance", "data")


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------- version and help


def test_version_as_a_command():
    out = subprocess.run([sys.executable, "-m", "hybrid.cli", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0
    assert out.stdout.strip() == f"hybrid {hybrid.__version__}"


def test_version_in_process(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert hybrid.__version__ in capsys.readouterr().out


@pytest.mark.parametrize("command", (None, *SUBCOMMANDS))
def test_help_everywhere(capsys, command):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: hybrid" in out
    if command is None:
        for sub in SUBCOMMANDS:
            assert sub in out
    if command == "enhance":
        for opt in ("--maps", "--format", "--series", "--overwrite", "--no-progress",
                    "--cnn DIR", "--dictionary DIR", "--blender FILE"):
            assert opt in out, opt


def test_no_command_prints_help_and_exits_2(capsys):
    code, out, _ = _run(capsys)
    assert code == EXIT_BAD_INPUT and "usage: hybrid" in out


def test_unknown_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["enhance", "--bogus"])
    assert exc.value.code == 2


# ----------------------------------------------------------------- info


def test_info_on_a_small_series(capsys, dicom_series):
    import json

    code, out, err = _run(capsys, "info", dicom_series, "--json")
    assert code == EXIT_OK, err
    info = json.loads(out)
    assert info["shape_zyx"] == [4, 32, 40]
    assert info["spacing_zyx_mm"] == [2.5, 0.7, 0.7]


def test_info_on_missing_input_exits_2(capsys, tmp_path):
    code, _, err = _run(capsys, "info", tmp_path / "absent")
    assert code == EXIT_BAD_INPUT
    assert "nothing exists at" in err and "absent" in err


# ----------------------------------------------------------------- enhance


@pytest.fixture(scope="module")
def asset_args(tmp_path_factory):
    """Small custom models saved to disk, as the hidden --cnn/--dictionary/--blender options."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("faiss")
    from hybrid.blend import Blender, SoftMode
    from hybrid.cnn.config import CNNConfig
    from hybrid.cnn.infer import CNNPair
    from hybrid.dictionary import DictionaryConfig, PatchDictionary
    from hybrid.phantom import make_patient, scan_phantom

    root = tmp_path_factory.mktemp("assets")
    ph = make_patient(3, shape=(2, 128, 128))
    nd = scan_phantom(ph, dose_fraction=1.0, rng=1)
    uld = scan_phantom(ph, dose_fraction=0.02, rng=2)
    PatchDictionary.build(
        [(uld.array, nd.array, ph.body_mask)],
        config=DictionaryConfig(max_patches=5000, n_heldout=200),
    ).save(root / "dictionary")
    CNNPair.build(
        CNNConfig.for_region("lung", depth=3, width=8),
        CNNConfig.for_region("body", depth=3, width=8),
    ).save(root / "cnn")
    Blender(SoftMode(1.0, 0.1)).save(root / "blend.json")
    return ["--cnn", root / "cnn", "--dictionary", root / "dictionary",
            "--blender", root / "blend.json", "--no-progress"]


@pytest.fixture(scope="module")
def uld_series(tmp_path_factory):
    """A 2-slice ultra-low-dose phantom chest written as a DICOM series by hybrid.save."""
    from hybrid.phantom import make_patient, scan_phantom

    ph = make_patient(5, shape=(2, 128, 128))
    vol = scan_phantom(ph, dose_fraction=0.02, rng=3)
    out = tmp_path_factory.mktemp("uld") / "series"
    hybrid.save(vol, out, format="dicom", description="ULD test")
    return out


def test_enhance_dicom_series(capsys, tmp_path, uld_series, asset_args):
    import pydicom

    before = _tree_digest(uld_series)
    out = tmp_path / "enhanced"
    code, stdout, err = _run(capsys, "enhance", uld_series, out, "--maps", *asset_args)
    assert code == EXIT_OK, err
    assert "wrote derived DICOM series" in stdout
    # the output loads back, same geometry
    src, res = hybrid.load(uld_series), hybrid.load(out)
    assert res.shape == src.shape
    np.testing.assert_allclose(res.spacing, src.spacing, rtol=1e-5)
    assert np.abs(res.array - src.array).max() > 0  # it was enhanced
    # derived series: new series and instance UIDs, same study
    s_files = sorted(uld_series.rglob("*.dcm"))
    r_files = sorted(out.rglob("*.dcm"))
    s_ds = [pydicom.dcmread(f, stop_before_pixels=True) for f in s_files]
    r_ds = [pydicom.dcmread(f, stop_before_pixels=True) for f in r_files]
    assert len(r_ds) == len(s_ds)
    assert {d.SeriesInstanceUID for d in r_ds} != {d.SeriesInstanceUID for d in s_ds}
    assert len({d.SeriesInstanceUID for d in r_ds}) == 1
    assert not {d.SOPInstanceUID for d in r_ds} & {d.SOPInstanceUID for d in s_ds}
    assert {d.StudyInstanceUID for d in r_ds} == {d.StudyInstanceUID for d in s_ds}
    assert "DERIVED" in r_ds[0].ImageType
    assert "hybrid.enhance" in str(r_ds[0].get("DerivationDescription", ""))
    # the maps were written beside the output
    assert (tmp_path / "enhanced_maps.h5").is_file()
    # the input is untouched
    assert _tree_digest(uld_series) == before


def test_enhance_to_nifti_and_hdf5(capsys, tmp_path, uld_series, asset_args):
    import h5py

    for name in ("out.nii.gz", "out.h5"):
        code, stdout, err = _run(capsys, "enhance", uld_series, tmp_path / name, *asset_args)
        assert code == EXIT_OK, err
        assert f"wrote {'nifti' if name.endswith('gz') else 'hdf5'}" in stdout
        assert hybrid.load(tmp_path / name).shape == (2, 128, 128)
    # --format wins over the suffix
    code, _, err = _run(capsys, "enhance", uld_series, tmp_path / "plain", "--format", "hdf5",
                        *asset_args)
    assert code == EXIT_OK, err
    assert h5py.is_hdf5(tmp_path / "plain")


def test_enhance_refuses_to_overwrite(capsys, tmp_path, uld_series, asset_args):
    out = tmp_path / "enhanced.nii.gz"
    assert _run(capsys, "enhance", uld_series, out, *asset_args)[0] == EXIT_OK
    stamp = out.stat().st_mtime_ns
    code, _, err = _run(capsys, "enhance", uld_series, out, *asset_args)
    assert code == EXIT_BAD_INPUT
    assert "already exists" in err and "--overwrite" in err
    assert out.stat().st_mtime_ns == stamp
    assert _run(capsys, "enhance", uld_series, out, "--overwrite", *asset_args)[0] == EXIT_OK


def test_enhance_never_writes_over_or_into_its_input(capsys, tmp_path, uld_series, asset_args):
    before = _tree_digest(uld_series)
    for target in (uld_series, uld_series / "inside"):
        code, _, err = _run(capsys, "enhance", uld_series, target, "--overwrite", *asset_args)
        assert code == EXIT_BAD_INPUT
        assert "input" in err
    npy = tmp_path / "uld.npy"
    np.save(npy, hybrid.load(uld_series).array)
    code, _, err = _run(capsys, "enhance", npy, npy, "--overwrite", *asset_args)
    assert code == EXIT_BAD_INPUT and "input" in err
    assert _tree_digest(uld_series) == before


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: d / "absent", "nothing exists at"),
        (lambda d: _write(d / "notes.txt", b"not an image"), "DICOM"),
        (lambda d: _npy(d / "nan.npy", np.full((2, 32, 32), np.nan, np.float32)), "NaN"),
        (lambda d: _npy(d / "four.npy", np.zeros((1, 2, 32, 32), np.float32)), "3-D"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "DICOM"),
    ],
)
def test_enhance_bad_input_exits_2_naming_the_problem(capsys, tmp_path, asset_args, make, match):
    src = make(tmp_path)
    code, stdout, err = _run(capsys, "enhance", src, tmp_path / "out.nii.gz", *asset_args)
    assert code == EXIT_BAD_INPUT
    assert err.startswith("hybrid enhance: error:")
    assert match in err, err
    assert not (tmp_path / "out.nii.gz").exists()


def test_enhance_bad_options_exit_2(capsys, tmp_path, uld_series, asset_args):
    code, _, err = _run(capsys, "enhance", uld_series, tmp_path / "o.h5", "--dose-fraction", "3",
                        *asset_args)
    assert code == EXIT_BAD_INPUT and "dose_fraction" in err
    args = list(asset_args)
    args[args.index("--cnn") + 1] = tmp_path / "no-such-model"
    code, _, err = _run(capsys, "enhance", uld_series, tmp_path / "o.h5", *args)
    assert code == EXIT_BAD_INPUT and "CNN pair folder" in err


def test_enhance_written_dicom_passes_dciodvfy(capsys, tmp_path, uld_series, asset_args):
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not on PATH")
    out = tmp_path / "enhanced"
    assert _run(capsys, "enhance", uld_series, out, *asset_args)[0] == EXIT_OK
    first = sorted(out.rglob("*.dcm"))[0]
    res = subprocess.run([tool, str(first)], capture_output=True, text=True, timeout=60)
    report = res.stdout + res.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npy(path: Path, arr: np.ndarray) -> Path:
    np.save(path, arr)
    return path


# ----------------------------------------------------------------- demo


def test_demo_help(capsys):
    from hybrid.demo import main as demo_main

    with pytest.raises(SystemExit) as exc:
        demo_main(["--help"])
    assert exc.value.code == 0
    assert "--fast" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_fast_with_small_models(capsys, tmp_path, asset_args):
    """The demo's whole path (phantom + real where present), with small models instead of
    the shipped ones: table, figure and metrics.json."""
    import json

    from hybrid.demo import METHODS, run

    opts = dict(zip(asset_args[0:6:2], asset_args[1:6:2]))
    enhancer = hybrid.Enhancer(opts["--cnn"], opts["--dictionary"], opts["--blender"])
    report = run(fast=True, out_dir=tmp_path / "demo", enhancer=enhancer, progress=False)
    out = capsys.readouterr().out
    assert "research software, no diagnostic claim" in out
    for method in METHODS:
        assert method in out
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert saved["cases"].keys() == report["cases"].keys()
    ph = saved["cases"]["phantom"]["metrics"]
    assert set(ph) == set(METHODS) | {"dictionary only"}  # this Enhancer has a dictionary
    assert set(ph["hybrid"]) == {"rmse_hu_body", "ssim_lung_window_body",
                                 "ssim_soft_tissue_window_body"}


def test_enhance_real_series_with_shipped_defaults(capsys, tmp_path):
    """A real DICOM series through the shipped models: a valid derived series next to the source."""
    import pydicom

    import hybrid
    from hybrid.artifacts import missing_shipped_assets
    from tests.conftest import real_series

    src = real_series("dcmqi-ct-3slice")
    if missing_shipped_assets():
        pytest.skip("shipped default models are absent (hybrid/assets)")
    before = _tree_digest(src)
    out = tmp_path / "enhanced"
    code, _, err = _run(capsys, "enhance", src, out, "--no-progress")
    assert code == EXIT_OK, err
    assert _tree_digest(src) == before  # input untouched
    v, w = hybrid.load(src), hybrid.load(out)
    assert w.shape == v.shape and w.spacing == pytest.approx(v.spacing)
    src_uids = {h["SOPInstanceUID"] for h in v.provenance.slice_headers}
    for f in sorted(out.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        assert ds.SOPInstanceUID not in src_uids
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in src_uids
        assert ds.StudyInstanceUID == v.provenance.slice_headers[0]["StudyInstanceUID"]
    # Enhancement lowers the noise in soft tissue (the source is normal dose: a modest drop).
    from hybrid.physics import estimate_noise_hu

    assert estimate_noise_hu(w.array) < estimate_noise_hu(v.array)
    tool = shutil.which("dciodvfy")
    if tool:
        res = subprocess.run([tool, str(sorted(out.glob("*.dcm"))[0])], capture_output=True, text=True, timeout=60)
        errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]
        assert not errors, res.stdout + res.stderr


#: Lines of TensorFlow's, absl's, CUDA's and oneDNN's start-up chatter (issue 18).
_LIBRARY_CHATTER = re.compile(
    r"absl::|cuda|cuInit|oneDNN|cpu_feature_guard|rebuild TensorFlow|tensorflow|"
    r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.IGNORECASE | re.MULTILINE)


@pytest.mark.parametrize("verbose", (False, True), ids=("quiet", "verbose"))
def test_enhance_prints_no_library_chatter_unless_verbose(tmp_path, verbose):
    """`hybrid enhance` on a real series in a fresh process: stderr holds no line from
    TensorFlow, absl, CUDA or oneDNN; with --verbose they come back (this machine has no
    GPU, so TensorFlow always says something at start-up when allowed to)."""
    from hybrid.artifacts import missing_shipped_assets
    from tests.conftest import real_series

    src = real_series("dcmqi-ct-3slice")
    if missing_shipped_assets():
        pytest.skip("shipped default models are absent (hybrid/assets)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "HYBRID_VERBOSE")}  # as a user's shell has it
    argv = [sys.executable, "-m", "hybrid.cli", *(["--verbose"] if verbose else []),
            "enhance", str(src), str(tmp_path / "out"), "--no-progress"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == EXIT_OK, res.stderr
    chatter = _LIBRARY_CHATTER.findall(res.stderr)
    if verbose:
        assert chatter, f"--verbose should bring the libraries' logs back; stderr: {res.stderr!r}"
    else:
        assert not chatter, f"library chatter on stderr without --verbose: {res.stderr!r}"


def _ct_kinds():
    from tests.dicom_fixtures import REENCODINGS

    return {**{name: uid for uid, name in REENCODINGS.items()}, "enhanced-ct": None,
            "no-modality": None}


@pytest.mark.parametrize("kind", list(_ct_kinds()))
def test_enhance_writes_a_valid_derived_series_from_every_kind_of_ct(capsys, tmp_path, asset_args,
                                                                      kind):
    """Issue 19: `hybrid enhance` on the real dcmqi series stored in every transfer syntax,
    as one Enhanced CT multi-frame file and without Modality: a derived series of classic CT
    slices of the same size, in the source's syntax (its lossless sibling for a lossy one,
    uncompressed for the other two; --transfer-syntax forces one), dciodvfy clean where
    installed (dicom3tools reads no deflated file at all)."""
    import pydicom

    from hybrid.io.transfer import syntax_for_writing
    from tests.conftest import real_series
    from tests.dicom_fixtures import enhanced_ct, reencode, without_modality

    src = real_series("dcmqi-ct-3slice")
    uid = _ct_kinds()[kind]
    if kind == "enhanced-ct":
        fixture, expected = enhanced_ct(src, tmp_path / "in"), "1.2.840.10008.1.2.1"
    elif kind == "no-modality":
        fixture, expected = without_modality(src, tmp_path / "in"), "1.2.840.10008.1.2"
    else:
        fixture, expected = reencode(src, tmp_path / "in", uid), syntax_for_writing(None, uid)
    out = tmp_path / "out"
    code, _, err = _run(capsys, "enhance", fixture, out, *asset_args)
    assert code == EXIT_OK, err
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 3
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == expected
    assert ds.Modality == "CT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert hybrid.load(out).shape == hybrid.load(src).shape
    if kind == "jpeg-lossless-sv1":  # an explicit choice wins over the source's syntax
        forced = tmp_path / "forced"
        assert _run(capsys, "enhance", fixture, forced, "--transfer-syntax", "rle",
                    *asset_args)[0] == EXIT_OK
        assert pydicom.dcmread(sorted(forced.glob("*.dcm"))[0], stop_before_pixels=True
                               ).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    tool = shutil.which("dciodvfy")
    if tool and expected != "1.2.840.10008.1.2.1.99":
        res = subprocess.run([tool, str(files[0])], capture_output=True, text=True, timeout=60)
        errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]
        assert not errors, res.stdout + res.stderr
