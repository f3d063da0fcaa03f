"""The node: take series in (listener or Orthanc), enhance each once, deliver with retries.

One worker thread does the work, in this order on every pass: poll Orthanc's
``/changes`` (PACS-driven mode), close the series that have been quiet long
enough (listener mode), enhance the series that are ready, deliver the
derived series whose retry time has come.  All progress is in the
:class:`~hybrid.serve.spool.Spool`, so a restarted node resumes exactly where
the previous one stopped, and nothing is enhanced twice.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

from hybrid.serve.config import ServeConfig
from hybrid.serve.rules import select_reason
from hybrid.serve.spool import MB, Spool, valid_uid

log = logging.getLogger(__name__)

_ORTHANC_ID = re.compile(r"^[0-9a-f-]{8,64}$")
_ACTIVE = ("receiving", "downloading", "ready", "outbound")


class SendError(RuntimeError):
    """The destination did not take the derived series (retried later)."""


class Node:
    """A ``hybrid serve`` node.

    Parameters
    ----------
    config : ServeConfig
    enhancer : hybrid.Enhancer, optional
        Default: the shipped default models (``hybrid.enhance``'s cached Enhancer).
    """

    def __init__(self, config: ServeConfig, *, enhancer: Any = None):
        self.config = config
        quota = config.listener.spool_quota_mb
        self.spool = Spool(config.spool, quota_bytes=int(quota * MB) if quota else None)
        self._enhancer = enhancer
        self._client = None
        self._scp = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_seen: dict[str, float] = {}  # listener: series → last arrival (monotonic)
        self._active: dict[str, str] = {}  # series → status, for those not done/failed
        self._next_poll = 0.0
        self._poll_failing = False

    # ------------------------------------------------------------ wiring
    @property
    def enhancer(self):
        if self._enhancer is None:
            from hybrid.pipeline import default_enhancer

            self._enhancer = default_enhancer()
        return self._enhancer

    @property
    def client(self):
        if self._client is None:
            from hybrid.serve.orthanc import OrthancClient

            o = self.config.orthanc
            self._client = OrthancClient(o.url, o.username, o.password,
                                         timeout=o.timeout_seconds, verify=o.verify_tls,
                                         password_env=o.password_env,
                                         dicomweb_root=o.dicomweb_root)
        return self._client

    @property
    def uses_rest(self) -> bool:
        return self.config.mode == "orthanc" or self.config.destination.method in ("rest", "stow")

    @property
    def listener_port(self) -> int | None:
        return self._scp.port if self._scp else None

    def check(self) -> None:
        """Reach the Orthanc REST API with the configured credentials (raises on failure)."""
        if self.uses_rest:
            self.client.system()

    def status(self, series_uid: str) -> dict | None:
        """The spool state of a source series (None when never seen).  Read under the spool
        lock: a "done" series' spooled files are already gone (see :meth:`_deliver`)."""
        with self.spool.lock:
            return self.spool.state(series_uid)

    def _set(self, uid: str, **changes: Any) -> dict:
        with self.spool.lock:
            st = self.spool.update(uid, **changes)
            if st.get("status") in _ACTIVE:
                self._active[uid] = st["status"]
            else:
                self._active.pop(uid, None)
            return st

    def _snapshot(self) -> list[tuple[str, str]]:
        with self.spool.lock:  # the SCP's threads add series while the worker works
            return sorted(self._active.items())

    # ------------------------------------------------------------ life cycle
    def start(self) -> Node:
        """Take the spool, resume pending work, start listening/polling and the worker."""
        from hybrid.serve.orthanc import OrthancAuthError, OrthancUnavailable

        self.spool.acquire()
        try:
            if self.uses_rest:
                try:
                    self.check()
                except OrthancUnavailable as exc:  # a PACS that is down is waited for
                    log.warning("%s; will keep trying", exc)
                except OrthancAuthError:
                    raise
            now = time.monotonic()
            for st in self.spool.states(*_ACTIVE):
                self._active[st["series_uid"]] = st["status"]
                if st["status"] == "receiving":  # restart: senders get a fresh quiet time
                    self._last_seen[st["series_uid"]] = now
            if not self.config.keep_files:  # a stop between "done" and its clean-up
                for st in self.spool.states("done"):
                    self.spool.discard_files(st["series_uid"])
            if self._active:
                log.info("resuming %d pending series: %s", len(self._active),
                         ", ".join(f"{u} ({s})" for u, s in sorted(self._active.items())))
            if self.config.mode == "listener":
                from hybrid.serve.scp import StorageSCP

                ctx = None
                if self.config.tls.listener:
                    from hybrid.serve.tls import server_context

                    ctx = server_context(self.config.tls)
                self._scp = StorageSCP(self.config.listener, self.spool, self._on_received,
                                       ssl_context=ctx)
                self._scp.start()
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="hybrid-serve-worker",
                                            daemon=True)
            self._thread.start()
        except BaseException:
            self.spool.release()
            raise
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop listening, let the worker finish its current step, release the spool."""
        if self._scp is not None:
            self._scp.stop()
            self._scp = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._client is not None:
            self._client.close()
            self._client = None
        self.spool.release()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT (the ``hybrid serve`` command)."""
        self.start()
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        log.info("hybrid serve running (%s mode, spool %s)", self.config.mode, self.spool.root)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            log.info("stopping")
            self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception:  # never let the worker die: log, wait, go on
                log.exception("unexpected error in the worker; continuing")
                self._stop.wait(1.0)
                continue
            if not busy:
                self._stop.wait(0.1)

    # ------------------------------------------------------------ one pass
    def step(self) -> bool:
        """Do what is due now; True when something was done."""
        busy = False
        if self.config.mode == "orthanc" and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + self.config.orthanc.poll_seconds
            busy |= self._poll()
        busy |= self._close_quiet()
        for uid, status in self._snapshot():
            if self._stop.is_set():
                break
            if status == "ready":  # one series, then its delivery: under load each series
                self._enhance(uid)  # goes back as soon as it is done, not after all others
                busy = True
                break
        now = time.time()
        for uid, status in self._snapshot():
            if self._stop.is_set():
                break
            if status == "outbound":
                st = self.spool.state(uid) or {}
                if st.get("next_try", 0.0) <= now:
                    self._deliver(uid, st)
                    busy = True
        return busy

    # ------------------------------------------------------------ listener
    def _on_received(self, uid: str) -> None:  # called by the SCP under spool.lock
        self._last_seen[uid] = time.monotonic()
        self._active[uid] = "receiving"

    def _close_quiet(self) -> bool:
        quiet = self.config.listener.quiet_seconds
        closed = False
        with self.spool.lock:
            now = time.monotonic()
            for uid, seen in list(self._last_seen.items()):
                if now - seen >= quiet:
                    del self._last_seen[uid]
                    n = len(list(self.spool.inbound_dir(uid).glob("*.dcm")))
                    self._set(uid, status="ready", instances=n, completed=time.time())
                    log.info("series %s complete: %d instance(s), none new for %g s",
                             uid, n, quiet)
                    closed = True
        return closed

    # ------------------------------------------------------------ PACS-driven
    def _poll(self) -> bool:
        from hybrid.serve.orthanc import OrthancError

        busy = False
        try:
            for uid, status in self._snapshot():
                if status == "downloading":
                    self._download(uid)
                    busy = True
            cursor = self.spool.cursor()
            if cursor is None:
                start = self.config.orthanc.start_from
                cursor = 0 if start == "beginning" else self.client.last_change()
                self.spool.set_cursor(cursor)
                log.info("following Orthanc changes from #%d (start_from = %s)", cursor, start)
            while not self._stop.is_set():
                data = self.client.changes(since=cursor, limit=100)
                for ch in data.get("Changes", []):
                    if ch.get("ChangeType") == "StableSeries":
                        busy |= self._consider(str(ch.get("ID", "")))
                last = int(data.get("Last", cursor))
                if last != cursor:
                    self.spool.set_cursor(last)
                    cursor = last
                if data.get("Done", True):
                    break
            if self._poll_failing:
                log.info("Orthanc at %s reachable again", self.config.orthanc.url)
            self._poll_failing = False
        except OrthancError as exc:
            if not self._poll_failing:
                log.error("%s", exc)
            self._poll_failing = True
        return busy

    def _consider(self, orthanc_id: str) -> bool:
        """A StableSeries change: select, then download, or log why not."""
        if not _ORTHANC_ID.match(orthanc_id):
            log.warning("ignored a StableSeries change with an unexpected ID %r", orthanc_id)
            return False
        info = self.client.series(orthanc_id)
        uid = str(info.get("MainDicomTags", {}).get("SeriesInstanceUID", ""))
        if not valid_uid(uid):
            log.warning("ignored Orthanc series %s: no valid SeriesInstanceUID", orthanc_id)
            return False
        if self.spool.is_produced(uid):
            log.info("series %s was produced by this node: derived series are never enhanced",
                     uid)
            return False
        st = self.spool.state(uid)
        if st is not None:
            log.info("series %s already taken up (%s): not enhanced again", uid, st.get("status"))
            return False
        instances = info.get("Instances") or []
        if not instances:
            return False
        tags = self.client.instance_tags(instances[0])
        reason = select_reason(tags, self.config.select)
        if reason:
            log.info("series %s not selected: %s", uid, reason)
            return False
        self._set(uid, status="downloading", origin="orthanc", orthanc_id=orthanc_id,
                  study_uid=str(tags.get("StudyInstanceUID", "")), first_received=time.time())
        log.info("series %s selected (Orthanc %s, %d instance(s)): downloading", uid,
                 orthanc_id, len(instances))
        self._download(uid)
        return True

    def _download(self, uid: str) -> None:
        st = self.spool.state(uid) or {}
        info = self.client.series(st["orthanc_id"])
        folder = self.spool.inbound_dir(uid)
        ids = [i for i in info.get("Instances", []) if _ORTHANC_ID.match(i)]
        for iid in ids:
            if not (folder / f"{iid}.dcm").exists():
                self.spool.add_file(folder, f"{iid}.dcm", self.client.instance_file(iid))
        self._set(uid, status="ready", instances=len(ids), completed=time.time())

    # ------------------------------------------------------------ enhance
    def _enhance(self, uid: str) -> None:
        from hybrid.io import load, save, save_options
        from hybrid.io.dicom import saved_series

        out = self.spool.outbound_dir(uid)
        try:
            if out.exists():  # enhanced before a restart, not delivered yet
                saved = saved_series(out)
            else:
                vol = load(self.spool.inbound_dir(uid), series_uid=uid)
                t0 = time.perf_counter()
                enhanced = self.enhancer.enhance(vol, progress=False)
                seconds = time.perf_counter() - t0
                saved = save(enhanced, out, format="dicom", **save_options(enhanced, "dicom"),
                             transfer_syntax=self.config.destination.transfer_syntax)
                self.spool.account(out)  # one written before a restart was counted at start
                log.info("enhanced series %s: %d slice(s) of %dx%d in %.1f s", uid,
                         vol.shape[0], vol.shape[1], vol.shape[2], seconds)
        except Exception as exc:  # bad input: keep it, say why, never loop on it
            self._set(uid, status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
            log.error("series %s not enhanced (%s: %s); its instances stay in %s", uid,
                      type(exc).__name__, exc, self.spool.inbound_dir(uid))
            return
        self.spool.mark_produced(saved.series_uid)
        self._set(uid, status="outbound", derived_series_uid=saved.series_uid, attempts=0,
                  next_try=0.0, derived_instances=len(saved.files))

    # ------------------------------------------------------------ deliver
    def _deliver(self, uid: str, st: dict) -> None:
        files = sorted(self.spool.outbound_dir(uid).glob("*.dcm"))
        derived = st.get("derived_series_uid")
        try:
            if not files:
                raise SendError(f"the derived series of {uid} is missing from the spool")
            self._send(files)
        except Exception as exc:  # PACS down or refusing, network, disk: retried with backoff
            attempts = int(st.get("attempts", 0)) + 1
            retry = self.config.retry
            delay = min(retry.max_seconds, retry.initial_seconds * 2 ** (attempts - 1))
            self._set(uid, attempts=attempts, next_try=time.time() + delay,
                      last_error=str(exc)[:2000])
            log.warning("delivery of derived series %s (source %s) failed, attempt %d: %s; "
                        "next try in %.1f s", derived, uid, attempts, exc, delay)
            return
        with self.spool.lock:  # "done" and the clean-up are seen together (issue 19)
            self._set(uid, status="done", delivered=time.time())
            if not self.config.keep_files:
                self.spool.discard_files(uid)
        log.info("delivered derived series %s (%d instance(s), source %s) by %s", derived,
                 len(files), uid, self.config.destination.method)

    def _send(self, files: list[Path]) -> None:
        method = self.config.destination.method
        if method == "rest":
            for f in files:
                self.client.upload(f.read_bytes())
        elif method == "stow":
            self.client.stow(f.read_bytes() for f in files)
        else:
            self._cstore(files)

    def _cstore(self, files: list[Path]) -> None:
        from pynetdicom import AE
        from pynetdicom.sop_class import CTImageStorage

        from hybrid.io.dicom import SEND_TRANSFER_SYNTAXES, read_datasets, transfer_syntax_of
        from hybrid.io.transfer import as_explicit_little

        dest = self.config.destination
        ae = AE(ae_title=self.config.listener.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout_seconds
        ae.connection_timeout = min(dest.timeout_seconds, 10.0)
        # the files' own syntax (the source's, e.g. JPEG Lossless) in a context of its own, so
        # that a peer taking it is sent the files as they are; uncompressed in another
        own = transfer_syntax_of(files[0])
        if own not in SEND_TRANSFER_SYNTAXES:
            ae.add_requested_context(CTImageStorage, own)
        ae.add_requested_context(CTImageStorage, list(SEND_TRANSFER_SYNTAXES))
        where = f"AE {dest.ae_title} at {dest.host}:{dest.port}"
        tls_args = None
        if self.config.tls.destination:
            from hybrid.serve.tls import client_context

            tls_args = (client_context(self.config.tls), dest.host)
            where += " (DICOM TLS)"
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
        if not assoc.is_established:
            state = ("rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted
                     else "not reachable")
            raise SendError(f"association with {where} not established ({state})")
        try:
            accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts
                        if cx.abstract_syntax == CTImageStorage}
            for ds in read_datasets(files):
                if ds.file_meta.TransferSyntaxUID not in accepted:  # the peer refused it
                    ds = as_explicit_little(ds)
                rsp = assoc.send_c_store(ds)
                if "Status" not in rsp:  # aborted, or no answer within the timeout
                    raise SendError(f"no C-STORE response from {where} for instance "
                                    f"{ds.SOPInstanceUID}")
                if rsp.Status != 0x0000 and not 0xB000 <= rsp.Status <= 0xBFFF:
                    raise SendError(f"{where} answered C-STORE status 0x{rsp.Status:04X} for "
                                    f"instance {ds.SOPInstanceUID}")
        finally:
            if assoc.is_established:
                assoc.release()
