"""hybrid serve under a department's traffic (issue 19): senders at once, a series pushed
twice, a spool that fills up.  Throughput and memory are a benchmark, not a test:
``python experiments/bench_serve.py``.
"""

from __future__ import annotations

import threading
import time

import pydicom
import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("requests")

from hybrid.serve.node import Node  # noqa: E402
from tests.orthanc_server import c_store, free_port, wait_for  # noqa: E402
from tests.test_serve import config, make_uld_series, uids  # noqa: E402

SLICES = 40


class Counting:
    """Gives the volume back; counts the calls per series and the most at once."""

    def __init__(self):
        self.calls: dict[str, int] = {}
        self.running = self.most = 0
        self._lock = threading.Lock()

    def enhance(self, vol, **k):
        with self._lock:
            uid = vol.provenance.series_uid
            self.calls[uid] = self.calls.get(uid, 0) + 1
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.2)  # long enough for a second one to overlap, were two allowed
        with self._lock:
            self.running -= 1
        return vol.with_array(vol.array, step="test: unchanged")


def _copy_as_new_series(src, out):
    """The series again as another patient's study would bring it: new study, series and
    instance UIDs (making eight phantoms would take most of the test's time)."""
    from pydicom.uid import generate_uid

    out.mkdir()
    study, series = generate_uid(), generate_uid()
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(out / f.name, enforce_file_format=True)
    return out


def _send(files, port, results, key, node, acked_unspooled):
    """One sender: one association, its files in order; every acknowledged instance must be
    in the spool already (inbound, or its series already taken further)."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)  # the files' own
    assoc = ae.associate("127.0.0.1", port, ae_title="HYBRID")
    statuses = []
    try:
        for f in files:
            ds = pydicom.dcmread(f)
            rsp = assoc.send_c_store(ds)
            status = int(rsp.Status) if "Status" in rsp else None
            statuses.append(status)
            if status == 0:
                series, sop = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
                st = node.status(series) or {}
                spooled = (node.spool.inbound_dir(series) / f"{sop}.dcm").exists()
                if not spooled and st.get("status") in (None, "receiving"):
                    acked_unspooled.append(sop)
    finally:
        assoc.release()
    results[key] = statuses


@pytest.mark.slow
def test_four_senders_every_series_enhanced_once_and_delivered_whole(orthanc, tmp_path):
    """Four senders at once, each C-STOREing two series of 40 slices, one series pushed by
    two of them: all acknowledged, none before it was spooled, every series enhanced
    exactly once (never two at a time) and delivered to Orthanc with all 40 instances."""
    one = make_uld_series(tmp_path / "one", seed=40, shape=(SLICES, 96, 96))
    series = [_copy_as_new_series(one, tmp_path / f"s{i}") for i in range(8)]
    cfg = config(tmp_path, "listener",
                 listener={"port": 0, "allowed_calling_aets": ["SCANNER"], "quiet_seconds": 2},
                 destination={"method": "cstore", "port": orthanc.dicom_port})
    enhancer, results, acked_unspooled = Counting(), {}, []
    plans = {i: sorted(series[2 * i].glob("*.dcm")) + sorted(series[2 * i + 1].glob("*.dcm"))
             for i in range(4)}
    plans[4] = sorted(series[0].glob("*.dcm"))  # the series pushed twice, at the same time
    with Node(cfg, enhancer=enhancer) as node:
        threads = [threading.Thread(target=_send, args=(files, node.listener_port, results, k,
                                                        node, acked_unspooled))
                   for k, files in plans.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        uid_of = {uids(s)[1]: s for s in series}
        wait_for(lambda: all((node.status(u) or {}).get("status") == "done" for u in uid_of),
                 timeout=300, what="all eight series delivered")
        states = {u: node.status(u) for u in uid_of}
    assert {k: set(v) for k, v in results.items()} == {k: {0} for k in plans}
    assert {k: len(v) for k, v in results.items()} == {0: 80, 1: 80, 2: 80, 3: 80, 4: 40}
    assert acked_unspooled == []
    assert enhancer.calls == {u: 1 for u in uid_of}
    assert enhancer.most == 1
    for u, st in states.items():
        assert st["instances"] == SLICES and st["derived_instances"] == SLICES, u
        study = uids(uid_of[u])[0]
        got = [s for s in orthanc.series_of_study(study)
               if s["MainDicomTags"]["SeriesInstanceUID"] == st["derived_series_uid"]]
        assert len(got) == 1 and len(got[0]["Instances"]) == SLICES


def test_a_nearly_full_spool_refuses_a_new_series_with_out_of_resources(tmp_path, serve_log):
    """A spool quota of 2 MB with 1 MB kept in reserve: a 40-slice series (1.4 MB) is taken
    whole; the next new series is refused from its first instance with 0xA700 (out of
    resources), nothing of it spooled, and the log says why; the node keeps running."""
    a = make_uld_series(tmp_path / "a", seed=51, shape=(SLICES, 128, 128))
    b = make_uld_series(tmp_path / "b", seed=52, shape=(3, 128, 128))
    cfg = config(tmp_path, "listener",
                 listener={"port": 0, "allowed_calling_aets": ["SCANNER"], "quiet_seconds": 60,
                           "spool_quota_mb": 2, "reserve_mb": 1},
                 destination={"method": "cstore", "port": free_port()})
    with Node(cfg, enhancer=Counting()) as node:
        assert c_store(sorted(a.glob("*.dcm")), port=node.listener_port,
                       called="HYBRID") == [0] * SLICES
        assert 1.0 < node.spool.used_bytes / 2 ** 20 < 2.0
        assert c_store(sorted(b.glob("*.dcm")), port=node.listener_port,
                       called="HYBRID") == [0xA700] * 3
        _, series_b, _ = uids(b)
        assert node.status(series_b) is None
        assert not node.spool.inbound_dir(series_b).exists()
        assert node._thread.is_alive()
    assert "spool nearly full" in serve_log.text and "status 0xA700" in serve_log.text


def test_spool_usage_counts_a_derived_series_once_across_a_restart(tmp_path):
    """A derived series written before a restart is counted when the spool is opened, and
    not again when the node takes it up (the quota would otherwise shrink at each restart)."""
    import hybrid
    from hybrid.serve.spool import Spool

    src = make_uld_series(tmp_path / "uld", seed=53, shape=(2, 64, 64))
    _, series, _ = uids(src)
    cfg = config(tmp_path, "listener",
                 listener={"port": 0, "allowed_calling_aets": ["SCANNER"]},
                 destination={"method": "cstore", "port": free_port()})
    spool = Spool(cfg.spool)
    hybrid.save(hybrid.load(src), spool.outbound_dir(series))  # enhanced, not delivered
    node = Node(cfg, enhancer=Counting())
    before = node.spool.used_bytes
    assert before > 0
    node._enhance(series)
    assert node.spool.used_bytes == before
    assert node.status(series)["status"] == "outbound"
