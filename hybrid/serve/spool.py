"""The on-disk spool: received instances, derived series waiting to be sent, per-series state.

Layout under the spool folder::

    inbound/<source series UID>/<file>.dcm    instances as received (written atomically)
    outbound/<source series UID>/             the derived series (written atomically)
    late/<source series UID>/                 instances that came after their series was closed
    state/<source series UID>.json            one small JSON per source series
    produced/<derived series UID>             a marker per series this node made
    cursor.json                               Orthanc /changes position (PACS-driven mode)

A state file exists from the moment the first instance is spooled; its
``status`` moves ``receiving`` (listener) or ``downloading`` (Orthanc) →
``ready`` → ``outbound`` → ``done`` (or ``failed``).  Every write is
atomic and synced, so a node killed at any moment restarts where it stopped,
and a source series that has a state file is never taken up again
(idempotency by source SeriesInstanceUID).  One node per spool: a lock file
refuses a second.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from hybrid.io._atomic import atomic_file

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
STATUSES = ("receiving", "downloading", "ready", "outbound", "done", "failed")
MB = 1024 * 1024


def valid_uid(uid: Any) -> bool:
    """A DICOM UID (digits and dots, at most 64 characters): safe as a file name."""
    return isinstance(uid, str) and 0 < len(uid) <= 64 and bool(_UID.match(uid))


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and fsync it (replaces an existing file)."""
    with atomic_file(path, overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


class SpoolLockedError(RuntimeError):
    pass


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


class Spool:
    """Thread-safe access to one spool folder (held exclusively by one process).

    ``quota_bytes`` (optional) caps what its series' files may take; :meth:`room` is the
    space left, the smaller of that and the disk's free space.
    """

    def __init__(self, root: str | os.PathLike, *, quota_bytes: int | None = None):
        self.root = Path(root)
        for sub in ("inbound", "outbound", "late", "state", "produced"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._lock_fh = None
        self.quota_bytes = quota_bytes
        self._used = sum(_tree_bytes(self.root / sub) for sub in ("inbound", "outbound", "late"))

    # ------------------------------------------------------------ space
    @property
    def used_bytes(self) -> int:
        """Bytes of spooled instances and derived series (kept up to date, not re-walked)."""
        return self._used

    def room(self) -> int:
        """Bytes that may still be written: the disk's free space, and the quota's rest."""
        free = shutil.disk_usage(self.root).free
        if self.quota_bytes is not None:
            free = min(free, self.quota_bytes - self._used)
        return max(int(free), 0)

    def account(self, folder: Path) -> None:
        """Count a folder written outside :meth:`add_file` (a derived series)."""
        with self.lock:
            self._used += _tree_bytes(folder)

    # ------------------------------------------------------------ process lock
    def acquire(self) -> None:
        import fcntl

        fh = open(self.root / ".lock", "a+")  # noqa: SIM115 - held for the node's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            raise SpoolLockedError(
                f"Expected the spool {self.root} to be free; another hybrid serve process holds "
                "it. Stop that one, or give this node its own spool folder."
            ) from exc
        self._lock_fh = fh

    def release(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()  # closing releases the flock
            self._lock_fh = None

    # ------------------------------------------------------------ paths
    def _check(self, uid: str) -> str:
        if not valid_uid(uid):
            raise ValueError(f"Expected a DICOM UID (digits and dots); received {uid!r}.")
        return uid

    def inbound_dir(self, uid: str) -> Path:
        return self.root / "inbound" / self._check(uid)

    def outbound_dir(self, uid: str) -> Path:
        return self.root / "outbound" / self._check(uid)

    def late_dir(self, uid: str) -> Path:
        return self.root / "late" / self._check(uid)

    def _state_path(self, uid: str) -> Path:
        return self.root / "state" / f"{self._check(uid)}.json"

    # ------------------------------------------------------------ state
    def state(self, uid: str) -> dict[str, Any] | None:
        path = self._state_path(uid)
        with self.lock:
            if not path.exists():
                return None
            return json.loads(path.read_text(encoding="utf-8"))

    def update(self, uid: str, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into the series' state (created if absent) and write it durably."""
        with self.lock:
            st = self.state(uid) or {"series_uid": uid, "created": time.time()}
            st.update(changes)
            st["updated"] = time.time()
            write_durably(self._state_path(uid), json.dumps(st, indent=1, sort_keys=True).encode())
            return st

    def states(self, *statuses: str) -> list[dict[str, Any]]:
        out = []
        with self.lock:
            for p in sorted((self.root / "state").glob("*.json")):
                st = json.loads(p.read_text(encoding="utf-8"))
                if not statuses or st.get("status") in statuses:
                    out.append(st)
        return out

    # ------------------------------------------------------------ derived series made here
    def mark_produced(self, uid: str) -> None:
        write_durably(self.root / "produced" / self._check(uid), b"")

    def is_produced(self, uid: str) -> bool:
        return valid_uid(uid) and (self.root / "produced" / uid).exists()

    # ------------------------------------------------------------ Orthanc cursor
    def cursor(self) -> int | None:
        path = self.root / "cursor.json"
        if not path.exists():
            return None
        return int(json.loads(path.read_text(encoding="utf-8"))["last_change"])

    def set_cursor(self, seq: int) -> None:
        write_durably(self.root / "cursor.json", json.dumps({"last_change": int(seq)}).encode())

    # ------------------------------------------------------------ files
    def add_file(self, folder: Path, name: str, data: bytes) -> Path:
        path = folder / name
        with self.lock:
            old = path.stat().st_size if path.exists() else 0  # an instance sent again
            write_durably(path, data)
            self._used += len(data) - old
        return path

    def discard_files(self, uid: str) -> None:
        """Remove a delivered series' spooled input and output (the state file stays)."""
        with self.lock:
            for d in (self.inbound_dir(uid), self.outbound_dir(uid)):
                self._used -= _tree_bytes(d)
                shutil.rmtree(d, ignore_errors=True)
