"""A small Orthanc REST client (requests): changes feed, download, upload, DICOMweb STOW-RS.

Credentials travel in the Authorization header only: they are never part of
a URL, a message or a log line.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


class OrthancError(RuntimeError):
    """Orthanc answered with an error, or could not be reached."""


class OrthancUnavailable(OrthancError):
    """Orthanc could not be reached (down, wrong address, timeout)."""


class OrthancAuthError(OrthancError):
    """Orthanc refused the credentials (HTTP 401/403)."""


class OrthancClient:
    def __init__(self, url: str, username: str = "", password: str = "", *,
                 timeout: float = 60.0, verify: bool = True, password_env: str = "",
                 dicomweb_root: str = "/dicom-web"):
        import requests

        self.url = url.rstrip("/")
        self.username = username
        self.timeout = timeout
        self.password_env = password_env
        self.dicomweb_root = "/" + dicomweb_root.strip("/")
        self._session = requests.Session()
        self._session.verify = verify
        if username:
            self._session.auth = (username, password)

    def __repr__(self) -> str:  # no password here, ever
        return f"OrthancClient({self.url!r}, user={self.username!r})"

    def close(self) -> None:
        self._session.close()

    def _request(self, method: str, path: str, **kwargs: Any):
        import requests

        try:
            rsp = self._session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise OrthancUnavailable(
                f"Orthanc at {self.url} could not be reached ({type(exc).__name__}) for "
                f"{method} {path}. Check that it runs and that [orthanc] url is right."
            ) from None
        if rsp.status_code in (401, 403):
            who = f"user {self.username!r}" if self.username else "no credentials"
            where = (f" from the environment variable {self.password_env}"
                     if self.password_env else "")
            raise OrthancAuthError(
                f"Orthanc at {self.url} refused the credentials ({who}, password{where}): "
                f"HTTP {rsp.status_code} for {method} {path}. Expected a user registered in "
                "Orthanc's RegisteredUsers; fix [orthanc] username or the password variable."
            )
        if rsp.status_code >= 400:
            raise OrthancError(
                f"Orthanc at {self.url} answered HTTP {rsp.status_code} for {method} {path}: "
                f"{rsp.text[:300]}"
            )
        return rsp

    def get_json(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=params or None).json()

    # ------------------------------------------------------------ queries
    def system(self) -> dict:
        return self.get_json("/system")

    def changes(self, since: int | None = None, limit: int = 100) -> dict:
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = since
        return self.get_json("/changes", **params)

    def last_change(self) -> int:
        return int(self.get_json("/changes", last="")["Last"])

    def series(self, orthanc_id: str) -> dict:
        return self.get_json(f"/series/{orthanc_id}")

    def instance_tags(self, orthanc_id: str) -> dict:
        return self.get_json(f"/instances/{orthanc_id}/simplified-tags")

    def instance_file(self, orthanc_id: str) -> bytes:
        return self._request("GET", f"/instances/{orthanc_id}/file").content

    def lookup_series(self, series_uid: str) -> str | None:
        """Orthanc's ID of the series with this SeriesInstanceUID, or None."""
        hits = self._request("POST", "/tools/lookup", data=series_uid).json()
        return next((h["ID"] for h in hits if h.get("Type") == "Series"), None)

    # ------------------------------------------------------------ uploads
    def upload(self, data: bytes) -> dict:
        """POST /instances: store one DICOM file."""
        rsp = self._request("POST", "/instances", data=data,
                            headers={"Content-Type": "application/dicom"})
        body = rsp.json()
        if isinstance(body, dict) and body.get("Status") not in ("Success", "AlreadyStored"):
            raise OrthancError(f"Orthanc did not store the instance: status {body.get('Status')}")
        return body

    def stow(self, files: Iterable[bytes]) -> dict:
        """DICOMweb STOW-RS (POST {dicomweb_root}/studies): store several instances at once."""
        boundary = uuid.uuid4().hex
        parts = []
        for data in files:
            parts += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data,
                      b"\r\n"]
        parts.append(f"--{boundary}--\r\n".encode())
        rsp = self._request(
            "POST", f"{self.dicomweb_root}/studies", data=b"".join(parts),
            headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                     f"boundary={boundary}",
                     "Accept": "application/dicom+json"})
        body = json.loads(rsp.content or b"{}")
        failed = body.get("00081198", {}).get("Value") if isinstance(body, dict) else None
        if failed:
            raise OrthancError(f"STOW-RS refused {len(failed)} instance(s)")
        return body
