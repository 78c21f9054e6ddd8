"""Patroni-style YAML configuration: the typed settings, and the loader that validates them.

`load_config` reads a YAML file (or a directory of them), merges the HASUP_/PATRONI_ environment
variables over it, checks every key hasup uses (the etcd TLS files too, loaded as the etcd client
will load them) and returns a `Config` plus warning lines; every problem is reported at once in
one `ConfigError`. `parse_dynamic` reads the cluster-wide settings kept in etcd's `config` key
leniently, the way a running node must: within the same bounds, and never raising;
`dynamic_problems` lists what it would have to adjust. `initial_dcs_config` is what a
bootstrapping node writes there. Value converters, bounds, name tables and the YAML loader with
its limits live in `hasup.config_schema`.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import ssl
import stat
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urlsplit

from hasup.config_schema import (
    BASEBACKUP_FORBIDDEN,
    BOOTSTRAP_USED,
    CALLBACK_ACTIONS,
    DAY,
    DCS_PG_USED,
    DCS_SECTIONS,
    DCS_SUPPORTED,
    DCS_USED,
    DEFAULT_ETCD_PORT,
    DYNAMIC_BOOLS,
    DYNAMIC_INT_BOUNDS,
    ETCD_USED,
    HOUR,
    IGNORED,
    INITDB_FORBIDDEN,
    LEGACY_NAMES,
    LOG_USED,
    OTHER_DCS,
    PG_USED,
    PLACEHOLDER_NAME,
    RESTAPI_USED,
    TAGS_UNUSED,
    TOP_DYNAMIC_ONLY,
    TOP_USED,
    UNSAFE_REASONS,
    UNSUPPORTED,
    VIP_USED,
    WATCHDOG_USED,
    Invalid,
    Reader,
    SourceError,
    apply_timing_rule,
    deep_merge,
    env_names,
    env_overrides,
    etcd_endpoint,
    etcd_host_list,
    host_port,
    int_between,
    join_key,
    leaf,
    lenient,
    parameter_problem,
    parse_yaml,
    read_sources,
    render_options,
    seconds_between,
    shown,
    split_host_port,
    to_bool,
    to_command,
    to_int,
    to_log_level,
    to_mapping,
    to_pg_listen,
    to_protocol,
    to_str,
    to_str_list,
    to_sync_mode,
    to_watchdog_mode,
)
from hasup.postgresql.slots import parse_slot_settings
from hasup.timing import DEFAULT_CALLBACK_TIMEOUT, DEFAULT_HEALTH_DEADLINE, MIN_HEALTH_DEADLINE


class ConfigError(Exception):
    """The configuration cannot be used. `problems` holds one line per problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str | None = None
    sslmode: str | None = None

    def __repr__(self) -> str:  # never show the password
        return f"Credentials(username={self.username!r}, password={'******' if self.password else None})"


@dataclass(frozen=True)
class RestApiConfig:
    listen: str  # host:port
    connect_address: str  # host:port
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = field(default=None, repr=False)
    cafile: str | None = None
    verify_client: str = "none"  # none, optional, required
    allowlist: tuple[str, ...] = ()  # hosts, IPs or CIDRs allowed to call the unsafe endpoints
    allowlist_include_members: bool = False
    http_extra_headers: dict[str, str] = field(default_factory=dict)
    https_extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        scheme = "https" if self.certfile else "http"
        return f"{scheme}://{self.connect_address}/patroni"

    @property
    def unprotected(self) -> bool:
        """Reachable from other hosts with nothing guarding the unsafe endpoints (warned at start, in /metrics)."""
        return _beyond_loopback(self.listen) and self.username is None and not self.allowlist \
            and not self.allowlist_include_members and self.verify_client != "required"


@dataclass(frozen=True)
class EtcdConfig:
    """Where etcd is and how to reach it: the `etcd:` (v2 API) or `etcd3:` (v3 API) section."""

    hosts: tuple[tuple[str, int], ...]  # from host, hosts (list or comma string) or url
    protocol: str = "http"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    api_version: int = 2  # 2 for `etcd:`, 3 for `etcd3:`
    cacert: str | None = None  # CA bundle that signed etcd's server certificates
    cert: str | None = None  # client certificate (may hold the key too)
    key: str | None = None  # client certificate's private key
    key_password: str | None = field(default=None, repr=False)

    @property
    def section(self) -> str:
        """The configuration section these settings came from, for messages."""
        return "etcd3" if self.api_version == 3 else "etcd"


@dataclass(frozen=True)
class UserSpec:
    password: str | None = field(default=None, repr=False)
    options: tuple[str, ...] = ()  # e.g. ("createrole", "createdb")


@dataclass(frozen=True)
class BootstrapConfig:
    dcs: dict[str, Any]  # initial dynamic configuration, as given (validated)
    initdb: tuple[str, ...]  # rendered initdb arguments, e.g. ("--data-checksums", "--encoding=UTF8")
    pg_hba: tuple[str, ...]
    users: dict[str, UserSpec]
    post_bootstrap: str | None


@dataclass(frozen=True)
class PostgresConfig:
    listen: str  # host[,host2]:port
    connect_address: str  # host:port
    data_dir: str
    bin_dir: str  # "" = look up PATH
    config_dir: str  # defaults to data_dir
    pgpass: str
    superuser: Credentials
    replication: Credentials
    rewind: Credentials  # defaults to superuser
    parameters: dict[str, Any]  # local postgresql.parameters
    pg_hba: tuple[str, ...] | None
    pg_ctl_timeout: int = 60
    use_pg_rewind: bool | None = None  # None: take the dynamic config's value
    custom_conf: str | None = None
    database: str = "postgres"
    basebackup: tuple[str, ...] = ()  # rendered options, e.g. ("--checkpoint=fast",)
    # hasup's own: how long a live postgres worker may fail to reach the leader's PostgreSQL before it
    # is fenced (killed) and the lock released (docs/operations.md, hasup.timing).
    health_deadline: float = DEFAULT_HEALTH_DEADLINE
    # postgresql.callbacks: action (on_start, ...) -> command line; hasup's own callback_timeout bounds
    # each run (hasup/postgresql/callbacks.py).
    callbacks: dict[str, str] = field(default_factory=dict)
    callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT
    # A replica that cannot rejoin its leader's history is emptied and cloned again, instead of waiting
    # for an operator (off by default, as in Patroni: it throws data away).
    remove_data_directory_on_rewind_failure: bool = False
    remove_data_directory_on_diverged_timelines: bool = False

    @property
    def listen_hosts(self) -> list[str]:
        return self.listen.rsplit(":", 1)[0].split(",")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def conn_url(self) -> str:
        return f"postgres://{self.connect_address}/{self.database}"


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"
    traceback_level: str = "ERROR"
    format: str = "%(asctime)s %(levelname)s: %(message)s"
    dateformat: str | None = None
    dir: str | None = None
    file_num: int = 4
    file_size: int = 25000000
    type: str = "plain"  # plain or json
    # json: (record attribute, key in the output) pairs, from `format` as a string, list or mapping
    json_fields: tuple[tuple[str, str], ...] = ()
    static_fields: dict[str, Any] = field(default_factory=dict)  # json: added to every line
    mode: int | None = None  # permission bits of the log file
    loggers: dict[str, str] = field(default_factory=dict)  # logger name -> level


