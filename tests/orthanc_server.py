"""A real Orthanc for the ``hybrid serve`` tests: temporary config and storage, stopped by PID.

Debian's ``orthanc`` (and ``orthanc-dicomweb``) are installed by ``.ci/run``;
where the ``Orthanc`` binary is absent the tests that need it skip.  Orthanc
has no bind-address option, so remote access stays off and authentication
on; only the registered modalities may C-STORE to it.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "hybrid", "pacs-secret-7f3a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class OrthancServer:
    """One Orthanc process on 127.0.0.1 with authentication and known DICOM modalities."""

    def __init__(self, root: Path, *, modalities, aet: str = "ORTHANC",
                 stable_age: int = 1, tls: dict[str, Path] | None = None):
        """``modalities``: AE titles of senders Orthanc never calls back, or a mapping AE
        title -> (port, use DICOM TLS) of those it sends to.  ``tls``: ``certificate``,
        ``private_key``, ``trusted`` (PEM files): Orthanc's DICOM port then speaks TLS only
        and requires its peers' certificates."""
        self.root = Path(root)
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen | None = None
        storage = self.root / "storage"
        config = {
            "Name": "hybrid-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False,
            # AE title → (AET, host, port): port 1 marks a sender Orthanc never calls back
            "DicomModalities": (
                {name.lower(): {"AET": name, "Host": "127.0.0.1", "Port": port,
                                "UseDicomTls": use_tls}
                 for name, (port, use_tls) in modalities.items()}
                if isinstance(modalities, dict)
                else {name.lower(): [name, "127.0.0.1", 1] for name in modalities}),
            "StableAge": stable_age,
            "HttpDescribeErrors": True,
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 4,
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        if tls:
            config.update({"DicomTlsEnabled": True,
                           "DicomTlsCertificate": str(tls["certificate"]),
                           "DicomTlsPrivateKey": str(tls["private_key"]),
                           "DicomTlsTrustedCertificates": str(tls["trusted"]),
                           "DicomTlsRemoteCertificateRequired": True})
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path = self.root / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.session = requests.Session()
        self.session.auth = (USER, PASSWORD)

    def start(self) -> OrthancServer:
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - kept by the process
        self.proc = subprocess.Popen([ORTHANC, str(self.config_path)], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.root)
        log.close()

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see "
                                   f"{self.root / 'orthanc.log'}")
            try:
                return self.session.get(self.url + "/system", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(up, timeout=60, what="Orthanc to answer HTTP")
        return self

    def stop(self, *, graceful: bool = True) -> None:
        """Stop Orthanc by its PID: SIGTERM (then SIGKILL after 20 s), or SIGKILL at once."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    # ------------------------------------------------------------ REST helpers for asserts
    def get(self, path: str):
        rsp = self.session.get(self.url + path, timeout=30)
        rsp.raise_for_status()
        return rsp.json() if "json" in rsp.headers.get("Content-Type", "") else rsp.content

    def series_of_study(self, study_uid: str) -> list[dict]:
        hits = self.session.post(self.url + "/tools/lookup", data=study_uid, timeout=30).json()
        study = next(h["ID"] for h in hits if h["Type"] == "Study")
        return self.get(f"/studies/{study}/series")

    def download_series(self, orthanc_series: dict, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for iid in orthanc_series["Instances"]:
            (folder / f"{iid}.dcm").write_bytes(self.get(f"/instances/{iid}/file"))
        return folder


def c_store(files, *, port: int, called: str, calling: str = "SCANNER",
            host: str = "127.0.0.1") -> list[int | None]:
    """C-STORE ``files`` (paths or datasets); the status of each (None: no response)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, MRImageStorage

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    files = list(files)
    own = {str(f.file_meta.TransferSyntaxUID) if isinstance(f, pydicom.Dataset)
           else str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
           for f in files}  # each file in its own syntax (JPEG Lossless, ...) as a PACS would
    plain = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    for cx in (CTImageStorage, MRImageStorage):  # one context per syntax of their own
        for ts in sorted(own - set(plain)):
            ae.add_requested_context(cx, ts)
        ae.add_requested_context(cx, plain)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionRefusedError(
            f"association {calling} → {called} at {host}:{port} "
            f"{'rejected' if assoc.is_rejected else 'aborted' if assoc.is_aborted else 'failed'}")
    statuses = []
    try:
        for f in files:
            ds = f if isinstance(f, pydicom.Dataset) else pydicom.dcmread(f)
            rsp = assoc.send_c_store(ds)
            statuses.append(int(rsp.Status) if "Status" in rsp else None)
    finally:
        assoc.release()
    return statuses


def _associate(port: int, called: str, calling: str):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 30
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    established, rejected = bool(assoc.is_established), bool(assoc.is_rejected)
    if established:
        assoc.release()
    return established, rejected


def associate_refused(*, port: int, called: str, calling: str) -> bool:
    """Whether an association from ``calling`` to ``called`` is rejected (A-ASSOCIATE-RJ)."""
    return _associate(port, called, calling)[1]


def associate_ok(*, port: int, called: str, calling: str) -> bool:
    """Whether an association from ``calling`` to ``called`` is accepted."""
    return _associate(port, called, calling)[0]
