"""DICOM TLS (issue 19): the listener and the C-STORE sender against Orthanc with its DICOM
TLS on, both ways verified; a wrong certificate refused with a clear log line.

Certificates are made here with the openssl command line (self-signed, one per party,
SAN 127.0.0.1 and localhost); each side trusts the other's.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("requests")

from hybrid.serve.node import Node  # noqa: E402
from tests.orthanc_server import ORTHANC, OrthancServer, free_port, wait_for  # noqa: E402
from tests.test_serve import config, make_uld_series, uids  # noqa: E402
from tests.test_serve_load import Counting  # noqa: E402

pytestmark = [
    pytest.mark.skipif(ORTHANC is None, reason="Debian's Orthanc is not installed (.ci/run "
                                                "installs it)"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is absent"),
]


def _certificate(folder: Path, name: str) -> dict[str, Path]:
    key, crt = folder / f"{name}.key", folder / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "2", "-newkey", "rsa:2048",
                    "-keyout", str(key), "-out", str(crt), "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=digitalSignature,keyEncipherment,keyCertSign"],
                   check=True, capture_output=True, timeout=60)
    return {"certificate": crt, "private_key": key}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    return {n: _certificate(d, n) for n in ("hybrid", "orthanc", "scanner")}


def _tls_config(tmp_path, certs, *, trusted: str, listener_port: int, orthanc_port: int,
                **extra):
    return config(tmp_path, "listener",
                  listener={"port": listener_port, "allowed_calling_aets": ["ORTHANC", "SCANNER"],
                            "quiet_seconds": 1},
                  destination={"method": "cstore", "port": orthanc_port, "timeout_seconds": 10},
                  retry={"initial_seconds": 0.5, "max_seconds": 1},
                  tls={"certificate": str(certs["hybrid"]["certificate"]),
                       "private_key": str(certs["hybrid"]["private_key"]),
                       "trusted_certificates": str(certs[trusted]["certificate"]),
                       "listener": True, "destination": True}, **extra)


@contextlib.contextmanager
def _node_beside_orthanc(tmp_path, certs, *, trusted: str):
    """Orthanc with its DICOM TLS on (trusting the node) and a TLS node trusting
    ``trusted``'s certificate; (node, orthanc, the node's port)."""
    port = free_port()
    orthanc = OrthancServer(tmp_path / "orthanc", modalities={"HYBRID": (port, True)},
                            tls={**certs["orthanc"], "trusted": certs["hybrid"]["certificate"]}
                            ).start()
    try:
        cfg = _tls_config(tmp_path, certs, trusted=trusted, listener_port=port,
                          orthanc_port=orthanc.dicom_port)
        with Node(cfg, enhancer=Counting()) as node:
            yield node, orthanc, port
    finally:
        orthanc.stop(graceful=False)


def _orthanc_sends(orthanc, folder: Path):
    """Upload a series to Orthanc, then have Orthanc C-STORE it to the node (modality
    "hybrid", over DICOM TLS); Orthanc's answer."""
    ids = [orthanc.session.post(orthanc.url + "/instances", data=f.read_bytes(), timeout=30
                                ).json()["ID"] for f in sorted(folder.glob("*.dcm"))]
    return orthanc.session.post(orthanc.url + "/modalities/hybrid/store",
                                json={"Resources": ids, "Synchronous": True}, timeout=60)


def test_tls_both_ways_with_orthanc(tmp_path, certs, serve_log):
    """Orthanc C-STOREs a series to the node over DICOM TLS; the node sends the derived
    series back over DICOM TLS; each side verified the other's certificate."""
    src = make_uld_series(tmp_path / "uld", seed=61, shape=(2, 64, 64))
    study, series, _ = uids(src)
    with _node_beside_orthanc(tmp_path, certs, trusted="orthanc") as (node, orthanc, _):
        rsp = _orthanc_sends(orthanc, src)
        assert rsp.ok, rsp.text
        st = wait_for(lambda: (node.status(series) or {}).get("status") == "done"
                      and node.status(series), timeout=60, what="delivery over TLS")
        derived = [s for s in orthanc.series_of_study(study)
                   if s["MainDicomTags"]["SeriesInstanceUID"] == st["derived_series_uid"]]
        assert len(derived) == 1 and len(derived[0]["Instances"]) == 2
    assert "(DICOM TLS)" in serve_log.text


def test_wrong_certificates_are_refused_with_a_clear_log_line(tmp_path, certs, serve_log):
    """A sender with a certificate the node does not trust is refused at the handshake; a
    PACS whose certificate the node does not trust gets nothing, and the delivery waits."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    from hybrid.serve.config import TlsConfig
    from hybrid.serve.tls import client_context

    src = make_uld_series(tmp_path / "uld", seed=62, shape=(2, 64, 64))
    _, series, _ = uids(src)
    # the node trusts only the scanner's certificate: Orthanc is not trusted either way
    with _node_beside_orthanc(tmp_path, certs, trusted="scanner") as (node, orthanc, port):
        scanner = TlsConfig(certificate=str(certs["scanner"]["certificate"]),
                            private_key=str(certs["scanner"]["private_key"]),
                            trusted_certificates=str(certs["hybrid"]["certificate"]))
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        # a sender whose certificate the node trusts (the scanner) gets in ...
        ok = ae.associate("127.0.0.1", port, ae_title="HYBRID",
                          tls_args=(client_context(scanner), "127.0.0.1"))
        assert ok.is_established
        statuses = [int(ok.send_c_store(pydicom.dcmread(f)).Status)
                    for f in sorted(src.glob("*.dcm"))]
        ok.release()
        assert statuses == [0, 0]
        # ... Orthanc, whose certificate it does not trust, is refused at the handshake
        assert not _orthanc_sends(orthanc, src).ok
        # and the derived series is not sent to an Orthanc it does not trust
        st = wait_for(lambda: (node.status(series) or {}).get("attempts", 0) >= 1
                      and node.status(series), timeout=60, what="a failed delivery")
        assert st["status"] == "outbound"
        time.sleep(0.2)
    text = serve_log.text
    assert re.search(r"refused a DICOM TLS connection from 127\.0\.0\.1:\d+: certificate verify "
                     r"failed: self-signed certificate", text)
    assert re.search(r"DICOM TLS handshake with 127\.0\.0\.1:\d+ failed: certificate verify "
                     r"failed: self-signed certificate", text)


def test_tls_config_names_a_missing_file_and_refuses_tls_over_rest(tmp_path, certs):
    from hybrid.serve.config import parse_config

    base = {"mode": "listener", "spool": str(tmp_path / "spool"),
            "listener": {"allowed_calling_aets": ["SCANNER"]}}
    with pytest.raises(ValueError, match=r"expected \[tls\] private_key = a readable PEM file"):
        parse_config({**base, "tls": {"listener": True,
                                      "certificate": str(certs["hybrid"]["certificate"]),
                                      "private_key": str(tmp_path / "nope.key"),
                                      "trusted_certificates": str(certs["orthanc"]["certificate"])}},
                     env={})
    with pytest.raises(ValueError, match=r"method = 'cstore' with \[tls\] destination"):
        parse_config({**base, "destination": {"method": "rest"},
                      "orthanc": {"url": "http://127.0.0.1:8042"},
                      "tls": {"destination": True, **{k: str(v) for k, v in certs["hybrid"].items()},
                              "trusted_certificates": str(certs["orthanc"]["certificate"])}},
                     env={})