@dataclass(frozen=True)
class VipConfig:
    """The virtual IP that follows the leader (hasup's own section; Patroni has none)."""

    address: str  # without prefix
    prefix: int
    interface: str
    label: str | None = None  # IPv4 only, "<interface>:<suffix>"
    broadcast: str | None = None  # None: derived from address and prefix ("brd +")

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix}"

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version


@dataclass(frozen=True)
class WatchdogConfig:
    mode: str = "automatic"  # off, automatic, required
    device: str = "/dev/watchdog"
    safety_margin: int = 5
    driver: str = "default"


@dataclass(frozen=True)
class Tags:
    nofailover: bool = False
    failover_priority: int = 1
    noloadbalance: bool = False
    clonefrom: bool = False
    nosync: bool = False
    raw: dict[str, Any] = field(default_factory=dict)  # every tag as configured (published in member keys)


@dataclass(frozen=True)
class DynamicConfig:
    """Settings that live in etcd's `config` key once bootstrapped."""

    ttl: int = 30
    loop_wait: int = 10
    retry_timeout: int = 10
    maximum_lag_on_failover: int = 1048576
    max_timelines_history: int = 0
    primary_start_timeout: int = 300
    primary_stop_timeout: int = 0
    check_timeline: bool = False
    synchronous_mode: bool = False
    synchronous_mode_strict: bool = False
    synchronous_node_count: int = 1
    failsafe_mode: bool = False
    pause: bool = False
    use_pg_rewind: bool = False
    use_slots: bool = True
    parameters: dict[str, Any] = field(default_factory=dict)  # postgresql.parameters (dynamic)
    pg_hba: tuple[str, ...] | None = None  # postgresql.pg_hba (dynamic); a local pg_hba wins
    standby_cluster: dict[str, Any] | None = None  # set (non-empty) means this is a standby cluster


@dataclass(frozen=True)
class Config:
    scope: str
    namespace: str  # normalised: leading and trailing slash removed, e.g. "service"
    name: str
    restapi: RestApiConfig
    etcd: EtcdConfig
    bootstrap: BootstrapConfig
    postgresql: PostgresConfig
    tags: Tags
    log: LogConfig
    watchdog: WatchdogConfig
    raw: dict[str, Any] = field(repr=False, default_factory=dict)  # the merged YAML + env, for reload/ConfigChanged
    vip: VipConfig | None = None


# -- reading sections ---------------------------------------------------------------------

_DYNAMIC_DEFAULTS = DynamicConfig()
_NO_STRINGS: tuple[str, ...] = ()
_INT32_MAX = 2**31 - 1  # Patroni's tags are read by tools that keep them in a C int
_MAX_LOG_FILES = 1000
_MAX_LOG_FILE_SIZE = 1 << 40  # bytes: beyond a TiB per file, rotation has stopped meaning anything


def _refuse_unsafe(r: Reader, section: Mapping[str, Any], prefix: str) -> None:
    """A safety setting hasup cannot honour yet is an error when set; a falsy value is fine."""
    for key, reason in UNSAFE_REASONS.items():
        value = section.get(key)
        if value is None:
            continue
        path = join_key(prefix, key)
        convert: Callable[[Any], Any] = to_bool
        if key == "synchronous_mode":
            # on/off are supported; the quorum flavour is not yet.
            if r.convert(path, value, to_sync_mode) == "quorum":
                r.problem(path, f"quorum: {UNSUPPORTED}; {reason}")
            continue
        if key == "standby_cluster":
            convert = to_mapping
        if r.convert(path, value, convert):
            r.problem(path, f"{UNSUPPORTED}; {reason}")


def _identity(r: Reader, top: Mapping[str, Any]) -> tuple[str | None, str | None, str]:
    name = r.require(top, "name", to_str)
    if name == PLACEHOLDER_NAME:
        r.problem("name", "this name is reserved for Patroni's internal use")
    scope = r.require(top, "scope", to_str)
    # Stored without leading/trailing slashes; "/" alone means the etcd root, as in Patroni.
    namespace = "/".join(part for part in r.get(top, "namespace", to_str, "/service").split("/") if part)
    return name, scope, namespace


