"""DICOM TLS for the node: the listener's and the C-STORE sender's SSL contexts.

Both sides verify their peer: the listener requires a client certificate signed by (or
equal to) one of ``trusted_certificates``; the sender checks the PACS's certificate and
its host name.  A handshake that fails is logged in one line that says who and why
(certificate verify failed, no certificate, wrong host name), then refused; nothing of
the peer's data is read.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

log = logging.getLogger("hybrid.serve")

__all__ = ["server_context", "client_context"]


def _peer(sock: Any) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "an unknown peer"


def _why(exc: ssl.SSLError) -> str:
    """"certificate verify failed: self-signed certificate", "tlsv13 alert certificate
    required", ...: OpenSSL's reason, and the verification's when there is one."""
    reason = str(exc.reason or exc).replace("_", " ").lower()
    detail = getattr(exc, "verify_message", None)
    return f"{reason}: {detail}" if detail else reason


class _LoggedSocket(ssl.SSLSocket):
    """Logs a failed handshake, whichever call makes it (accept, connect, wrap)."""

    def do_handshake(self, *args, **kwargs):
        try:
            return super().do_handshake(*args, **kwargs)
        except ssl.SSLError as exc:
            if self.server_side:
                log.warning("refused a DICOM TLS connection from %s: %s (the peer's certificate "
                            "must be signed by one in [tls] trusted_certificates)",
                            _peer(self), _why(exc))
            else:
                log.warning("DICOM TLS handshake with %s failed: %s (the destination's "
                            "certificate must be signed by one in [tls] trusted_certificates "
                            "and name its host)", _peer(self), _why(exc))
            raise


def _load(ctx: ssl.SSLContext, tls: Any) -> ssl.SSLContext:
    ctx.sslsocket_class = _LoggedSocket
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
    ctx.load_verify_locations(str(tls.trusted_certificates))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(tls: Any) -> ssl.SSLContext:
    """The listener's context (``tls``: :class:`hybrid.serve.config.TlsConfig`)."""
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls)


def client_context(tls: Any) -> ssl.SSLContext:
    """The C-STORE sender's context: the destination's certificate and host name checked."""
    ctx = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), tls)
    ctx.check_hostname = True
    return ctx
