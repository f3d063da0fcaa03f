"""``hybrid serve`` configuration: a TOML (or YAML) file, secrets from the environment.

A password is never written in the file: the file names the environment
variable that holds it (``password_env``), and the loaded value is kept out
of ``repr`` and logs.  Unknown keys are refused, so a typo is an error and not
a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("listener", "orthanc")
SEND_METHODS = ("cstore", "rest", "stow")
_AET = re.compile(r"^[\x21-\x5b\x5d-\x7e](?:[\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")


@dataclass(frozen=True)
class ListenerConfig:
    """Storage SCP: who may send, where to listen, when a series is complete."""

    ae_title: str = "HYBRID"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    quiet_seconds: float = 30.0
    #: A new series is refused (C-STORE 0xA700, out of resources) unless this much room is
    #: left in the spool, so that a series begun can be finished; 0 turns the check off.
    reserve_mb: float = 1024.0
    #: Most the spool's files may take (MB); 0: no quota, the disk's free space decides.
    spool_quota_mb: float = 0.0


@dataclass(frozen=True)
class OrthancConfig:
    """Orthanc REST API (PACS-driven mode, and ``rest``/``stow`` uploads)."""

    url: str = "http://127.0.0.1:8042"
    username: str = ""
    password_env: str = "HYBRID_ORTHANC_PASSWORD"
    password: str = field(default="", repr=False)  # from the environment only
    poll_seconds: float = 5.0
    timeout_seconds: float = 60.0
    start_from: str = "now"  # "now": only series that become stable later; "beginning": all
    verify_tls: bool = True
    dicomweb_root: str = "/dicom-web"


@dataclass(frozen=True)
class SelectConfig:
    """Which series are enhanced (PACS-driven mode; the listener takes what it is sent)."""

    modality: str = "CT"
    series_description: str = ""  # regular expression searched in SeriesDescription
    protocol: str = ""  # regular expression searched in ProtocolName
    max_ctdivol_mgy: float | None = None  # only series at or below this CTDIvol
    skip_derived: bool = True  # ImageType DERIVED is never input


@dataclass(frozen=True)
class DestinationConfig:
    """Where the derived series goes: C-STORE, Orthanc REST or DICOMweb STOW-RS."""

    method: str = "cstore"
    ae_title: str = "ORTHANC"
    host: str = "127.0.0.1"
    port: int = 4242
    timeout_seconds: float = 60.0
    #: The derived series' transfer syntax: "source" (the received one's; its lossless
    #: sibling for a lossy one) or a ``--transfer-syntax`` name (hybrid.io.transfer).
    transfer_syntax: str = "source"


@dataclass(frozen=True)
class RetryConfig:
    """Backoff for deliveries: initial, doubled after each failure, capped at max."""

    initial_seconds: float = 5.0
    max_seconds: float = 600.0


@dataclass(frozen=True)
class TlsConfig:
    """DICOM TLS (PS3.15 B.1): this node's certificate and key, whom it trusts, where used.

    ``trusted_certificates``: a PEM file of the CA certificates (or the peers' own
    certificates) a peer's certificate must be signed by.  ``listener``: the Storage SCP
    speaks TLS only and requires the sender's certificate; ``destination``: C-STORE out
    over TLS, the PACS's certificate and host name checked.
    """

    certificate: str = ""
    private_key: str = ""
    trusted_certificates: str = ""
    listener: bool = False
    destination: bool = False

    @property
    def used(self) -> bool:
        return self.listener or self.destination


@dataclass(frozen=True)
class ServeConfig:
    mode: str
    spool: Path
    listener: ListenerConfig = ListenerConfig()
    orthanc: OrthancConfig = OrthancConfig()
    select: SelectConfig = SelectConfig()
    destination: DestinationConfig = DestinationConfig()
    retry: RetryConfig = RetryConfig()
    tls: TlsConfig = TlsConfig()
    keep_files: bool = False  # keep spooled input/output after delivery


_SECTIONS = {
    "listener": ListenerConfig,
    "orthanc": OrthancConfig,
    "select": SelectConfig,
    "destination": DestinationConfig,
    "retry": RetryConfig,
    "tls": TlsConfig,
}
_TOP = {"mode", "spool", "keep_files", *_SECTIONS}


def _bad(msg: str, source: str) -> ValueError:
    return ValueError(f"{source}: {msg}")


def _section(cls, values: Any, name: str, source: str):
    if not isinstance(values, Mapping):
        raise _bad(f"expected [{name}] to be a table; received {type(values).__name__}.", source)
    allowed = {f.name for f in dataclasses.fields(cls)} - {"password"}
    unknown = sorted(set(values) - allowed)
    if "password" in values:
        raise _bad(
            f"expected no password in the file; received [{name}] password. Put the secret in "
            f"an environment variable and name it with password_env (default "
            f"{OrthancConfig.password_env}).", source)
    if unknown:
        raise _bad(f"unknown key(s) {unknown} in [{name}]; expected some of {sorted(allowed)}.",
                   source)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        default = f.default
        if isinstance(default, tuple):
            if isinstance(v, str) or not isinstance(v, (list, tuple)):
                raise _bad(f"expected [{name}] {f.name} to be a list; received {v!r}.", source)
            v = tuple(str(x) for x in v)
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise _bad(f"expected [{name}] {f.name} to be true or false; received {v!r}.",
                           source)
        elif isinstance(default, (int, float)) or f.name == "max_ctdivol_mgy":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _bad(f"expected [{name}] {f.name} to be a number; received {v!r}.", source)
            v = int(v) if isinstance(default, int) and not isinstance(default, bool) else float(v)
        elif not isinstance(v, str):
            raise _bad(f"expected [{name}] {f.name} to be a string; received {v!r}.", source)
        kwargs[f.name] = v
    return cls(**kwargs)


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected a hybrid serve configuration file (TOML or YAML); nothing exists at {path}."
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - PyYAML is usually present
            raise ValueError(
                f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the "
                "configuration as TOML.") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: expected valid YAML; {exc}") from exc
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: expected valid TOML; {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of settings; received {type(data).__name__}.")
    return data


def parse_config(data: Mapping[str, Any], *, env: Mapping[str, str] | None = None,
                 source: str = "configuration") -> ServeConfig:
    """Build a :class:`ServeConfig` from a mapping (a parsed file) and the environment."""
    env = os.environ if env is None else env
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise _bad(f"unknown key(s) {unknown}; expected some of {sorted(_TOP)}.", source)
    mode = data.get("mode")
    if mode not in MODES:
        raise _bad(f"expected mode = one of {list(MODES)}; received {mode!r}.", source)
    if not isinstance(data.get("spool"), str) or not data["spool"]:
        raise _bad("expected spool = a folder path for the spool (inbound, outbound, state).",
                   source)
    keep = data.get("keep_files", False)
    if not isinstance(keep, bool):
        raise _bad(f"expected keep_files = true or false; received {keep!r}.", source)
    sections = {name: _section(cls, data.get(name, {}), name, source)
                for name, cls in _SECTIONS.items()}
    lst: ListenerConfig = sections["listener"]
    orth: OrthancConfig = sections["orthanc"]
    sel: SelectConfig = sections["select"]
    dest: DestinationConfig = sections["destination"]
    retry: RetryConfig = sections["retry"]
    tls: TlsConfig = sections["tls"]
    if tls.used:
        for key in ("certificate", "private_key", "trusted_certificates"):
            value = getattr(tls, key)
            if not value or not Path(value).expanduser().is_file():
                raise _bad(f"expected [tls] {key} = a readable PEM file (TLS is on for the "
                           f"{'listener' if tls.listener else 'destination'}); received "
                           f"{value!r}.", source)
        if tls.destination and dest.method != "cstore":
            raise _bad(f"expected [destination] method = 'cstore' with [tls] destination = "
                       f"true (REST and STOW go over HTTPS: set [orthanc] url to https://); "
                       f"received {dest.method!r}.", source)

    for label, aet in [("[listener] ae_title", lst.ae_title),
                       ("[destination] ae_title", dest.ae_title),
                       *(("[listener] allowed_calling_aets", a) for a in lst.allowed_calling_aets)]:
        if not _AET.match(aet):
            raise _bad(f"expected {label} to be 1-16 printable characters without a backslash; "
                       f"received {aet!r}.", source)
    if mode == "listener" and not lst.allowed_calling_aets:
        raise _bad("expected [listener] allowed_calling_aets = a non-empty list of the AE titles "
                   "that may send (an allow-list is required); received none.", source)
    if lst.quiet_seconds <= 0 or orth.poll_seconds <= 0:
        raise _bad("expected quiet_seconds and poll_seconds > 0.", source)
    if lst.reserve_mb < 0 or lst.spool_quota_mb < 0:
        raise _bad(f"expected [listener] reserve_mb and spool_quota_mb >= 0; received "
                   f"{lst.reserve_mb} and {lst.spool_quota_mb}.", source)
    if retry.initial_seconds <= 0 or retry.max_seconds < retry.initial_seconds:
        raise _bad(f"expected 0 < [retry] initial_seconds <= max_seconds; received "
                   f"{retry.initial_seconds} and {retry.max_seconds}.", source)
    from hybrid.io.transfer import TRANSFER_CHOICES

    if dest.transfer_syntax not in TRANSFER_CHOICES:
        raise _bad(f"expected [destination] transfer_syntax = one of {list(TRANSFER_CHOICES)}; "
                   f"received {dest.transfer_syntax!r}.", source)
    if dest.method not in SEND_METHODS:
        raise _bad(f"expected [destination] method = one of {list(SEND_METHODS)}; received "
                   f"{dest.method!r}.", source)
    if orth.start_from not in ("now", "beginning"):
        raise _bad(f"expected [orthanc] start_from = 'now' or 'beginning'; received "
                   f"{orth.start_from!r}.", source)
    for label, pattern in (("series_description", sel.series_description),
                           ("protocol", sel.protocol)):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _bad(f"expected [select] {label} to be a regular expression; {exc}.",
                       source) from exc

    needs_rest = mode == "orthanc" or dest.method in ("rest", "stow")
    if needs_rest:
        if not re.match(r"^https?://", orth.url):
            raise _bad(f"expected [orthanc] url = http(s)://host:port; received {orth.url!r}.",
                       source)
        if "@" in orth.url.split("//", 1)[1].split("/", 1)[0]:
            raise _bad("expected no credentials in [orthanc] url; set username and the "
                       "password_env variable instead.", source)
        password = env.get(orth.password_env, "") if orth.password_env else ""
        if orth.username and not password:
            raise _bad(
                f"expected the Orthanc password in the environment variable "
                f"{orth.password_env!r} (named by [orthanc] password_env); it is not set. "
                f"Export it before starting hybrid serve.", source)
        orth = dataclasses.replace(orth, password=password)
    return ServeConfig(mode=mode, spool=Path(data["spool"]).expanduser(), listener=lst,
                       orthanc=orth, select=sel, destination=dest, retry=retry, tls=tls,
                       keep_files=keep)


def load_config(path: str | os.PathLike, *, env: Mapping[str, str] | None = None) -> ServeConfig:
    """Read ``path`` (``.toml``, or ``.yaml``/``.yml``) into a :class:`ServeConfig`."""
    path = Path(path)
    return parse_config(_read_file(path), env=env, source=str(path))