def _restapi(r: Reader, top: Mapping[str, Any]) -> RestApiConfig | None:
    sec = r.section(top, "restapi")
    listen = r.require(sec, "restapi.listen", host_port(allow_empty_host=True))
    connect_address = r.require(sec, "restapi.connect_address", host_port())
    auth = r.section(sec, "restapi.authentication")
    username = r.get(auth, "restapi.authentication.username", to_str, None)
    password = r.get(auth, "restapi.authentication.password", to_str, None)
    if (username is None) != (password is None):
        missing, other = ("password", "username") if password is None else ("username", "password")
        r.problem(f"restapi.authentication.{missing}", f"required when restapi.authentication.{other} is set")
    certfile = r.get(sec, "restapi.certfile", to_str, None)
    keyfile = r.get(sec, "restapi.keyfile", to_str, None)
    if keyfile and not certfile:
        r.problem("restapi.keyfile", "needs restapi.certfile")
    keyfile_password = r.get(sec, "restapi.keyfile_password", to_str, None)
    cafile = r.get(sec, "restapi.cafile", to_str, None)
    verify_client = r.get(sec, "restapi.verify_client", _to_verify_client, "none")
    if verify_client != "none" and not certfile:
        r.problem("restapi.verify_client", "needs restapi.certfile")
    allowlist = r.get(sec, "restapi.allowlist", to_str_list, _NO_STRINGS)
    include_members = r.get(sec, "restapi.allowlist_include_members", to_bool, False)
    no_headers: dict[str, str] = {}
    http_headers = r.get(sec, "restapi.http_extra_headers", _to_headers, no_headers)
    https_headers = r.get(sec, "restapi.https_extra_headers", _to_headers, no_headers)
    r.ignore_rest(auth, "restapi.authentication", ("username", "password"))
    r.ignore_rest(sec, "restapi", (*RESTAPI_USED, *_RESTAPI_MORE))
    if listen is None or connect_address is None:
        return None
    restapi = RestApiConfig(listen, connect_address, username, password, certfile, keyfile,
                            keyfile_password=keyfile_password, cafile=cafile, verify_client=verify_client,
                            allowlist=allowlist, allowlist_include_members=include_members,
                            http_extra_headers=http_headers, https_extra_headers=https_headers)
    if restapi.unprotected:
        r.warn("restapi.listen", f"UNPROTECTED: {listen} is reachable from other hosts and neither "
                                 "restapi.authentication nor restapi.allowlist is set, so anyone who reaches "
                                 "the port can change the cluster configuration (PATCH /config; archive_command "
                                 "runs as postgres), restart, fail over or reinitialize nodes; set "
                                 "restapi.authentication")
    if verify_client == "optional":
        r.warn("restapi.verify_client", "optional is accepted as in Patroni but protects less: clients without "
                                        "a certificate reach every endpoint, the unsafe ones included; use "
                                        "required, or restapi.authentication")
    return restapi


def _beyond_loopback(listen: str) -> bool:
    """Whether restapi.listen accepts connections from other hosts: any address but a loopback one;
    a host name counts as reachable (it is not resolved here, and may resolve anywhere later)."""
    host = split_host_port(listen, allow_empty_host=True)[0].strip().lower()
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


_RESTAPI_MORE = ("keyfile_password", "cafile", "verify_client", "allowlist", "allowlist_include_members",
                 "http_extra_headers", "https_extra_headers")


def _to_verify_client(value: Any) -> str:
    text = to_str(value).strip().lower()
    if text not in ("none", "optional", "required"):
        raise Invalid("expected none, optional or required", value)
    return text


def _to_headers(value: Any) -> dict[str, str]:
    headers = to_mapping(value)
    for name, text in headers.items():
        if not isinstance(name, str) or not name or isinstance(text, dict | list) or text is None:
            raise Invalid("expected a mapping of header names to values", value)
    return {str(k): str(v) for k, v in headers.items()}


class _Endpoints(NamedTuple):
    hosts: tuple[tuple[str, int], ...]
    scheme: str | None  # from an explicit http:// or https:// in the endpoints, else None
    username: str | None  # from url's user:password@, if any
    password: str | None
    source: str  # the key they came from, e.g. "etcd3.hosts"


def _etcd(r: Reader, top: Mapping[str, Any]) -> EtcdConfig | None:
    """The one DCS section: `etcd:` (v2 API) or `etcd3:` (v3 API), read by the same rules."""
    for dcs in OTHER_DCS:
        if dcs in top:
            r.problem(dcs, f"not supported; {DCS_SUPPORTED}")
    present = [name for name in DCS_SECTIONS if name in top]
    if len(present) > 1:
        # Their keyspaces are disjoint: guessing one would run a second cluster beside the first.
        r.problem("etcd3", "set together with etcd; keep exactly one DCS section "
                           "(etcd: for etcd's v2 API, etcd3: for its v3 API)")
        return None
    if not present:
        if not any(dcs in top for dcs in OTHER_DCS):
            r.problem("etcd", "required (or etcd3, for etcd's v3 API)")
        return None
    name = present[0]
    sec = r.section(top, name)
    port = r.get(sec, f"{name}.port", int_between(1, 65535), DEFAULT_ETCD_PORT)
    protocol = r.get(sec, f"{name}.protocol", to_protocol, None)
    username = r.get(sec, f"{name}.username", to_str, None)
    password = r.get(sec, f"{name}.password", to_str, None)
    cacert, cert, key, key_password = _etcd_tls(r, sec, name)
    r.ignore_rest(sec, name, ETCD_USED)
    found = _etcd_endpoints(r, sec, name, port)
    if found is None:
        return None
    if found.scheme and protocol and protocol != found.scheme:
        r.warn(f"{name}.protocol", f"ignored because {found.source} says {found.scheme}://")
    # Given TLS files mean TLS was meant: https unless something says otherwise, and a
    # contradiction is refused rather than sending the password and data in the clear.
    resolved = found.scheme or protocol or ("https" if cacert or cert else "http")
    if resolved == "http" and (cacert or cert):
        given = " and ".join(f"{name}.{k}" for k, v in (("cacert", cacert), ("cert", cert)) if v)
        where = found.source if found.scheme else f"{name}.protocol"
        r.problem(where, f"TLS files given ({given}) but the protocol is http; use https or remove them")
    return EtcdConfig(found.hosts, resolved, username or found.username, password or found.password,
                      api_version=3 if name == "etcd3" else 2, cacert=cacert, cert=cert, key=key,
                      key_password=key_password)


def _etcd_endpoints(r: Reader, sec: Mapping[str, Any], name: str, port: int) -> _Endpoints | None:
    given = [key for key in ("hosts", "url", "host") if sec.get(key) not in (None, "", [])]
    if not given:
        unsupported = {"srv", "srv_suffix", "proxy"} & set(sec)
        note = f" ({name}.srv and {name}.proxy are not supported by hasup yet)" if unsupported else ""
        r.problem(name, f"one of host, hosts or url is required{note}")
        return None
    for other in given[1:]:
        r.warn(f"{name}.{other}", f"ignored because {name}.{given[0]} is set")
    source = f"{name}.{given[0]}"
    if given[0] == "url":
        return _etcd_url(r, source, sec["url"])
    if given[0] == "hosts":
        entries = r.convert(source, sec["hosts"], etcd_host_list)
        if not entries:
            if entries is not None:
                r.problem(source, "must list at least one host:port")
            return None
        labelled = [(f"{source}[{i}]", entry) for i, entry in enumerate(entries)]
    else:
        labelled = [(source, sec["host"])]
    endpoints = [r.convert(path, value, lambda v: etcd_endpoint(v, port)) for path, value in labelled]
    valid = [e for e in endpoints if e is not None]
    schemes = {scheme for scheme, _, _ in valid if scheme}
    if len(schemes) > 1:
        r.problem(source, "mixes http:// and https:// endpoints")
    if len(valid) != len(endpoints) or len(schemes) > 1:
        return None
    return _Endpoints(tuple((host, p) for _, host, p in valid), next(iter(schemes), None), None, None, source)


