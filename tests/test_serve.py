"""hybrid serve: configuration, selection, the Storage SCP, and end to end beside a real Orthanc.

The Orthanc tests start Debian's ``Orthanc`` on 127.0.0.1 (temporary config
and storage, authentication on; see tests/orthanc_server.py) and skip where
the binary is absent (``.ci/run`` installs it).  Series are small simulated
ultra-low-dose phantoms (3-4 slices of 128x128), enhanced with the shipped
default models; the expected HU come from ``hybrid.enhance`` on the same
input in the test itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("requests")

import pydicom  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

import hybrid  # noqa: E402
from hybrid.serve.config import SelectConfig, load_config, parse_config  # noqa: E402
from hybrid.serve.node import Node  # noqa: E402
from hybrid.serve.rules import select_reason  # noqa: E402
from tests.orthanc_server import (  # noqa: E402
    ORTHANC,
    PASSWORD,
    USER,
    associate_ok,
    associate_refused,
    c_store,
    free_port,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-98765"  # must never appear in a log
needs_orthanc = pytest.mark.skipif(
    ORTHANC is None, reason="Debian's Orthanc is not installed (.ci/run installs it: apt-get "
                            "install orthanc orthanc-dicomweb)")


# ---------------------------------------------------------------- helpers
def make_uld_series(folder: Path, *, seed: int = 11, shape=(3, 128, 128),
                    description: str = "ULD chest", ctdivol: float = 0.4) -> Path:
    """A simulated ultra-low-dose CT series as a scanner would send it (ORIGINAL\\PRIMARY)."""
    from hybrid.phantom import make_patient, scan_phantom

    vol = scan_phantom(make_patient(seed, shape=shape), dose_fraction=0.02, rng=seed)
    tmp = folder.with_name(folder.name + ".written")
    hybrid.save(vol, tmp, format="dicom")
    folder.mkdir(parents=True)
    for f in sorted(tmp.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        for kw in ("SoftwareVersions", "DerivationDescription", "SourceImageSequence"):
            if kw in ds:
                delattr(ds, kw)
        ds.SeriesDescription = description
        ds.ProtocolName = "Chest ULD"
        ds.CTDIvol = ctdivol
        ds.AcquisitionNumber = 1
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.save_as(folder / f.name, enforce_file_format=True)
    return folder


def uids(folder: Path) -> tuple[str, str, list[str]]:
    """(StudyInstanceUID, SeriesInstanceUID, SOP Instance UIDs) of a series folder."""
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.glob("*.dcm"))]
    return str(dss[0].StudyInstanceUID), str(dss[0].SeriesInstanceUID), [
        str(d.SOPInstanceUID) for d in dss]


def reference_hu(src: Path, tmp: Path) -> np.ndarray:
    """``hybrid.enhance`` of the same input, through the same DICOM writer and reader."""
    out = hybrid.enhance(hybrid.load(src), progress=False)
    hybrid.save(out, tmp / "reference", format="dicom")
    return hybrid.load(tmp / "reference").array


def check_derived(folder: Path, src: Path, tmp: Path) -> None:
    """The derived series: new UIDs, same study, references to every original, HU of hybrid.enhance."""
    study, series, sops = uids(src)
    d_study, d_series, d_sops = uids(folder)
    assert d_study == study
    assert d_series != series and not set(d_sops) & set(sops)
    refs = set()
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        refs |= {str(r.ReferencedSOPInstanceUID) for r in ds.SourceImageSequence}
    assert refs == set(sops)
    got = hybrid.load(folder).array
    expected = reference_hu(src, tmp)
    original = hybrid.load(src).array
    assert got.shape == expected.shape == original.shape
    # same input, same models, same int16 writer: equal up to one quantisation step
    assert float(np.abs(got - expected).max()) <= 1.0
    assert float(np.abs(got - original).mean()) > 5.0  # and it was enhanced, not copied


def config(tmp: Path, mode: str, **sections) -> object:
    data = {"mode": mode, "spool": str(tmp / "spool"), **sections}
    return parse_config(data, env={"HYBRID_ORTHANC_PASSWORD": PASSWORD})


class Forbidden:
    """An enhancer that must not be used (the series was enhanced already)."""

    def enhance(self, *a, **k):
        raise AssertionError("enhanced twice")


def no_identifiers(text: str) -> None:
    assert PATIENT_NAME not in text and PATIENT_ID not in text


# ---------------------------------------------------------------- configuration and rules
def test_config_toml_takes_secret_from_environment(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text(
        'mode = "orthanc"\nspool = "/tmp/spool"\n'
        '[orthanc]\nurl = "http://127.0.0.1:8042"\nusername = "hybrid"\n'
        'password_env = "MY_PACS_PW"\npoll_seconds = 2\n'
        '[select]\nseries_description = "(?i)uld"\nmax_ctdivol_mgy = 1\n'
        '[destination]\nmethod = "stow"\n[retry]\ninitial_seconds = 1\nmax_seconds = 60\n')
    c = load_config(cfg, env={"MY_PACS_PW": "s3cr3t-x"})
    assert (c.mode, c.orthanc.username, c.orthanc.password) == ("orthanc", "hybrid", "s3cr3t-x")
    assert (c.orthanc.poll_seconds, c.select.max_ctdivol_mgy, c.destination.method) == (2.0, 1.0,
                                                                                       "stow")
    assert "s3cr3t-x" not in repr(c)
    with pytest.raises(ValueError, match="MY_PACS_PW"):
        load_config(cfg, env={})


def test_config_yaml_and_refusals(tmp_path):
    pytest.importorskip("yaml", reason="PyYAML absent: YAML configuration needs it")
    y = tmp_path / "serve.yaml"
    y.write_text("mode: listener\nspool: /tmp/s\nlistener:\n  allowed_calling_aets: [CT1, CT2]\n"
                 "  quiet_seconds: 5\n")
    c = load_config(y, env={})
    assert c.listener.allowed_calling_aets == ("CT1", "CT2") and c.listener.quiet_seconds == 5.0
    base = {"mode": "listener", "spool": "/tmp/s", "listener": {"allowed_calling_aets": ["CT1"]}}
    with pytest.raises(ValueError, match="allow-list is required"):
        parse_config({**base, "listener": {}}, env={})
    with pytest.raises(ValueError, match="no password in the file"):
        parse_config({**base, "orthanc": {"password": "x"}}, env={})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['quiet'\]"):
        parse_config({**base, "listener": {"allowed_calling_aets": ["CT1"], "quiet": 3}}, env={})
    with pytest.raises(ValueError, match="no credentials in"):
        parse_config({**base, "mode": "orthanc", "orthanc": {"url": "http://u:p@pacs:8042"}},
                     env={})
    with pytest.raises(ValueError, match="mode"):
        parse_config({**base, "mode": "push"}, env={})
    with pytest.raises(FileNotFoundError, match="nothing exists"):
        load_config(tmp_path / "absent.toml")


def test_select_rule():
    rule = SelectConfig(series_description="(?i)low.?dose|uld", max_ctdivol_mgy=1.0)
    uld = {"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL",
           "SeriesDescription": "Chest ULD 1.0", "CTDIvol": "0.45"}
    assert select_reason(uld, rule) is None
    assert "modality MR" in select_reason({**uld, "Modality": "MR"}, rule)
    assert "CTDIvol 3.2" in select_reason({**uld, "CTDIvol": "3.2"}, rule)
    assert "no CTDIvol" in select_reason({k: v for k, v in uld.items() if k != "CTDIvol"}, rule)
    assert "SeriesDescription" in select_reason({**uld, "SeriesDescription": "Chest std"}, rule)
    assert "derived" in select_reason({**uld, "ImageType": "DERIVED\\SECONDARY"}, rule)
    assert "hybrid 0.1.0" in select_reason({**uld, "SoftwareVersions": "hybrid 0.1.0"}, rule)
    assert "ProtocolName" in select_reason(uld, SelectConfig(protocol="^Lung"))


def test_cli_serve_help_and_missing_config(tmp_path, capsys):
    from hybrid.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "CONFIG" in out and "--check" in out and "password_env" in out
    assert main(["serve", str(tmp_path / "absent.toml")]) == 2
    assert "nothing exists" in capsys.readouterr().err


def test_import_hybrid_and_cli_leave_pynetdicom_out():
    code = ("import sys, hybrid, hybrid.cli; hybrid.cli.build_parser(); "
            "print([m for m in ('pynetdicom', 'requests', 'pydicom', 'tensorflow') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- listener refusals
def test_listener_refuses_unknown_ae_non_ct_and_truncated(tmp_path, serve_log):
    src = make_uld_series(tmp_path / "uld", shape=(2, 64, 64))
    files = sorted(src.glob("*.dcm"))
    cfg = config(tmp_path, "listener", listener={"port": 0, "allowed_calling_aets": ["SCANNER"],
                                                  "quiet_seconds": 600})
    with Node(cfg, enhancer=Forbidden()) as node:
        port = node.listener_port
        assert associate_refused(port=port, called="HYBRID", calling="INTRUDER")
        assert associate_refused(port=port, called="OTHER", calling="SCANNER")

        mr = pydicom.dcmread(files[0])
        mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        mr.Modality, mr.SOPInstanceUID, mr.SeriesInstanceUID = "MR", generate_uid(), generate_uid()
        ct_mr = pydicom.dcmread(files[0])
        ct_mr.Modality, ct_mr.SOPInstanceUID = "MR", generate_uid()
        short = pydicom.dcmread(files[0])
        short.SOPInstanceUID = generate_uid()
        short.PixelData = short.PixelData[: len(short.PixelData) // 2]
        statuses = c_store([mr, ct_mr, short, files[0]], port=port, called="HYBRID")
        assert statuses == [0x0122, 0xA900, 0xC000, 0x0000]
        assert node._thread.is_alive()
        _, series, sops = uids(src)
        assert node.status(series)["status"] == "receiving"
        assert [p.name for p in node.spool.inbound_dir(series).iterdir()] == [f"{sops[0]}.dcm"]
    text = serve_log.text
    assert "refused association from AE 'INTRUDER'" in text and "not in the allow-list" in text
    assert "called AE title is not HYBRID" in text
    assert "modality MR, expected CT; status 0xA900" in text
    assert "is not one of CT Image Storage, Enhanced CT Image Storage, Legacy Converted Enhanced CT Image Storage; status 0x0122" in text
    assert "pixel data truncated" in text and "status 0xC000" in text
    no_identifiers(text)


# ---------------------------------------------------------------- end to end with Orthanc
@needs_orthanc
@pytest.mark.slow
@pytest.mark.parametrize("method", ["rest", "stow"])
def test_pacs_driven_end_to_end(orthanc, tmp_path, serve_log, method):
    src = make_uld_series(tmp_path / "uld")
    other = make_uld_series(tmp_path / "standard", seed=12, shape=(2, 64, 64),
                            description="Chest standard dose")
    study, series, _ = uids(src)
    cfg = config(tmp_path, "orthanc",
                 orthanc={"url": orthanc.url, "username": USER, "poll_seconds": 0.3},
                 select={"series_description": "(?i)uld", "max_ctdivol_mgy": 1.0},
                 destination={"method": method})
    with Node(cfg) as node:
        assert c_store(sorted(src.glob("*.dcm")) + sorted(other.glob("*.dcm")),
                       port=orthanc.dicom_port, called="ORTHANC") == [0] * 5
        st = wait_for(lambda: (node.status(series) or {}).get("status") == "done"
                      and node.status(series), timeout=120, what="the series to be delivered")
        derived_uid = st["derived_series_uid"]
        in_study = orthanc.series_of_study(study)
        derived = [s for s in in_study
                   if s["MainDicomTags"]["SeriesInstanceUID"] == derived_uid]
        assert len(in_study) == 2 and len(derived) == 1
        check_derived(orthanc.download_series(derived[0], tmp_path / "got"), src, tmp_path)

        # the derived series becomes stable in Orthanc in turn: seen, and never enhanced
        def derived_change():
            changes = orthanc.get("/changes?limit=1000")["Changes"]
            return next((c["Seq"] for c in changes if c["ChangeType"] == "StableSeries"
                         and c["ID"] == derived[0]["ID"]), None)

        seq = wait_for(derived_change, timeout=60, what="StableSeries of the derived series")
        wait_for(lambda: (node.spool.cursor() or 0) >= seq, timeout=60, what="the node to see it")
        assert node.status(derived_uid) is None
        assert len(orthanc.series_of_study(study)) == 2
        assert node.status(uids(other)[1]) is None
    text = serve_log.text
    assert f"series {derived_uid} was produced by this node" in text
    assert f"series {uids(other)[1]} not selected: SeriesDescription does not match" in text
    no_identifiers(text)


@needs_orthanc
class Unchanged:
    """An enhancer that gives the volume back (what is tested is the node, not the models)."""

    def enhance(self, vol, **k):
        return vol.with_array(vol.array, step="test: unchanged")


def _fake_delivery(node, sent: list, monkeypatch, *, slow_cleanup: float = 0.0):
    """Deliver to a list instead of a PACS; optionally a slow spool clean-up."""
    import time

    def send(files):  # what a PACS would receive: each file's transfer syntax
        sent.append([str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                     for f in files])

    monkeypatch.setattr(node, "_send", send)
    discard = node.spool.discard_files

    def slow(uid):
        time.sleep(slow_cleanup)
        discard(uid)

    monkeypatch.setattr(node.spool, "discard_files", slow)


def test_done_is_reported_only_once_the_spool_is_cleaned(tmp_path, monkeypatch):
    """The flaky test_listener_end_to_end (issue 19): "done" was written before the spooled
    files were removed, so a reader could see it with the inbound folder still there.  With
    a clean-up made 0.5 s slow, status() must still never say "done" while it exists."""
    src = make_uld_series(tmp_path / "uld", seed=21, shape=(2, 64, 64))
    _, series, _ = uids(src)
    cfg = config(tmp_path, "listener",
                 listener={"port": 0, "allowed_calling_aets": ["SCANNER"], "quiet_seconds": 0.2},
                 destination={"method": "cstore", "port": free_port()})
    sent: list = []
    with Node(cfg, enhancer=Unchanged()) as node:
        _fake_delivery(node, sent, monkeypatch, slow_cleanup=0.5)
        assert c_store(sorted(src.glob("*.dcm")), port=node.listener_port, called="HYBRID") == [0, 0]
        seen = []

        def done():
            st = node.status(series) or {}
            seen.append((st.get("status"), node.spool.inbound_dir(series).exists()))
            return st.get("status") == "done"

        wait_for(done, timeout=60, interval=0.01, what="the series to be delivered")
        assert not node.spool.inbound_dir(series).exists()
        assert not node.spool.outbound_dir(series).exists()
    assert ("done", True) not in seen and len(sent) == 1


def test_listener_takes_jpeg_lossless_and_ct_without_modality(tmp_path, monkeypatch):
    """A PACS that stores CT as JPEG Lossless sends it so; an anonymiser strips Modality:
    both are accepted (status 0), enhanced, and the derived series keeps the source's
    syntax (JPEG Lossless; uncompressed for the other)."""
    from tests.conftest import real_series
    from tests.dicom_fixtures import reencode, without_modality

    src = real_series("dcmqi-ct-3slice")
    jl = reencode(src, tmp_path / "jl", "1.2.840.10008.1.2.4.70")
    nomod = without_modality(src, tmp_path / "nomod")
    for f in nomod.iterdir():  # another series of the same study
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(f, enforce_file_format=True)
    cfg = config(tmp_path, "listener",
                 listener={"port": 0, "allowed_calling_aets": ["SCANNER"], "quiet_seconds": 0.3},
                 destination={"method": "cstore", "port": free_port()})
    sent: list = []
    with Node(cfg, enhancer=Unchanged()) as node:
        _fake_delivery(node, sent, monkeypatch)
        assert c_store(sorted(jl.iterdir()), port=node.listener_port, called="HYBRID") == [0] * 3
        assert c_store(sorted(nomod.iterdir()), port=node.listener_port, called="HYBRID") == [0] * 3
        wait_for(lambda: len(sent) == 2, timeout=120, what="both series delivered")
    assert sorted(sent) == [["1.2.840.10008.1.2"] * 3, ["1.2.840.10008.1.2.4.70"] * 3]


@pytest.mark.slow
def test_listener_end_to_end(orthanc, tmp_path, serve_log):
    src = make_uld_series(tmp_path / "uld", seed=13)
    study, series, _ = uids(src)
    cfg = config(tmp_path, "listener",
                 listener={"port": 0, "allowed_calling_aets": ["SCANNER"], "quiet_seconds": 1},
                 destination={"method": "cstore", "port": orthanc.dicom_port})
    with Node(cfg) as node:
        assert c_store(sorted(src.glob("*.dcm")), port=node.listener_port,
                       called="HYBRID") == [0, 0, 0]
        st = wait_for(lambda: (node.status(series) or {}).get("status") == "done"
                      and node.status(series), timeout=120, what="the series to be delivered")
        assert st["instances"] == 3 and st["derived_instances"] == 3 and st["attempts"] == 0
        assert not node.spool.inbound_dir(series).exists()  # delivered: spool cleaned
    in_study = orthanc.series_of_study(study)
    assert [s["MainDicomTags"]["SeriesInstanceUID"] for s in in_study] == [
        st["derived_series_uid"]]
    check_derived(orthanc.download_series(in_study[0], tmp_path / "got"), src, tmp_path)
    no_identifiers(serve_log.text)


# ---------------------------------------------------------------- faults
def listener_to_cstore(tmp_path, orthanc):
    """Listener mode, delivery by C-STORE to the test Orthanc, fast retries."""
    return config(tmp_path, "listener",
                  listener={"port": 0, "allowed_calling_aets": ["SCANNER"], "quiet_seconds": 0.5},
                  destination={"method": "cstore", "port": orthanc.dicom_port,
                               "timeout_seconds": 5},
                  retry={"initial_seconds": 0.2, "max_seconds": 0.5})


@needs_orthanc
@pytest.mark.slow
def test_pacs_down_during_upload_is_retried_until_back(orthanc, tmp_path, serve_log):
    src = make_uld_series(tmp_path / "uld", seed=14, shape=(2, 128, 128))
    study, series, _ = uids(src)
    orthanc.stop()
    cfg = listener_to_cstore(tmp_path, orthanc)
    with Node(cfg) as node:
        c_store(sorted(src.glob("*.dcm")), port=node.listener_port, called="HYBRID")
        wait_for(lambda: (node.status(series) or {}).get("attempts", 0) >= 2, timeout=120,
                 what="two failed deliveries")
        assert node.status(series)["status"] == "outbound"
        orthanc.start()
        st = wait_for(lambda: (node.status(series) or {}).get("status") == "done"
                      and node.status(series), timeout=60, what="delivery after the PACS is back")
    in_study = orthanc.series_of_study(study)
    assert len(in_study) == 1 and len(in_study[0]["Instances"]) == 2
    assert in_study[0]["MainDicomTags"]["SeriesInstanceUID"] == st["derived_series_uid"]
    assert st["attempts"] >= 2
    assert f"delivery of derived series {st['derived_series_uid']} (source {series}) failed" \
        in serve_log.text


@needs_orthanc
@pytest.mark.slow
def test_restart_resumes_pending_delivery_without_enhancing_again(orthanc, tmp_path):
    src = make_uld_series(tmp_path / "uld", seed=15, shape=(2, 128, 128))
    study, series, _ = uids(src)
    orthanc.stop()
    cfg = listener_to_cstore(tmp_path, orthanc)
    with Node(cfg) as node:
        c_store(sorted(src.glob("*.dcm")), port=node.listener_port, called="HYBRID")
        wait_for(lambda: (node.status(series) or {}).get("attempts", 0) >= 1, timeout=120,
                 what="a failed delivery")
    derived_uid = node.status(series)["derived_series_uid"]
    orthanc.start()
    with Node(cfg, enhancer=Forbidden()) as node:  # the restarted node
        st = wait_for(lambda: (node.status(series) or {}).get("status") == "done"
                      and node.status(series), timeout=60, what="the resumed delivery")
        # the same source sent again after delivery: accepted, kept aside, never enhanced again
        assert c_store(sorted(src.glob("*.dcm"))[:1], port=node.listener_port,
                       called="HYBRID") == [0]
        assert len(list(node.spool.late_dir(series).glob("*.dcm"))) == 1
    assert st["derived_series_uid"] == derived_uid
    in_study = orthanc.series_of_study(study)
    assert [s["MainDicomTags"]["SeriesInstanceUID"] for s in in_study] == [derived_uid]


@needs_orthanc
@pytest.mark.slow
def test_pacs_driven_restart_after_download_enhances_once(orthanc, tmp_path, serve_log):
    src = make_uld_series(tmp_path / "uld", seed=17, shape=(2, 128, 128))
    study, series, _ = uids(src)
    cfg = config(tmp_path, "orthanc",
                 orthanc={"url": orthanc.url, "username": USER, "poll_seconds": 0.3,
                          "start_from": "beginning"},
                 destination={"method": "rest"})
    c_store(sorted(src.glob("*.dcm")), port=orthanc.dicom_port, called="ORTHANC")
    crashed = Node(cfg, enhancer=Forbidden())
    crashed.spool.acquire()  # a node that downloads, then dies before enhancing
    wait_for(lambda: crashed._poll() or crashed.status(series), timeout=60, what="the download")
    assert crashed.status(series)["status"] == "ready"
    cursor = crashed.spool.cursor()
    crashed.spool.release()
    with Node(cfg) as node:
        st = wait_for(lambda: (node.status(series) or {}).get("status") == "done"
                      and node.status(series), timeout=60, what="the resumed series")
        assert node.spool.cursor() >= cursor
    in_study = orthanc.series_of_study(study)
    assert len(in_study) == 2
    assert st["derived_series_uid"] in [s["MainDicomTags"]["SeriesInstanceUID"] for s in in_study]
    assert serve_log.text.count(f"enhanced series {series}") == 1
    assert f"resuming 1 pending series: {series} (ready)" in serve_log.text


def _serve_process(cfg: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "hybrid.cli", "serve", str(cfg)],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)


def _listening(port: int) -> bool:
    return associate_ok(port=port, called="HYBRID", calling="SCANNER")


@needs_orthanc
@pytest.mark.slow
def test_node_killed_mid_series_and_restarted_completes_it_once(orthanc, tmp_path):
    src = make_uld_series(tmp_path / "uld", seed=16, shape=(4, 128, 128))
    files = sorted(src.glob("*.dcm"))
    study, series, sops = uids(src)
    port = free_port()
    cfg = tmp_path / "serve.toml"
    cfg.write_text(
        f'mode = "listener"\nspool = "{tmp_path / "spool"}"\n'
        f'[listener]\nae_title = "HYBRID"\nport = {port}\nallowed_calling_aets = ["SCANNER"]\n'
        f'quiet_seconds = 3\n'
        f'[destination]\nmethod = "cstore"\nae_title = "ORTHANC"\nport = {orthanc.dicom_port}\n'
        f'[retry]\ninitial_seconds = 0.5\nmax_seconds = 2\n')
    log = tmp_path / "serve.log"
    inbound = tmp_path / "spool" / "inbound" / series

    first = _serve_process(cfg, log)
    try:
        wait_for(lambda: _listening(port), timeout=120, what="the first node to listen")
        assert c_store(files[:2], port=port, called="HYBRID") == [0, 0]
        assert sorted(p.name for p in inbound.glob("*.dcm")) == sorted(f"{u}.dcm" for u in sops[:2])
    finally:
        first.send_signal(signal.SIGKILL)  # by PID, mid-series
        first.wait(30)

    second = _serve_process(cfg, log)
    try:
        wait_for(lambda: _listening(port), timeout=120, what="the restarted node to listen")
        # the sender resumes (resending the instance it last sent) and finishes the series
        assert c_store(files[1:], port=port, called="HYBRID") == [0, 0, 0]
        state = tmp_path / "spool" / "state" / f"{series}.json"
        import json

        st = wait_for(lambda: state.exists() and json.loads(state.read_text())["status"] == "done"
                      and json.loads(state.read_text()), timeout=120, what="delivery")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    assert st["instances"] == 4 and st["derived_instances"] == 4
    in_study = orthanc.series_of_study(study)
    assert len(in_study) == 1 and len(in_study[0]["Instances"]) == 4
    assert in_study[0]["MainDicomTags"]["SeriesInstanceUID"] == st["derived_series_uid"]
    text = log.read_text()
    assert "resuming 1 pending series" in text and text.count("enhanced series") == 1
    no_identifiers(text)


@needs_orthanc
def test_wrong_rest_credentials_are_a_clear_error(orthanc, tmp_path, monkeypatch, capsys):
    from hybrid.cli import main

    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'mode = "orthanc"\nspool = "{tmp_path / "spool"}"\n'
                   f'[orthanc]\nurl = "{orthanc.url}"\nusername = "{USER}"\n'
                   f'password_env = "TEST_PACS_PW"\n')
    monkeypatch.setenv("TEST_PACS_PW", "wrong-password-123")
    assert main(["serve", str(cfg), "--check"]) == 2
    err = capsys.readouterr().err
    assert "refused the credentials" in err and "HTTP 401" in err and "TEST_PACS_PW" in err
    assert "wrong-password-123" not in err
    from hybrid.serve.orthanc import OrthancAuthError

    with pytest.raises(OrthancAuthError, match="user 'hybrid'"):
        Node(load_config(cfg)).start()
    monkeypatch.setenv("TEST_PACS_PW", PASSWORD)
    assert main(["serve", str(cfg), "--check"]) == 0
    assert "Orthanc accepted the credentials" in capsys.readouterr().out
