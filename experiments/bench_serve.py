"""``make bench-serve``: ``hybrid serve`` under four senders at once (a benchmark, not a test).

A real ``hybrid serve`` process (listener mode, the shipped default models) takes
``--senders`` simultaneous C-STORE senders, each sending ``--series-per-sender`` series of
``--slices`` × 512 × 512 (the real A0001 series, kernel B, at a simulated 2 % dose, each
copy with its own study, series and instance UIDs; a phantom where ../shared is absent),
while the first series is pushed a second time by an extra sender.  The node delivers
each derived series by C-STORE to a sink SCP in this process.  Reported:

- series/min and slices/s from the first C-STORE to the last derived instance received;
- each series' latency (last instance sent → its derived series complete at the sink);
- the node's peak resident memory (VmHWM of its process: models, spool, one series at a
  time) and, for scale, its memory when it first answers (before the models load);
- that every series came back exactly once, whole.

Writes ``experiments/results/bench_serve.json`` and prints a Markdown table.  The
machine is shared: read the numbers as this run's, with its load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "experiments" / "results" / "bench_serve.json"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _series(folder: Path, n: int, slices: int) -> tuple[list[Path], str]:
    """``n`` DICOM series of ``slices`` slices: one low-dose volume, new UIDs per copy."""
    import pydicom
    from pydicom.uid import generate_uid

    import hybrid
    from hybrid.data import default_ct_root
    from hybrid.physics import kernel_for, simulate_low_dose

    src = default_ct_root() / "lung-pet-ct-dx-a0001/kernel-B-5mm"
    if src.exists():
        nd = hybrid.load(src)
        mid = len(nd) // 2
        nd = nd.slab(max(mid - slices // 2, 0), max(mid - slices // 2, 0) + slices)
        uld = simulate_low_dose(nd, 0.02, rng=3, kernel=kernel_for(nd.provenance.kernel),
                                progress=False)
        what = f"real A0001 kernel B, {len(uld)} slices, simulated 2 % dose"
    else:
        from hybrid.phantom import make_patient, scan_phantom

        uld = scan_phantom(make_patient(7, shape=(slices, 512, 512)), dose_fraction=0.02, rng=3)
        what = f"phantom seed 7, {slices} slices, 2 % dose"
    base = hybrid.save(uld, folder / "base", format="dicom", overwrite=True)
    out = []
    for i in range(n):
        d = folder / f"series{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        study, series = generate_uid(), generate_uid()
        for f in base.files:
            ds = pydicom.dcmread(f)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            for kw in ("SoftwareVersions", "DerivationDescription", "SourceImageSequence"):
                if kw in ds:
                    delattr(ds, kw)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(d / f.name, enforce_file_format=True)
        out.append(d)
    return out, what


class Sink:
    """A Storage SCP standing for the PACS: counts what arrives, per derived series."""

    def __init__(self):
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.port = _free_port()
        self.instances: dict[str, set[str]] = {}
        self.last: dict[str, float] = {}
        self.sources: dict[str, str] = {}  # a source instance -> the derived series citing it
        self.lock = threading.Lock()
        ae = AE(ae_title="SINK")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event) -> int:
        ds = event.dataset
        src = str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
        with self.lock:
            self.instances.setdefault(str(ds.SeriesInstanceUID), set()).add(str(ds.SOPInstanceUID))
            self.last[str(ds.SeriesInstanceUID)] = time.perf_counter()
            self.sources[src] = str(ds.SeriesInstanceUID)
        return 0x0000


def _send(files: list[Path], port: int, sent_at: dict, key: str) -> None:
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="HYBRID")
    if not assoc.is_established:
        raise SystemExit(f"sender {key}: association refused")
    try:
        for f in files:
            ds = pydicom.dcmread(f)
            rsp = assoc.send_c_store(ds)
            if int(rsp.get("Status", -1)) != 0:
                raise SystemExit(f"sender {key}: C-STORE status {rsp.get('Status')}")
            sent_at[str(ds.SeriesInstanceUID)] = time.perf_counter()
    finally:
        assoc.release()


def _vm(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MiB
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--series-per-sender", type=int, default=2)
    p.add_argument("--slices", type=int, default=40)
    p.add_argument("--quiet-seconds", type=float, default=5.0)
    args = p.parse_args()
    import pydicom

    n = args.senders * args.series_per_sender
    with tempfile.TemporaryDirectory(dir=REPO / "out" if (REPO / "out").is_dir() else None) as tmp:
        tmp = Path(tmp)
        series, what = _series(tmp / "in", n, args.slices)
        sink = Sink()
        port = _free_port()
        cfg = tmp / "serve.toml"
        cfg.write_text(
            f'mode = "listener"\nspool = "{tmp / "spool"}"\n[listener]\nport = {port}\n'
            f'allowed_calling_aets = ["SCANNER"]\nquiet_seconds = {args.quiet_seconds}\n'
            f'[destination]\nmethod = "cstore"\nae_title = "SINK"\nport = {sink.port}\n')
        log = open(tmp / "serve.log", "ab")  # noqa: SIM115 - kept by the process
        node = subprocess.Popen([sys.executable, "-m", "hybrid.cli", "serve", str(cfg)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            from pynetdicom import AE
            from pynetdicom.sop_class import Verification

            deadline = time.monotonic() + 300
            while True:  # the node answers C-ECHO once its models are loaded and it listens
                ae = AE(ae_title="SCANNER")
                ae.add_requested_context(Verification)
                a = ae.associate("127.0.0.1", port, ae_title="HYBRID")
                if a.is_established:
                    a.release()
                    break
                if node.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"hybrid serve did not start; see {tmp / 'serve.log'}")
                time.sleep(1)
            idle_rss = _vm(node.pid, "VmRSS")
            plans = {f"sender{i}": [f for s in series[i * args.series_per_sender:
                                                      (i + 1) * args.series_per_sender]
                                    for f in sorted(s.glob("*.dcm"))]
                     for i in range(args.senders)}
            plans["again"] = sorted(series[0].glob("*.dcm"))  # pushed twice, at the same time
            sent_at: dict[str, float] = {}
            t0 = time.perf_counter()
            threads = [threading.Thread(target=_send, args=(files, port, sent_at, k))
                       for k, files in plans.items()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            t_sent = time.perf_counter() - t0
            source_uids = [str(pydicom.dcmread(next(s.glob("*.dcm")), stop_before_pixels=True)
                               .SeriesInstanceUID) for s in series]
            while True:
                with sink.lock:
                    whole = sum(len(v) == args.slices for v in sink.instances.values())
                if whole >= n:
                    break
                if node.poll() is not None or time.perf_counter() - t0 > 3600:
                    raise SystemExit(f"not all series came back; see {tmp / 'serve.log'}")
                time.sleep(0.5)
            t_all = max(sink.last.values()) - t0
            peak = _vm(node.pid, "VmHWM")
        finally:
            node.terminate()
            node.wait(60)
            sink.server.shutdown()
        src_of = {}
        for d in series:  # source series → its derived series' completion latency
            first = pydicom.dcmread(next(d.glob("*.dcm")), stop_before_pixels=True)
            src_of[str(first.SeriesInstanceUID)] = str(first.SOPInstanceUID)
        latency = [sink.last[sink.sources[sop]] - sent_at[uid]
                   for uid, sop in src_of.items() if sop in sink.sources]
    res = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, load average "
                   f"{os.getloadavg()[0]:.2f}",
        "input": what, "senders": args.senders, "series_per_sender": args.series_per_sender,
        "pushed_twice": 1, "series": n, "slices_per_series": args.slices,
        "quiet_seconds": args.quiet_seconds,
        "derived_series_received": len(sink.instances),
        "every_series_once_and_whole": (len(sink.instances) == n
                                        and all(len(v) == args.slices
                                                for v in sink.instances.values())
                                        and len(set(source_uids)) == n),
        "all_sent_s": round(t_sent, 1), "all_back_s": round(t_all, 1),
        "series_per_min": round(60 * n / t_all, 2),
        "slices_per_s": round(n * args.slices / t_all, 3),
        "latency_s": {"median": round(float(np.median(latency)), 1),
                      "max": round(float(np.max(latency)), 1)} if latency else None,
        "node_peak_rss_mib": round(peak, 0), "node_idle_rss_mib": round(idle_rss, 0),
    }
    res["markdown"] = (
        "| senders | series × slices | all sent | all back | series/min | slices/s | latency "
        "median / max | node peak RSS (at start) | every series once, whole |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|---|\n"
        f"| {args.senders} (+1 pushing a series again) | {n} × {args.slices} | "
        f"{res['all_sent_s']} s | {res['all_back_s']} s | {res['series_per_min']} | "
        f"{res['slices_per_s']} | {res['latency_s']['median']} / {res['latency_s']['max']} s | "
        f"{res['node_peak_rss_mib'] / 1024:.2f} GiB ({res['node_idle_rss_mib'] / 1024:.2f}) | "
        f"{'yes' if res['every_series_once_and_whole'] else 'NO'} |\n")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(res["markdown"])


if __name__ == "__main__":
    main()