def _parse_etcd_url(value: Any) -> SplitResult:
    parts = urlsplit(to_str(value).strip())
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        raise Invalid("expected http(s)://host[:port]", value) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("expected http(s)://host[:port]", value)
    return parts


def _etcd_url(r: Reader, source: str, value: Any) -> _Endpoints | None:
    parts = r.convert(source, value, _parse_etcd_url)
    if parts is None:
        return None
    host = parts.hostname or ""  # never empty: _parse_etcd_url checked it
    return _Endpoints(((host, parts.port or DEFAULT_ETCD_PORT),), parts.scheme, parts.username, parts.password,
                      source)


# -- etcd TLS files ---------------------------------------------------------------------------

# What OpenSSL's PEM readers look for; checked first so a wrong file is named in the message,
# where OpenSSL would only say "PEM lib" for either file of a pair.
_PEM_CERTIFICATE = re.compile(r"-----BEGIN (TRUSTED )?CERTIFICATE-----")
_PEM_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_SCAN_LIMIT = 1 << 20  # certificate and key files are a few KiB; a CA bundle well under this
_SSL_LOCATION = re.compile(r"\s*\(_ssl\.c:\d+\)$")


class _KeyIsEncrypted(Exception):
    """Raised from the password callback when no key_password was given."""


def _etcd_tls(r: Reader, sec: Mapping[str, Any], name: str) -> tuple[str | None, str | None, str | None, str | None]:
    """cacert, cert, key and key_password, each checked now the way the etcd client will load it,
    so a bad file stops `--validate-config` and the start with one line instead of failing every
    etcd request later. Returns the paths as given (None when unset)."""
    cacert = r.get(sec, f"{name}.cacert", to_str, "") or None
    cert = r.get(sec, f"{name}.cert", to_str, "") or None
    key = r.get(sec, f"{name}.key", to_str, "") or None
    key_password = r.get(sec, f"{name}.key_password", to_str, "") or None
    if key and not cert:
        r.problem(f"{name}.key", f"needs {name}.cert (the certificate this key belongs to)")
    if key_password is not None and not cert and not key:
        r.warn(f"{name}.key_password", f"ignored without {name}.cert and {name}.key")
        key_password = None
    texts = {k: _read_tls_file(r, f"{name}.{k}", path) for k, path in (("cacert", cacert), ("cert", cert),
                                                                     ("key", key)) if path}
    if cacert and texts["cacert"] is not None:
        try:
            ssl.create_default_context(cafile=cacert)
        except (ssl.SSLError, ValueError, OSError) as exc:
            r.problem(f"{name}.cacert", f"not a PEM CA bundle: {_ssl_reason(exc)}")
    cert_text, key_text = texts.get("cert"), (texts.get("key") if key else texts.get("cert"))
    if cert and cert_text is not None and key_text is not None:
        _check_key_pair(r, name, cert, key, key_password, cert_text, key_text)
    return cacert, cert, key, key_password


def _read_tls_file(r: Reader, path_key: str, path: str) -> str | None:
    """The start of the file as text for the PEM checks, or None (with a problem) if unreadable."""
    try:
        # Only regular files: opening a FIFO or a device would block or never end.
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            r.problem(path_key, f"cannot read {path}: not a regular file")
            return None
        # OpenSSL reads the whole file: a PEM bundle is a few hundred KiB at most.
        if info.st_size > _PEM_SCAN_LIMIT:
            r.problem(path_key, f"{path}: {info.st_size} bytes, more than a PEM file of {_PEM_SCAN_LIMIT} may have")
            return None
        with open(path, "rb") as handle:
            return handle.read(_PEM_SCAN_LIMIT).decode("latin-1")
    except OSError as exc:
        r.problem(path_key, f"cannot read {path}: {exc.strerror or exc}")
    except ValueError as exc:  # e.g. a NUL in the path
        r.problem(path_key, f"cannot read {path!r}: {exc}")
    return None


def _check_key_pair(r: Reader, name: str, cert: str, key: str | None, key_password: str | None,
                    cert_text: str, key_text: str) -> None:
    key_file = key or cert  # without `key`, the certificate file must hold the key too
    if not _PEM_CERTIFICATE.search(cert_text):
        r.problem(f"{name}.cert", f"not a usable certificate/key pair: no PEM certificate in {cert}")
        return
    if not _PEM_PRIVATE_KEY.search(key_text):
        if key:
            r.problem(f"{name}.key", f"not a usable certificate/key pair: no PEM private key in {key}")
        else:
            r.problem(f"{name}.cert", f"not a usable certificate/key pair: no PEM private key in {cert} "
                                      f"and {name}.key is not set")
        return
    asked = False

    def password() -> str:
        # A callback even without a password: OpenSSL would otherwise prompt on the terminal.
        nonlocal asked
        asked = True
        if key_password is None:
            raise _KeyIsEncrypted
        return key_password

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=password)
    except _KeyIsEncrypted:
        r.problem(f"{name}.key_password", f"required: the private key in {key_file} is encrypted")
    except (ssl.SSLError, ValueError, OSError) as exc:
        # OpenSSL's error for a wrong pass phrase is a bare "PEM lib"; that the key asked for one
        # (and the pair did not merely mismatch) is what tells it apart.
        if asked and getattr(exc, "reason", None) != "KEY_VALUES_MISMATCH":
            r.problem(f"{name}.key_password", f"does not decrypt the private key in {key_file}")
        else:
            r.problem(f"{name}.cert", f"not a usable certificate/key pair: {_ssl_reason(exc)}")


