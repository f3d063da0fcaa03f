"""Listener mode: a DICOM Storage SCP (pynetdicom) that spools CT instances.

Associations are accepted only from the allow-listed calling AE titles and
only when addressed to our own AE title (A-ASSOCIATE-RJ otherwise, logged).
Storage contexts are negotiated broadly so that a non-CT instance gets a
C-STORE failure status (0x0122) and a log line instead of a bare
negotiation failure.  An instance is acknowledged (0x0000) only after it has
been written to the spool and synced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from hybrid.serve import rules
from hybrid.serve.config import ListenerConfig
from hybrid.serve.spool import MB, Spool

log = logging.getLogger("hybrid.serve")


class StorageSCP:
    """Receives instances into ``spool``; ``on_received(series_uid)`` after each spooled one."""

    def __init__(self, config: ListenerConfig, spool: Spool,
                 on_received: Callable[[str], None], *, ssl_context: Any = None):
        self.config = config
        self.ssl_context = ssl_context  # DICOM TLS (hybrid.serve.tls), or None
        self.spool = spool
        self.on_received = on_received
        self._server = None

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server else None

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        from hybrid.io.frames import CT_SOP_CLASSES
        from hybrid.io.transfer import SYNTAXES

        ae = AE(ae_title=self.config.ae_title)
        ae.require_calling_aet = list(self.config.allowed_calling_aets)
        ae.require_called_aet = True
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax)
        for sop_class in CT_SOP_CLASSES:  # CT in every syntax hybrid.load decodes
            ae.add_supported_context(sop_class, list(SYNTAXES))
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected)]
        self._server = ae.start_server((self.config.host, self.config.port), block=False,
                                       evt_handlers=handlers, ssl_context=self.ssl_context)
        log.info("listening as AE %s on %s:%d%s; allowed calling AEs: %s", self.config.ae_title,
                 self.config.host, self.port, " (DICOM TLS)" if self.ssl_context else "",
                 ", ".join(self.config.allowed_calling_aets))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _no_room(self, new_series: bool, size: int) -> str | None:
        """Why the spool cannot take an instance of ``size`` bytes, or None: a new series
        needs the configured reserve left (so that a series begun can be finished), any
        instance its own size."""
        room = self.spool.room()
        reserve = int(self.config.reserve_mb * MB)
        if new_series and room < reserve:
            return (f"spool nearly full ({room / MB:.1f} MB left, a new series needs "
                    f"reserve_mb = {self.config.reserve_mb:g}); free space or raise the quota")
        if room < size:
            return f"spool full ({room / MB:.1f} MB left, the instance is {size / MB:.1f} MB)"
        return None

    # ------------------------------------------------------------ handlers
    def _on_rejected(self, event) -> None:
        req = event.assoc.requestor
        calling = str(req.ae_title).strip()
        called = str(getattr(req.primitive, "called_ae_title", "") or "?").strip()
        if calling not in self.config.allowed_calling_aets:
            why = "calling AE title not in the allow-list"
        elif called != self.config.ae_title:
            why = f"called AE title is not {self.config.ae_title}"
        else:
            why = "association not acceptable"
        log.warning("refused association from AE %r (%s) to AE %r: %s (A-ASSOCIATE-RJ)",
                    calling, req.address, called, why)

    def _on_store(self, event) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        sop_uid = str(event.request.AffectedSOPInstanceUID or "?")
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as exc:  # undecodable byte stream
            log.warning("refused instance %s from AE %r: dataset not decodable (%s); "
                        "status 0x%04X", sop_uid, calling, type(exc).__name__,
                        rules.CANNOT_UNDERSTAND)
            return rules.CANNOT_UNDERSTAND
        series_uid = str(ds.get("SeriesInstanceUID", "") or "?")
        try:
            refusal = rules.instance_refusal(ds, event.request.AffectedSOPClassUID)
        except Exception as exc:  # a malformed element that pydicom trips over
            refusal = rules.CANNOT_UNDERSTAND, f"malformed dataset ({type(exc).__name__})"
        if refusal:
            status, reason = refusal
            log.warning("refused instance %s of series %s from AE %r: %s; status 0x%04X",
                        sop_uid, series_uid, calling, reason, status)
            return status
        sop_uid = str(ds.SOPInstanceUID)  # checked: a valid UID, safe as a file name
        derived = rules.derived_reason(rules.tags_of(ds))
        if derived or self.spool.is_produced(series_uid):
            log.info("accepted and ignored instance %s of derived series %s (%s): derived "
                     "series are never enhanced", sop_uid, series_uid,
                     derived or "made by this node")
            return rules.SUCCESS
        try:
            data = event.encoded_dataset(include_meta=True)
            with self.spool.lock:
                st = self.spool.state(series_uid)
                full = self._no_room(st is None, len(data))
                if full:
                    log.warning("refused instance %s of series %s from AE %r: %s; status "
                                "0x%04X", sop_uid, series_uid, calling, full,
                                rules.OUT_OF_RESOURCES)
                    return rules.OUT_OF_RESOURCES
                if st is None or st.get("status") == "receiving":
                    folder = self.spool.inbound_dir(series_uid)
                    self.spool.add_file(folder, f"{sop_uid}.dcm", data)
                    if st is None:
                        self.spool.update(series_uid, status="receiving", origin="listener",
                                          study_uid=str(ds.StudyInstanceUID),
                                          calling_aet=calling, first_received=time.time())
                    self.on_received(series_uid)
                else:  # the series was closed (quiet time passed): keep it, enhance nothing
                    self.spool.add_file(self.spool.late_dir(series_uid), f"{sop_uid}.dcm", data)
                    log.warning("instance %s of series %s arrived after the series was closed "
                                "(%s): kept in %s, not enhanced again; raise quiet_seconds if "
                                "senders pause longer", sop_uid, series_uid, st.get("status"),
                                self.spool.late_dir(series_uid))
        except OSError as exc:
            log.error("could not spool instance %s of series %s (%s); status 0x%04X",
                      sop_uid, series_uid, exc, rules.OUT_OF_RESOURCES)
            return rules.OUT_OF_RESOURCES
        return rules.SUCCESS
