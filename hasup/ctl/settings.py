"""What hasupctl needs from a node's YAML (or patronictl.yaml): where etcd is, and how to reach the REST API.

Only the `scope`, `namespace`, `etcd` or `etcd3`, `ctl`, `restapi` and `loop_wait` keys are read,
leniently: a file made for patronictl, without `postgresql` or `restapi.listen`, is fine. The DCS
section is read by the daemon's own rules (hasup.config), its TLS files checked the same way.
`--dcs-url` replaces the file's DCS section as a whole, as in patronictl (and its namespace when it
names one).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hasup.config import EtcdConfig
from hasup.config.etcd import DEFAULT_ETCD_PORT, read_etcd
from hasup.config.schema import DCS_SECTIONS, DCS_SUPPORTED, OTHER_DCS, Reader
from hasup.config.sources import SourceError, read_sources

# Where patronictl looks when no -c is given; hasupctl reads the same file (drop-in).
DEFAULT_CONFIG_PATH = os.path.join(os.path.expanduser("~"), ".config", "patroni", "patronictl.yaml")
DEFAULT_ETCD = EtcdConfig((("127.0.0.1", DEFAULT_ETCD_PORT),))


class SettingsError(Exception):
    """The configuration cannot be used; the message is one line."""


@dataclass(frozen=True)
class RestTls:
    """TLS towards the members' REST API (ctl.*, falling back to restapi.*)."""

    cacert: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = field(default=None, repr=False)
    insecure: bool = False


@dataclass(frozen=True)
class CtlSettings:
    etcd: EtcdConfig = DEFAULT_ETCD
    namespace: str = "service"
    scope: str | None = None
    username: str | None = None  # Basic auth for the unsafe REST endpoints
    password: str | None = field(default=None, repr=False)
    tls: RestTls = field(default_factory=RestTls)
    loop_wait: int = 10  # only a fallback for waits; the cluster's own config key wins
    retry_timeout: float = 10.0  # the whole budget of one etcd operation


_DCS_URL_FORMS = "etcd://host:port[/namespace] or etcd3://host:port[/namespace]"


def parse_dcs_url(url: str) -> tuple[EtcdConfig, str | None]:
    """`[etcd://|etcd3://|http://|https://]host[:port][/namespace]` -> (etcd endpoints, namespace or None).

    etcd3:// means etcd's v3 API; the others its v2 API (http:// and https:// are hasup's own forms).
    """
    text = url.strip()
    if "://" not in text:
        text = "etcd://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in OTHER_DCS:
        raise SettingsError(f"--dcs-url: {scheme} is not supported; hasup works with etcd (v2 API, etcd://) "
                            f"and etcd3 (v3 API, etcd3://)")
    if scheme not in ("etcd", "etcd3", "http", "https"):
        raise SettingsError(f"--dcs-url: unknown scheme {parts.scheme!r} (expected {_DCS_URL_FORMS})")
    try:
        port = parts.port or DEFAULT_ETCD_PORT
    except ValueError:
        raise SettingsError(f"--dcs-url: the port in {url!r} is not a number") from None
    if not parts.hostname:
        raise SettingsError(f"--dcs-url: no host in {url!r}")
    namespace = parts.path.strip("/") or None
    protocol = "https" if scheme == "https" else "http"
    api_version = 3 if scheme == "etcd3" else 2
    return EtcdConfig(((parts.hostname, port),), protocol, parts.username, parts.password,
                      api_version=api_version), namespace


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, Mapping) else {}


def _opt_str(section: Mapping[str, Any], key: str) -> str | None:
    value = section.get(key)
    return None if value in (None, "") else str(value)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y")
    return bool(value)


def settings_from_raw(raw: Mapping[str, Any], dcs_url: str | None = None, insecure: bool = False) -> CtlSettings:
    """CtlSettings from an already merged configuration dict (file + environment)."""
    namespace = str(raw.get("namespace") or "service").strip("/") or "service"
    if dcs_url:
        etcd, url_namespace = parse_dcs_url(dcs_url)
        namespace = url_namespace or namespace
    elif any(dcs in raw for dcs in (*DCS_SECTIONS, *OTHER_DCS)):
        reader = Reader()
        found = read_etcd(reader, raw)
        if reader.problems or found is None:
            raise SettingsError("; ".join(reader.problems) or f"unusable DCS section; {DCS_SUPPORTED}")
        etcd = found
    else:
        etcd = DEFAULT_ETCD
    ctl, restapi = _section(raw, "ctl"), _section(raw, "restapi")
    auth = _section(ctl, "authentication") or _section(restapi, "authentication")
    tls = RestTls(
        cacert=_opt_str(ctl, "cacert") or _opt_str(restapi, "cafile"),
        certfile=_opt_str(ctl, "certfile") or _opt_str(restapi, "certfile"),
        keyfile=_opt_str(ctl, "keyfile") or (None if _opt_str(ctl, "certfile") else _opt_str(restapi, "keyfile")),
        keyfile_password=_opt_str(ctl, "keyfile_password") or _opt_str(restapi, "keyfile_password"),
        insecure=insecure or _truthy(ctl.get("insecure")),
    )
    return CtlSettings(
        etcd=etcd, namespace=namespace, scope=_opt_str(raw, "scope"),
        username=_opt_str(auth, "username"), password=_opt_str(auth, "password"), tls=tls,
        loop_wait=_timing(raw, "loop_wait", 10), retry_timeout=_timing(raw, "retry_timeout", 10),
    )


def _timing(raw: Mapping[str, Any], key: str, default: int) -> int:
    """A timing from the top level or, in a node's file, bootstrap.dcs (the cluster's key may differ)."""
    value = raw.get(key, _section(_section(raw, "bootstrap"), "dcs").get(key))
    return int(value) if isinstance(value, int | str) and str(value).isdigit() and int(value) > 0 else default


def load_settings(config_file: str | None, dcs_url: str | None, insecure: bool,
                  env: Mapping[str, str] | None = None) -> CtlSettings:
    """Read `config_file` (or the default patronictl.yaml when it exists) with the environment over it."""
    environ = os.environ if env is None else env
    path = config_file
    if path is None and os.path.exists(DEFAULT_CONFIG_PATH):
        path = DEFAULT_CONFIG_PATH
    if path is not None and not os.access(path, os.R_OK):
        raise SettingsError(f"cannot read the configuration file {path} (-c/--config)")
    try:
        raw = read_sources(path or "", environ)
    except SourceError as exc:
        if path is not None:
            raise SettingsError("; ".join(exc.problems)) from None
        raw = {}  # no file and no PATRONI_/HASUP_ variables: defaults and --dcs-url only
    return settings_from_raw(raw, dcs_url, insecure)