def _ssl_reason(exc: Exception) -> str:
    """OpenSSL's reason without CPython's source location; never holds a pass phrase."""
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.strerror:
        return exc.strerror
    return _SSL_LOCATION.sub("", str(exc)) or type(exc).__name__


def _check_dcs(r: Reader, dcs: Mapping[str, Any], prefix: str) -> None:
    """Strict checks of the initial dynamic configuration; the dict itself is kept as given."""
    _refuse_unsafe(r, dcs, prefix)
    _check_dynamic_values(r, dcs, prefix)
    r.ignore_rest(dcs, prefix, DCS_USED)
    r.warnings.extend(join_key(prefix, note) for note in parse_slot_settings(dcs)[1])


def _check_dynamic_values(r: Reader, dcs: Mapping[str, Any], prefix: str) -> None:
    """Types and bounds of the dynamic settings hasup reads, as problems named `<prefix>.<key>`."""
    for key, (minimum, maximum) in DYNAMIC_INT_BOUNDS.items():
        for name in (key, LEGACY_NAMES.get(key)):
            if name:
                r.get(dcs, join_key(prefix, name), int_between(minimum, maximum), None)
    for key in DYNAMIC_BOOLS:
        r.get(dcs, join_key(prefix, key), to_bool, None)
    pg_path = join_key(prefix, "postgresql")
    pg = r.section(dcs, pg_path)
    r.get(pg, f"{pg_path}.use_pg_rewind", to_bool, None)
    r.get(pg, f"{pg_path}.use_slots", to_bool, None)
    _parameters(r, pg, f"{pg_path}.parameters")
    r.get(pg, f"{pg_path}.pg_hba", to_str_list, None)
    r.ignore_rest(pg, pg_path, DCS_PG_USED)


def dynamic_problems(raw: Any) -> list[str]:
    """Every type or bound problem of a dynamic configuration (what PATCH/PUT /config would store),
    one line each, named by its key; [] when hasup can apply it as given. Never raises."""
    if not isinstance(raw, Mapping):
        return [f"config: expected a mapping, got {shown(raw)}"]
    r = Reader()
    try:
        _check_dynamic_values(r, raw, "")
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a converter's bug, not the value's
        r.problem("config", f"cannot be checked ({type(exc).__name__})")
    return r.problems


def _parameters(r: Reader, section: Mapping[str, Any], path: str) -> dict[str, Any]:
    """postgresql.parameters: every name and value checked before it can reach postgresql.conf."""
    nothing: dict[str, Any] = {}
    given = r.get(section, path, to_mapping, nothing)
    for name, value in given.items():
        problem = parameter_problem(name, value)
        if problem is not None:
            # The name itself may be what is wrong (a newline, a quote): shown quoted, never as a key.
            r.problem(path, f"{shown(name)}: {problem}")
    return given


def _options(r: Reader, section: Mapping[str, Any], path: str, forbidden: frozenset[str]) -> tuple[str, ...]:
    value = section.get(leaf(path))
    if value is None:
        return ()
    options, problems = render_options(value, forbidden)
    for where, message in problems:
        r.problem(path + where, message)
    return options


def _users(r: Reader, users: Mapping[str, Any]) -> dict[str, UserSpec]:
    result = {}
    for name, spec in users.items():
        path = f"bootstrap.users.{name}"
        fields = r.convert(path, spec, to_mapping)
        if fields is None:
            continue
        password = r.get(fields, f"{path}.password", to_str, None)
        options = r.get(fields, f"{path}.options", to_str_list, _NO_STRINGS)
        r.ignore_rest(fields, path, ("password", "options"))
        result[str(name)] = UserSpec(password, options)
    return result


def _bootstrap(r: Reader, top: Mapping[str, Any]) -> BootstrapConfig:
    sec = r.section(top, "bootstrap")
    dcs = r.section(sec, "bootstrap.dcs")
    _check_dcs(r, dcs, "bootstrap.dcs")
    method = r.get(sec, "bootstrap.method", to_str, "initdb")
    if method != "initdb":
        # Ignoring a custom method would create an empty cluster where a restore was asked for.
        r.problem("bootstrap.method", f"only 'initdb' is supported by this hasup version, got {shown(method)}")
    initdb = _options(r, sec, "bootstrap.initdb", INITDB_FORBIDDEN)
    pg_hba = r.get(sec, "bootstrap.pg_hba", to_str_list, _NO_STRINGS)
    users = _users(r, r.section(sec, "bootstrap.users"))
    post_bootstrap = r.get(sec, "bootstrap.post_bootstrap", to_str, None)
    if post_bootstrap is None:
        post_bootstrap = r.get(sec, "bootstrap.post_init", to_str, None)
    elif sec.get("post_init") is not None:
        r.warn("bootstrap.post_init", "ignored because bootstrap.post_bootstrap is set")
    r.ignore_rest(sec, "bootstrap", BOOTSTRAP_USED)
    return BootstrapConfig(dict(dcs), initdb, pg_hba, users, post_bootstrap)


def _credentials(r: Reader, auth: Mapping[str, Any], role: str) -> Credentials | None:
    path = f"postgresql.authentication.{role}"
    sec = r.section(auth, path)
    username = r.require(sec, f"{path}.username", to_str)
    password = r.get(sec, f"{path}.password", to_str, None)
    sslmode = r.get(sec, f"{path}.sslmode", to_str, None)
    r.ignore_rest(sec, path, ("username", "password", "sslmode"))
    return None if username is None else Credentials(username, password, sslmode)


def _authentication(
    r: Reader, sec: Mapping[str, Any]
) -> tuple[Credentials | None, Credentials | None, Credentials | None]:
    auth = r.section(sec, "postgresql.authentication")
    superuser = _credentials(r, auth, "superuser")
    replication = _credentials(r, auth, "replication")
    rewind = _credentials(r, auth, "rewind") if auth.get("rewind") is not None else superuser
    r.ignore_rest(auth, "postgresql.authentication", ("superuser", "replication", "rewind"))
    return superuser, replication, rewind


def _postgresql(r: Reader, top: Mapping[str, Any]) -> PostgresConfig | None:
    sec = r.section(top, "postgresql")
    listen = r.require(sec, "postgresql.listen", to_pg_listen)
    connect_address = r.require(sec, "postgresql.connect_address", host_port())
    data_dir = r.require(sec, "postgresql.data_dir", to_str)
    config_dir = r.get(sec, "postgresql.config_dir", to_str, "") or data_dir or ""
    superuser, replication, rewind = _authentication(r, sec)
    # Built even when a required key is missing, so every other key is still checked and reported.
    settings = PostgresConfig(
        listen=listen or "",
        connect_address=connect_address or "",
        data_dir=data_dir or "",
        bin_dir=r.get(sec, "postgresql.bin_dir", to_str, ""),
        config_dir=config_dir,
        pgpass=os.path.expanduser(r.get(sec, "postgresql.pgpass", to_str, "~/pgpass")),
        superuser=superuser or Credentials(""),
        replication=replication or Credentials(""),
        rewind=rewind or Credentials(""),
        parameters=_parameters(r, sec, "postgresql.parameters"),
        pg_hba=r.get(sec, "postgresql.pg_hba", to_str_list, None),
        pg_ctl_timeout=r.get(sec, "postgresql.pg_ctl_timeout", int_between(1, DAY), 60),
        use_pg_rewind=r.get(sec, "postgresql.use_pg_rewind", to_bool, None),
        custom_conf=r.get(sec, "postgresql.custom_conf", to_str, None),
        database=r.get(sec, "postgresql.database", to_str, "postgres"),
        basebackup=_options(r, sec, "postgresql.basebackup", BASEBACKUP_FORBIDDEN),
        health_deadline=r.get(sec, "postgresql.health_deadline", seconds_between(MIN_HEALTH_DEADLINE, HOUR),
                              DEFAULT_HEALTH_DEADLINE),
        callbacks=_callbacks(r, sec),
        callback_timeout=r.get(sec, "postgresql.callback_timeout", seconds_between(1, HOUR),
                               DEFAULT_CALLBACK_TIMEOUT),
        remove_data_directory_on_rewind_failure=r.get(
            sec, "postgresql.remove_data_directory_on_rewind_failure", to_bool, False),
        remove_data_directory_on_diverged_timelines=r.get(
            sec, "postgresql.remove_data_directory_on_diverged_timelines", to_bool, False),
    )
    r.ignore_rest(sec, "postgresql", PG_USED, dynamic_only=("use_slots",))
    required = (listen, connect_address, data_dir, superuser, replication, rewind)
    return None if any(v is None for v in required) else settings


def _callbacks(r: Reader, sec: Mapping[str, Any]) -> dict[str, str]:
    section = r.section(sec, "postgresql.callbacks")
    commands = {}
    for action in CALLBACK_ACTIONS:
        command = r.get(section, f"postgresql.callbacks.{action}", to_command, "")
        if command:
            commands[action] = command
    r.ignore_rest(section, "postgresql.callbacks", CALLBACK_ACTIONS)
    return commands


def _tags(r: Reader, top: Mapping[str, Any]) -> Tags:
    sec = r.section(top, "tags")
    nofailover = r.get(sec, "tags.nofailover", to_bool, False)
    failover_priority = r.get(sec, "tags.failover_priority", int_between(0, _INT32_MAX), 1)
    if nofailover and sec.get("failover_priority") is not None and failover_priority > 0:
        r.warn("tags.failover_priority", "contradicts tags.nofailover: true; nofailover wins")
    for key in TAGS_UNUSED:
        if key in sec:
            r.warn(f"tags.{key}", IGNORED)
    return Tags(
        nofailover=nofailover,
        failover_priority=failover_priority,
        noloadbalance=r.get(sec, "tags.noloadbalance", to_bool, False),
        clonefrom=r.get(sec, "tags.clonefrom", to_bool, False),
        nosync=r.get(sec, "tags.nosync", to_bool, False),
        raw=dict(sec),
    )


_FORMAT_FIELD = re.compile(r"%\((\w+)\)")


def _json_fields(r: Reader, value: Any) -> tuple[tuple[str, str], ...] | None:
    """log.format for the json type: a format string (its %(field)s names), a list of names or
    {name: alias} mappings, or one such mapping."""
    pairs: list[tuple[str, str]] = []
    if isinstance(value, str):
        pairs = [(f, f) for f in _FORMAT_FIELD.findall(value)]
    elif isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                pairs.append((item, item))
            elif isinstance(item, dict):
                pairs.extend((str(k), str(v)) for k, v in item.items())
            else:
                r.problem("log.format", f"expected field names or {{field: alias}} mappings, got {shown(item)}")
                return None
    else:
        r.problem("log.format", f"expected a string, a list or a mapping, got {shown(value)}")
        return None
    if not pairs:
        r.problem("log.format", "names no fields")
        return None
    return tuple(pairs)


def _file_mode(value: Any) -> int:
    """Permission bits: an integer (YAML reads 0640 as octal), or a string such as '0o640' or '0640'."""
    if isinstance(value, str) and value.strip().lower().lstrip("0o").isdigit():
        try:
            return int(value.strip().lower().replace("0o", "", 1), 8)
        except ValueError:
            raise Invalid("expected octal permission bits", value) from None
    return to_int(value)


def _log(r: Reader, top: Mapping[str, Any]) -> LogConfig:
    sec = r.section(top, "log")
    default = LogConfig()
    log_type = r.get(sec, "log.type", to_str, default.type).strip().lower()
    if log_type not in ("plain", "json"):
        r.problem("log.type", f"expected plain or json, got {log_type!r}")
        log_type = default.type
    log_format = sec.get("format")
    json_fields: tuple[tuple[str, str], ...] = ()
    if log_type == "json":
        json_fields = _json_fields(r, log_format if log_format is not None else default.format) or ()
        log_format = None
    elif log_format is not None and not isinstance(log_format, str):
        r.warn("log.format", "a list or mapping of fields is read with log.type json only; using the default")
        log_format = None
    loggers: dict[str, str] = {}
    no_loggers: dict[str, Any] = {}
    for name, level in r.get(sec, "log.loggers", to_mapping, no_loggers).items():
        converted = r.convert(f"log.loggers.{name}", level, to_log_level)
        if converted is not None:
            loggers[str(name)] = converted
    mode = r.get(sec, "log.mode", _file_mode, None)
    if mode is not None and not 0 <= mode <= 0o777:
        r.problem("log.mode", f"expected permission bits between 0 and 0o777, got {mode}")
        mode = None
    no_fields: dict[str, Any] = {}
    static = r.get(sec, "log.static_fields", to_mapping, no_fields)
    if static and log_type != "json":
        r.warn("log.static_fields", "only used with log.type json, ignored")
    r.ignore_rest(sec, "log", LOG_USED)
    return LogConfig(
        level=r.get(sec, "log.level", to_log_level, default.level),
        traceback_level=r.get(sec, "log.traceback_level", to_log_level, default.traceback_level),
        format=log_format or default.format,
        dateformat=r.get(sec, "log.dateformat", to_str, None),
        dir=r.get(sec, "log.dir", to_str, None),
        file_num=r.get(sec, "log.file_num", int_between(0, _MAX_LOG_FILES), default.file_num),
        file_size=r.get(sec, "log.file_size", int_between(0, _MAX_LOG_FILE_SIZE), default.file_size),
        type=log_type,
        json_fields=json_fields,
        static_fields=dict(static),
        mode=mode,
        loggers=loggers,
    )


def _vip(r: Reader, top: Mapping[str, Any]) -> VipConfig | None:
    """The vip section; None when it is absent or has no address (no virtual IP)."""
    sec = r.section(top, "vip")
    r.ignore_rest(sec, "vip", VIP_USED)
    raw_address = r.get(sec, "vip.address", to_str, "").strip()
    if not raw_address:
        return None
    try:
        iface = ipaddress.ip_interface(raw_address)
    except ValueError:
        r.problem("vip.address", f"expected an IP address, optionally with /prefix, got {shown(raw_address)}")
        return None
    full: int = iface.network.max_prefixlen
    prefix = iface.network.prefixlen if "/" in raw_address else None
    if sec.get("prefix") not in (None, ""):
        prefix = r.get(sec, "vip.prefix", int_between(1, 128), full)
    elif sec.get("netmask") not in (None, ""):
        try:
            prefix = ipaddress.ip_network(f"0.0.0.0/{to_str(sec['netmask']).strip()}").prefixlen
        except (ValueError, Invalid):
            r.problem("vip.netmask", f"expected a dotted netmask, got {shown(sec['netmask'])}")
    if prefix is None:
        prefix = full
    if prefix > full:
        r.problem("vip.prefix", f"must be at most {full} for {iface.ip}")
    interface = r.get(sec, "vip.interface", to_str, "").strip()
    if not interface:
        r.problem("vip.interface", "required with vip.address (the device the address goes on)")
    label = r.get(sec, "vip.label", to_str, "").strip() or None
    if label is not None:
        if ":" not in label:
            label = f"{interface}:{label}"  # VIPLABEL=1 means eth0:1, as `ip ... label ${VIPDEV}:${VIPLABEL}`
        if not label.startswith(f"{interface}:"):
            r.problem("vip.label", f"must start with the interface name and a colon ({interface}:...)")
        if len(label) > 15:
            r.problem("vip.label", "at most 15 characters (the kernel's interface name limit)")
        if iface.version == 6:
            r.warn("vip.label", "labels exist for IPv4 addresses only, ignored")
            label = None
    broadcast = r.get(sec, "vip.broadcast", to_str, "").strip() or None
    if broadcast is not None:
        try:
            ipaddress.IPv4Address(broadcast)
        except ValueError:
            r.problem("vip.broadcast", f"expected an IPv4 address, got {shown(broadcast)}")
    if not interface:
        return None
    return VipConfig(str(iface.ip), prefix, interface, label, broadcast)


def _watchdog(r: Reader, top: Mapping[str, Any]) -> WatchdogConfig:
    sec = r.section(top, "watchdog")
    default = WatchdogConfig()
    # YAML reads `mode: off` as false, so a present-but-false value must not fall to the default.
    mode = default.mode if "mode" not in sec else r.convert("watchdog.mode", sec["mode"], to_watchdog_mode)
    r.ignore_rest(sec, "watchdog", WATCHDOG_USED)
    driver = r.get(sec, "watchdog.driver", to_str, default.driver)
    if driver not in ("default", "testing"):
        r.problem("watchdog.driver", f"expected default or testing, got {driver!r}")
    return WatchdogConfig(
        mode=mode or default.mode,
        device=r.get(sec, "watchdog.device", to_str, default.device),
        safety_margin=r.get(sec, "watchdog.safety_margin", int_between(-1, HOUR), default.safety_margin),
        driver=driver,
    )


def load_vip(path: str, env: Mapping[str, str] | None = None) -> VipConfig | None:
    """Only the vip section of the configuration at `path` (with the environment over it).

    For the ExecStopPost helper: it must remove the address even when some other part of
    the configuration was broken since hasup started.  Raises ConfigError for vip problems.
    """
    try:
        raw = read_sources(path, _environment(env))
    except SourceError as exc:
        raise ConfigError(exc.problems) from None
    r = Reader()
    vip = _vip(r, raw)
    if r.problems:
        raise ConfigError(r.problems)
    return vip


def build_config(raw: Mapping[str, Any]) -> tuple[Config, list[str]]:
    """Validate a merged raw configuration; every problem is collected before ConfigError is raised."""
    r = Reader()
    r.ignore_rest(raw, "", TOP_USED, dynamic_only=TOP_DYNAMIC_ONLY)
    name, scope, namespace = _identity(r, raw)
    _refuse_unsafe(r, raw, "")
    restapi = _restapi(r, raw)
    etcd = _etcd(r, raw)
    bootstrap = _bootstrap(r, raw)
    postgresql = _postgresql(r, raw)
    tags, log, watchdog, vip = _tags(r, raw), _log(r, raw), _watchdog(r, raw), _vip(r, raw)
    if r.problems or name is None or scope is None or restapi is None or etcd is None or postgresql is None:
        raise ConfigError(r.problems or ["configuration: incomplete"])
    _, timing = parse_dynamic(bootstrap.dcs)  # only the timing rule can still warn after strict checks
    config = Config(scope, namespace, name, restapi, etcd, bootstrap, postgresql, tags, log, watchdog, dict(raw),
                    vip)
    return config, r.warnings + [f"bootstrap.dcs: {line}" for line in timing]


# -- the dynamic configuration (etcd `config` key) -----------------------------------------


def _dynamic_int(source: Mapping[str, Any], key: str, notes: list[str]) -> int:
    legacy = LEGACY_NAMES.get(key)
    name = legacy if legacy and source.get(key) is None and source.get(legacy) is not None else key
    value = lenient(source, name, to_int, getattr(_DYNAMIC_DEFAULTS, key), notes)
    minimum, maximum = DYNAMIC_INT_BOUNDS[key]
    if value < minimum:
        notes.append(f"{name}: {value} is below the minimum {minimum}; using {minimum}")
        value = minimum
    elif value > maximum:
        notes.append(f"{name}: {value} is above the maximum {maximum}; using {maximum}")
        value = maximum
    return value


def _dynamic_parameters(pg: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """postgresql.parameters from etcd without the entries postgresql.conf cannot safely carry."""
    given: dict[str, Any] = lenient(pg, "postgresql.parameters", to_mapping, {}, notes)
    kept: dict[str, Any] = {}
    for name, value in given.items():
        problem = parameter_problem(name, value)
        if problem is None:
            kept[name] = value
        else:
            notes.append(f"postgresql.parameters: {shown(name)}: {problem}; ignored")
    return kept


def parse_dynamic(raw: Mapping[str, Any]) -> tuple[DynamicConfig, list[str]]:
    """The cluster-wide settings from etcd's `config` key (same shape as bootstrap.dcs).

    Never fails, whatever `raw` holds: bad values fall back to their defaults, and values outside
    their bounds are moved to the nearest bound, each with a warning.
    """
    notes: list[str] = []
    if not isinstance(raw, Mapping):
        return DynamicConfig(), [f"config: expected a mapping, got {shown(raw)}; using the defaults"]
    ints = {key: _dynamic_int(raw, key, notes) for key in DYNAMIC_INT_BOUNDS}
    ints["loop_wait"], ints["retry_timeout"], timing = apply_timing_rule(
        ints["ttl"], ints["loop_wait"], ints["retry_timeout"]
    )
    if timing:
        notes.append(timing)
    flags = {key: lenient(raw, key, to_bool, False, notes) for key in DYNAMIC_BOOLS}
    sync_default: bool | str = False
    sync_mode = lenient(raw, "synchronous_mode", to_sync_mode, sync_default, notes)
    flags["synchronous_mode"] = bool(sync_mode)  # quorum (not supported) still means: never less than sync
    standby: dict[str, Any] = lenient(raw, "standby_cluster", to_mapping, {}, notes)
    pg: dict[str, Any] = lenient(raw, "postgresql", to_mapping, {}, notes)
    on = ["standby_cluster"] if standby else []
    if sync_mode == "quorum":
        on.append("synchronous_mode: quorum (running as synchronous_mode: on)")
    notes.extend(f"{key}: set in the cluster configuration, but {UNSUPPORTED}" for key in on)
    dynamic = DynamicConfig(
        ttl=ints["ttl"],
        loop_wait=ints["loop_wait"],
        retry_timeout=ints["retry_timeout"],
        maximum_lag_on_failover=ints["maximum_lag_on_failover"],
        max_timelines_history=ints["max_timelines_history"],
        primary_start_timeout=ints["primary_start_timeout"],
        primary_stop_timeout=ints["primary_stop_timeout"],
        check_timeline=flags["check_timeline"],
        synchronous_mode=flags["synchronous_mode"],
        synchronous_mode_strict=flags["synchronous_mode_strict"],
        synchronous_node_count=ints["synchronous_node_count"],
        failsafe_mode=flags["failsafe_mode"],
        pause=flags["pause"],
        use_pg_rewind=lenient(pg, "postgresql.use_pg_rewind", to_bool, False, notes),
        use_slots=lenient(pg, "postgresql.use_slots", to_bool, True, notes),
        parameters=_dynamic_parameters(pg, notes),
        pg_hba=lenient(pg, "postgresql.pg_hba", to_str_list, None, notes),
        standby_cluster=standby or None,
    )
    return dynamic, notes


def initial_dcs_config(cfg: Config) -> dict[str, Any]:
    """What a bootstrapping node writes to etcd's `config` key: bootstrap.dcs as given, with the
    timing settings filled in and adjusted, so every node reads the values actually in force."""
    dynamic, _ = parse_dynamic(cfg.bootstrap.dcs)
    result = copy.deepcopy(cfg.bootstrap.dcs)
    for key in ("ttl", "loop_wait", "retry_timeout", "maximum_lag_on_failover"):
        result[key] = getattr(dynamic, key)
    return result


# -- loading ----------------------------------------------------------------------------------

# Variables taken out of the process environment by `take_environment`; reloads read them here.
_taken_environment: dict[str, str] | None = None


def take_environment(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Remove hasup's configuration variables from `environ` and remember them.

    PostgreSQL, its tools and hook scripts inherit the daemon's environment, and passwords given
    as variables must not reach them. Later `load_config(path)` calls (reloads) use the saved copy.
    """
    global _taken_environment
    taken = {name: environ.pop(name) for name in env_names(environ)}
    _taken_environment = {**(_taken_environment or {}), **taken}
    return dict(_taken_environment)


def _environment(env: Mapping[str, str] | None) -> Mapping[str, str]:
    if env is not None:
        return env
    return _taken_environment if _taken_environment is not None else os.environ


def load_config(path: str, env: Mapping[str, str] | None = None) -> tuple[Config, list[str]]:
    """Read, merge and validate the configuration at `path` (a file or a directory).

    `env` defaults to the variables `take_environment` saved, else `os.environ`.
    Returns the config and warning lines; raises ConfigError listing every problem.
    """
    try:
        raw = read_sources(path, _environment(env))
    except SourceError as exc:
        raise ConfigError(exc.problems) from None
    return build_config(raw)


def load_config_text(text: str, env: Mapping[str, str] | None = None) -> tuple[Config, list[str]]:
    """Like `load_config` for YAML text; `env` defaults to no variables at all (for tests and tools)."""
    try:
        raw = parse_yaml(text, "<text>")
    except SourceError as exc:
        raise ConfigError(exc.problems) from None
    return build_config(deep_merge(raw, env_overrides(env or {}), drop_none=False))
