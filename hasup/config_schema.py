"""How the configuration loader reads raw values: converters, key tables, sources.

Nothing here knows hasup's dataclasses. Converters turn one raw YAML or environment value into a
typed value or raise `Invalid`; `Reader` applies them and collects every problem and warning; the
tables say which keys hasup reads, which ones are safety settings it must refuse, and which
environment variables set which keys; `read_sources` reads files, directories and variables into
one raw mapping. `hasup.config` turns that mapping into a `Config`.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

# Keys whose values never appear in a message (the same names hasup.ipc redacts).
SECRET_KEYS = frozenset({"password", "keyfile_password", "sslpassword", "key_password"})
# Keys under which a wrong-typed value may still hold a secret (e.g. `authentication: "user:pw"`).
SECRET_CONTAINERS = frozenset({"authentication", "superuser", "replication", "rewind", "users"})

PLACEHOLDER_NAME = "__patroni_strict_sync_replica_placeholder__"
DEFAULT_ETCD_PORT = 2379

_TRUE = frozenset({"on", "true", "yes", "1"})
_FALSE = frozenset({"off", "false", "no", "0"})
_INTEGER = re.compile(r"[+-]?\d+")
_URL_USERINFO = re.compile(r"(//[^/@:\s]*):[^/@\s]*@")

LOG_LEVELS = {
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARN": "WARNING",
    "WARNING": "WARNING",
    "ERROR": "ERROR",
    "FATAL": "CRITICAL",
    "CRITICAL": "CRITICAL",
}

WATCHDOG_MODES = {
    "off": "off",
    "disable": "off",
    "disabled": "off",
    "false": "off",
    "automatic": "automatic",
    "auto": "automatic",
    "required": "required",
    "require": "required",
}

# Options hasup itself passes to initdb / pg_basebackup; a user value would fight them.
INITDB_FORBIDDEN = frozenset({"pgdata", "nosync", "pwfile", "sync-only", "version", "username"})
BASEBACKUP_FORBIDDEN = frozenset(
    {"pgdata", "format", "wal-method", "xlog-method", "gzip", "version", "compress"}
    | {"dbname", "host", "port", "username", "password"}  # the connection comes from the leader
)

# The DCS sections hasup reads (etcd's v2 API, its v3 API), and the Patroni ones it refuses.
DCS_SECTIONS = ("etcd", "etcd3")
OTHER_DCS = ("consul", "zookeeper", "exhibitor", "kubernetes", "raft")
DCS_SUPPORTED = "hasup supports etcd (v2 API, `etcd:`) and etcd3 (v3 API, `etcd3:`)"

# -- which keys hasup reads ---------------------------------------------------------------

IGNORED = "not used by hasup yet, ignored"
DYNAMIC_ONLY = "only read from the dynamic configuration (bootstrap.dcs, then etcd), ignored here"
UNSUPPORTED = "not supported by this hasup version"

# Why each safety setting cannot simply be ignored (DESIGN.md §7): running without it would
# silently weaken a promise the operator asked for.
UNSAFE_REASONS = {
    # on/off are supported; only the quorum flavour is refused (see _refuse_unsafe).
    "synchronous_mode": "refusing to start rather than run without quorum commit",
    "standby_cluster": "refusing to start rather than run as a primary cluster instead of a standby",
}

# Integer dynamic settings and their minimums. hasup's ttl minimum is 10, not Patroni's 20: its
# lease keepalive runs in a worker that a slow PostgreSQL cannot starve (DESIGN.md §7).
DYNAMIC_INT_MINIMUMS: dict[str, int | None] = {
    "ttl": 10,
    "loop_wait": 1,
    "retry_timeout": 3,
    "maximum_lag_on_failover": 0,
    "max_timelines_history": 0,
    "primary_start_timeout": None,
    "primary_stop_timeout": None,
    "synchronous_node_count": 1,
}
LEGACY_NAMES = {"primary_start_timeout": "master_start_timeout", "primary_stop_timeout": "master_stop_timeout"}
DYNAMIC_BOOLS = ("check_timeline", "pause", "synchronous_mode_strict", "failsafe_mode")
SLOT_KEYS = ("slots", "permanent_slots", "permanent_replication_slots", "ignore_slots", "member_slots_ttl")
DCS_USED = (*DYNAMIC_INT_MINIMUMS, *LEGACY_NAMES.values(), *DYNAMIC_BOOLS, *UNSAFE_REASONS, *SLOT_KEYS, "postgresql")
DCS_PG_USED = ("use_pg_rewind", "use_slots", "parameters", "pg_hba")
# Dynamic settings Patroni never reads from the top level of the local file.
TOP_DYNAMIC_ONLY = frozenset(DCS_USED) - frozenset(UNSAFE_REASONS) - {"postgresql"}

TOP_USED = (
    "name", "scope", "namespace", "restapi", *DCS_SECTIONS, "bootstrap", "postgresql", "tags", "log",
    "watchdog", "vip", *OTHER_DCS, *UNSAFE_REASONS,
)
RESTAPI_USED = ("listen", "connect_address", "authentication", "certfile", "keyfile")
# The keys of `etcd:` and `etcd3:` alike.
ETCD_USED = (
    "host", "hosts", "url", "port", "protocol", "username", "password", "cacert", "cert", "key", "key_password",
)
BOOTSTRAP_USED = ("dcs", "method", "initdb", "pg_hba", "users", "post_bootstrap", "post_init")
PG_USED = (
    "listen", "connect_address", "data_dir", "config_dir", "bin_dir", "pgpass", "authentication",
    "parameters", "pg_hba", "pg_ctl_timeout", "use_pg_rewind", "custom_conf", "database", "basebackup",
    "health_deadline",
    "callbacks", "callback_timeout",
    "remove_data_directory_on_rewind_failure", "remove_data_directory_on_diverged_timelines",
)
# postgresql.callbacks.<action>, each a command line (hasup/postgresql/callbacks.py).
CALLBACK_ACTIONS = ("on_start", "on_stop", "on_restart", "on_reload", "on_role_change")
TAGS_UNUSED = ("nostream", "sync_priority")  # Patroni tags hasup publishes but ignores
LOG_USED = (
    "type", "level", "traceback_level", "format", "dateformat", "static_fields", "dir", "mode", "file_num",
    "file_size", "loggers",
)
VIP_USED = ("address", "prefix", "netmask", "broadcast", "interface", "label")
WATCHDOG_USED = ("mode", "device", "safety_margin", "driver")


class Invalid(ValueError):
    """A raw value cannot be converted. `message` reads after the key: `expected an integer`."""

    def __init__(self, message: str, got: Any) -> None:
        super().__init__(message)
        self.message = message
        self.got = got

    def render(self, show_value: bool) -> str:
        if not show_value:
            return self.message
        return f"{self.message}, got {shown(self.got)}"


def shown(value: Any, limit: int = 60) -> str:
    """A short repr for messages; user:password in URLs is masked."""
    text = _URL_USERINFO.sub(r"\1:******@", repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_secret_path(path: str) -> bool:
    parts = path.split(".")
    return parts[-1] in SECRET_KEYS or any(p in SECRET_CONTAINERS for p in parts)


# -- scalar converters ------------------------------------------------------------------


def to_str(value: Any) -> str:
    # YAML turns `password: 12345` into an int; accept that, but not bools (`yes` is rarely a name).
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Invalid("expected a string", value)


def to_command(value: Any) -> str:
    """A command line, split shell-style when it runs; refused here if it cannot be split."""
    text = to_str(value)
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise Invalid(f"expected a command line ({exc})", value) from None
    if not words:
        raise Invalid("expected a command line", value)
    return text


def to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    raise Invalid("expected an integer", value)


def at_least(minimum: int) -> Callable[[Any], int]:
    """A converter for integers not below `minimum`."""

    def convert(value: Any) -> int:
        number = to_int(value)
        if number < minimum:
            raise Invalid(f"must be at least {minimum}", value)
        return number

    return convert


def seconds_at_least(minimum: float) -> Callable[[Any], float]:
    """A converter for a duration in (possibly fractional) seconds, not below `minimum`."""

    def convert(value: Any) -> float:
        if isinstance(value, bool):
            raise Invalid("expected a number of seconds", value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise Invalid("expected a number of seconds", value) from None
        if not number >= minimum:  # also refuses NaN
            raise Invalid(f"must be at least {minimum:g}", value)
        return number

    return convert


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise Invalid("expected a boolean (on/off, true/false, yes/no, 1/0)", value)


def to_sync_mode(value: Any) -> bool | str:
    """synchronous_mode: bool-ish, or the word `quorum`."""
    if isinstance(value, str) and value.strip().lower() == "quorum":
        return "quorum"
    try:
        return to_bool(value)
    except Invalid:
        raise Invalid("expected a boolean or 'quorum'", value) from None


def to_mapping(value: Any) -> dict[str, Any]:
    # `ctl:` with nothing under it is YAML null: an empty section, not an error.
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise Invalid("expected a mapping", value)


def to_str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise Invalid("expected a list of strings", value)
    try:
        return tuple(to_str(item) for item in value)
    except Invalid:
        raise Invalid("expected a list of strings", value) from None


def to_log_level(value: Any) -> str:
    level = to_str(value).strip().upper()
    if level not in LOG_LEVELS:
        raise Invalid("expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL", value)
    return LOG_LEVELS[level]


def to_watchdog_mode(value: Any) -> str:
    if value is False:
        return "off"
    if isinstance(value, str) and value.strip().lower() in WATCHDOG_MODES:
        return WATCHDOG_MODES[value.strip().lower()]
    raise Invalid("expected one of off, automatic, required", value)


def to_protocol(value: Any) -> str:
    protocol = to_str(value).strip().lower()
    if protocol not in ("http", "https"):
        raise Invalid("expected http or https", value)
    return protocol


# -- addresses --------------------------------------------------------------------------


def _port(text: str, value: Any, expected: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise Invalid(expected, value)
    return int(text)


def split_host_port(value: Any, default_port: int | None = None, allow_empty_host: bool = False) -> tuple[str, int]:
    """`host:port`, `[v6addr]:port`, or a bare host when a default port is given."""
    expected = "expected host:port"
    text = to_str(value).strip()
    if text.startswith("["):  # bracketed IPv6, the only unambiguous way to add a port
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise Invalid(expected, value)
        if not rest:
            if default_port is None:
                raise Invalid(expected, value)
            return host, default_port
        return host, _port(rest[1:], value, expected)
    if ":" not in text:
        if default_port is None or not text:
            raise Invalid(expected, value)
        return text, default_port
    host, _, port = text.rpartition(":")
    if (not host and not allow_empty_host) or "/" in host or " " in host:
        raise Invalid(expected, value)
    return host, _port(port, value, expected)


def host_port(allow_empty_host: bool = False) -> Callable[[Any], str]:
    """A converter checking `host:port` and returning it as written (stripped)."""

    def convert(value: Any) -> str:
        split_host_port(value, allow_empty_host=allow_empty_host)
        return to_str(value).strip()

    return convert


def to_pg_listen(value: Any) -> str:
    """postgresql.listen: `host[,host2...]:port`, normalised without spaces or IPv6 brackets.

    The result feeds listen_addresses, which wants bare addresses.
    """
    text = to_str(value).strip()
    head, sep, port = text.rpartition(":")
    if not sep:
        raise Invalid("expected host:port", value)
    hosts = [h.strip() for h in head.split(",")]
    hosts = [h[1:-1] if h.startswith("[") and h.endswith("]") else h for h in hosts]
    if any(not h or " " in h or "/" in h for h in hosts):
        raise Invalid("expected host:port", value)
    return f"{','.join(hosts)}:{_port(port, value, 'expected host:port')}"


def etcd_endpoint(value: Any, default_port: int) -> tuple[str | None, str, int]:
    """One etcd endpoint: `host[:port]`, optionally with an `http(s)://` prefix (returned as scheme)."""
    text = to_str(value).strip()
    scheme: str | None = None
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        text = text.rstrip("/")
        if scheme not in ("http", "https"):
            raise Invalid("expected host:port", value)
    try:
        host, port = split_host_port(text, default_port)
    except Invalid:
        raise Invalid("expected host:port", value) from None
    return scheme, host, port


def etcd_host_list(value: Any) -> list[Any]:
    """etcd.hosts is a YAML list or a comma-separated string."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [part for part in (p.strip() for p in value.split(",")) if part]
    raise Invalid("expected a list or a comma-separated string of host:port", value)


# -- command-line options (initdb, pg_basebackup) ------------------------------------------


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def render_options(value: Any, forbidden: frozenset[str]) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    """Render `[flag, {name: value}, ...]` (or one mapping) to `--flag`, `--name=value`.

    Returns the options and a list of (index suffix, message) problems, e.g. ("[2]", "...").
    """
    if isinstance(value, dict):
        items: list[Any] = [{k: v} for k, v in value.items()]
        label = [f".{k}" for k in value]
    elif isinstance(value, list):
        items = value
        label = [f"[{i}]" for i in range(len(value))]
    else:
        return (), [("", f"expected a list of options, got {shown(value)}")]
    options: list[str] = []
    problems: list[tuple[str, str]] = []
    for where, item in zip(label, items, strict=True):
        rendered, problem = _render_one(item, forbidden)
        if problem:
            problems.append((where, problem))
        elif rendered:
            options.append(rendered)
    return tuple(options), problems


def _render_one(item: Any, forbidden: frozenset[str]) -> tuple[str | None, str | None]:
    if isinstance(item, str):
        name, argument = item.strip().lstrip("-"), None
    elif isinstance(item, dict) and len(item) == 1:
        key, raw = next(iter(item.items()))
        if not isinstance(key, str) or isinstance(raw, bool) or not isinstance(raw, str | int):
            return None, "expected a string or a one-key mapping of string values"
        name, argument = key.strip().lstrip("-"), _unquote(str(raw))
    else:
        return None, "expected a string or a one-key mapping"
    if not name:
        return None, "empty option"
    if name in forbidden:
        return None, f"option '{name}' is set by hasup and may not be given"
    return (f"--{name}" if argument is None else f"--{name}={argument}"), None


# -- reading with problems collected --------------------------------------------------------


def join_key(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def leaf(path: str) -> str:
    return path.rpartition(".")[2]


class Reader:
    """Applies converters to the keys of a section, collecting every problem and warning so all
    can be reported at once. Each line starts with the dotted key."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}")

    def convert(self, path: str, value: Any, convert: Callable[[Any], T]) -> T | None:
        try:
            return convert(value)
        except Invalid as exc:
            self.problem(path, exc.render(show_value=not is_secret_path(path)))
            return None

    def get(self, section: Mapping[str, Any], path: str, convert: Callable[[Any], T], default: T) -> T:
        """The converted value at `path` (its last part is the key in `section`), else `default`."""
        value = section.get(leaf(path))
        if value is None:
            return default
        result = self.convert(path, value, convert)
        return default if result is None else result

    def require(self, section: Mapping[str, Any], path: str, convert: Callable[[Any], T]) -> T | None:
        value = section.get(leaf(path))
        if value is None or value == "":
            self.problem(path, "required")
            return None
        return self.convert(path, value, convert)

    def section(self, parent: Mapping[str, Any], path: str) -> dict[str, Any]:
        return self.get(parent, path, to_mapping, {})

    def ignore_rest(
        self, section: Mapping[str, Any], prefix: str, used: Iterable[str], dynamic_only: Iterable[str] = ()
    ) -> None:
        """Warn once for each key of `section` hasup does not read."""
        known, dynamic = set(used), set(dynamic_only)
        for key in section:
            if key not in known:
                self.warn(join_key(prefix, key), DYNAMIC_ONLY if key in dynamic else IGNORED)


def lenient(source: Mapping[str, Any], path: str, convert: Callable[[Any], T], default: T, notes: list[str]) -> T:
    """Like `Reader.get`, but a bad value falls back to `default` with a warning in `notes`: a
    running node must keep going when someone writes a bad value into etcd."""
    value = source.get(leaf(path))
    if value is None:
        return default
    try:
        return convert(value)
    except Invalid as exc:
        notes.append(f"{path}: {exc.render(show_value=not is_secret_path(path))}; using {default!r}")
        return default


def apply_timing_rule(ttl: int, loop_wait: int, retry_timeout: int) -> tuple[int, int, str | None]:
    """Shrink loop_wait (then retry_timeout) until `loop_wait + 2*retry_timeout <= ttl` holds.

    A leader must be able to sleep one loop and retry etcd twice before its key expires.
    Returns the new loop_wait and retry_timeout, and a warning line when anything changed.
    """
    if loop_wait + 2 * retry_timeout <= ttl:
        return loop_wait, retry_timeout, None
    if 1 + 2 * retry_timeout > ttl:
        new_loop_wait, new_retry_timeout = 1, (ttl - 1) // 2
    else:
        new_loop_wait, new_retry_timeout = ttl - 2 * retry_timeout, retry_timeout
    note = (
        f'Violated the rule "loop_wait + 2*retry_timeout <= ttl" with ttl={ttl}, loop_wait={loop_wait}, '
        f"retry_timeout={retry_timeout}; using loop_wait={new_loop_wait}, retry_timeout={new_retry_timeout}"
    )
    return new_loop_wait, new_retry_timeout, note


# -- merging ------------------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any], drop_none: bool = True) -> dict[str, Any]:
    """A new dict: `override` over `base`, mappings merged key by key.

    With `drop_none`, a null in `override` removes the key, as a later config file may do.
    """
    merged: dict[str, Any] = dict(base)
    for key, value in override.items():
        if value is None and drop_none:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value, drop_none)
        else:
            merged[key] = value
    return merged


# -- environment ------------------------------------------------------------------------

ENV_PREFIXES = ("PATRONI_", "HASUP_")  # later wins
CONFIGURATION_VARIABLE = "CONFIGURATION"

_CREDENTIAL_SUFFIXES = (
    "USERNAME", "PASSWORD", "SSLMODE", "SSLKEY", "SSLPASSWORD", "SSLCERT", "SSLROOTCERT", "SSLCRL",
    "SSLCRLDIR", "SSLNEGOTIATION", "GSSENCMODE", "CHANNEL_BINDING",
)
_LOG_SUFFIXES = (
    "TYPE", "LEVEL", "TRACEBACK_LEVEL", "FORMAT", "DATEFORMAT", "STATIC_FIELDS", "MAX_QUEUE_SIZE", "DIR",
    "MODE", "FILE_SIZE", "FILE_NUM", "LOGGERS", "DEDUPLICATE_HEARTBEAT_LOGS",
)
_RESTAPI_SUFFIXES = (
    "LISTEN", "CONNECT_ADDRESS", "CERTFILE", "KEYFILE", "KEYFILE_PASSWORD", "CAFILE", "CIPHERS",
    "VERIFY_CLIENT", "HTTP_EXTRA_HEADERS", "HTTPS_EXTRA_HEADERS", "ALLOWLIST",
    "ALLOWLIST_INCLUDE_MEMBERS", "REQUEST_QUEUE_SIZE", "SERVER_TOKENS",
)
_CTL_SUFFIXES = ("INSECURE", "CACERT", "CERTFILE", "KEYFILE", "KEYFILE_PASSWORD")
_POSTGRESQL_SUFFIXES = (
    "LISTEN", "CONNECT_ADDRESS", "PROXY_ADDRESS", "CONFIG_DIR", "DATA_DIR", "PGPASS", "BIN_DIR",
)
_PG_BINARIES = ("PG_CTL", "INITDB", "PG_CONTROLDATA", "PG_BASEBACKUP", "POSTGRES", "PG_ISREADY", "PG_REWIND")
# Values that hold YAML structures (lists, mappings) rather than plain strings.
_STRUCTURED = frozenset({"LOG_FORMAT", "LOG_STATIC_FIELDS", "LOG_LOGGERS", "RESTAPI_ALLOWLIST"})
# The variables of the environment file that Patroni-derived HA tools ship with their unit
# (VIP=..., VIPNETMASKBIT=...): read without a prefix, below the HASUP_VIP_* spellings.
SEED_VIP_VARIABLES = {
    "VIP": ("vip", "address"),
    "VIPNETMASKBIT": ("vip", "prefix"),
    "VIPNETMASK": ("vip", "netmask"),
    "VIPBRD": ("vip", "broadcast"),
    "VIPDEV": ("vip", "interface"),
    "VIPLABEL": ("vip", "label"),
}
_STRUCTURED |= {"RESTAPI_HTTP_EXTRA_HEADERS", "RESTAPI_HTTPS_EXTRA_HEADERS"}


def _env_table() -> dict[str, tuple[str, ...]]:
    """Variable name (without prefix) -> key path. Legacy names come first so newer ones win."""
    table: dict[str, tuple[str, ...]] = {
        "LOGLEVEL": ("log", "level"),
        "LOGFORMAT": ("log", "format"),
        "LOG_DATEFMT": ("log", "dateformat"),
        "NAME": ("name",),
        "SCOPE": ("scope",),
        "NAMESPACE": ("namespace",),
        "THREAD_POOL_SIZE": ("thread_pool_size",),
        "THREAD_STACK_SIZE": ("thread_stack_size",),
        "RESTAPI_USERNAME": ("restapi", "authentication", "username"),
        "RESTAPI_PASSWORD": ("restapi", "authentication", "password"),
        "CTL_USERNAME": ("ctl", "authentication", "username"),
        "CTL_PASSWORD": ("ctl", "authentication", "password"),
    }
    table.update({f"LOG_{s}": ("log", s.lower()) for s in _LOG_SUFFIXES})
    table.update({f"RESTAPI_{s}": ("restapi", s.lower()) for s in _RESTAPI_SUFFIXES})
    table.update({f"CTL_{s}": ("ctl", s.lower()) for s in _CTL_SUFFIXES})
    table.update({f"VIP_{s.upper()}": ("vip", s) for s in VIP_USED})
    table.update({f"POSTGRESQL_{s}": ("postgresql", s.lower()) for s in _POSTGRESQL_SUFFIXES})
    table.update({f"POSTGRESQL_BIN_{b}": ("postgresql", "bin_name", b.lower()) for b in _PG_BINARIES})
    for role in ("SUPERUSER", "REPLICATION", "REWIND"):
        key = ("postgresql", "authentication", role.lower())
        table.update({f"{role}_{s}": (*key, s.lower()) for s in _CREDENTIAL_SUFFIXES})
    return table


ENV_TABLE = _env_table()


def _dcs_key(name: str) -> tuple[str, ...] | None:
    """`ETCD_HOSTS` -> ("etcd", "hosts"), `ETCD3_CACERT` -> ("etcd3", "cacert"): every DCS section can be
    built from the environment (a refused one too, so the refusal names it)."""
    for dcs in (*DCS_SECTIONS, *OTHER_DCS):
        head = dcs.upper() + "_"
        if name.startswith(head) and len(name) > len(head):
            return (dcs, name[len(head) :].lower())
    return None


def _env_value(name: str, value: str) -> Any:
    if name in _STRUCTURED or name.endswith("_HOSTS"):
        # A YAML list or mapping is taken as such; anything else stays the string it was.
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if isinstance(parsed, list | dict) else value
    return value


def env_key(name: str) -> tuple[str, ...] | None:
    """The key path a variable name (without prefix) sets, or None if hasup does not read it."""
    return ENV_TABLE.get(name) or _dcs_key(name)


def env_names(env: Mapping[str, str]) -> list[str]:
    """Every variable in `env` that hasup reads as configuration (both prefixes)."""
    found = []
    for full in env:
        if full in SEED_VIP_VARIABLES:
            found.append(full)
            continue
        for prefix in ENV_PREFIXES:
            if full.startswith(prefix):
                name = full[len(prefix) :]
                if name == CONFIGURATION_VARIABLE or env_key(name):
                    found.append(full)
    return found


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """The configuration the variables in `env` describe, as a nested dict (HASUP_ over PATRONI_)."""
    result: dict[str, Any] = {}
    for name, (section, key) in SEED_VIP_VARIABLES.items():
        if env.get(name):
            result.setdefault(section, {})[key] = env[name]
    for prefix in ENV_PREFIXES:
        for name in _ordered(env, prefix):
            value = env[prefix + name]
            path = env_key(name)
            if path is None or value == "":
                continue
            node = result
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = _env_value(name, value)
    return result


def _ordered(env: Mapping[str, str], prefix: str) -> Iterable[str]:
    # Table order, so a legacy name never overrides its newer spelling; DCS names after.
    names = {full[len(prefix) :] for full in env if full.startswith(prefix)}
    yield from (name for name in ENV_TABLE if name in names)
    yield from sorted(name for name in names if name not in ENV_TABLE)


def env_configuration(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable name, YAML text) of a whole configuration given in HASUP_ or PATRONI_CONFIGURATION."""
    for prefix in reversed(ENV_PREFIXES):
        text = env.get(prefix + CONFIGURATION_VARIABLE)
        if text:
            return prefix + CONFIGURATION_VARIABLE, text
    return None


# -- files and directories -------------------------------------------------------------------


class SourceError(Exception):
    """A configuration source cannot be read; `problems` holds one line each (hasup.config
    raises them again as ConfigError)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        # Only the position and the parser's complaint: the offending line may hold a password.
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SourceError([f"{source}: invalid YAML{where}: {exc.problem}"]) from None
    except yaml.YAMLError:
        raise SourceError([f"{source}: invalid YAML"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SourceError([f"{source}: expected a mapping at the top level"])
    return data


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SourceError([f"{path}: cannot read ({reason})"]) from None
    return parse_yaml(text, path)


def _read_path(path: str) -> dict[str, Any]:
    """One file, or every *.yml / *.yaml file of a directory merged in name order (later wins)."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith((".yml", ".yaml")))
        files = [p for p in (os.path.join(path, n) for n in names) if os.path.isfile(p)]
    else:
        files = [path]
    merged: dict[str, Any] | None = None
    problems: list[str] = []
    for name in files:
        try:
            data = _read_file(name)
        except SourceError as exc:
            problems.extend(exc.problems)
            continue
        # The first file is taken as written; a null in a later one removes what came before.
        merged = data if merged is None else deep_merge(merged, data)
    if problems:
        raise SourceError(problems)
    return merged or {}


def read_sources(path: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The merged, unvalidated configuration: the file(s) at `path` with `env` over them.

    Without a file, like Patroni: the whole YAML in HASUP_/PATRONI_CONFIGURATION (then no other
    variable applies), else the configuration the variables alone describe.
    """
    if path and os.path.exists(path):
        return deep_merge(_read_path(path), env_overrides(env), drop_none=False)
    whole = env_configuration(env)
    if whole is not None:
        variable, text = whole
        return parse_yaml(text, variable)
    overrides = env_overrides(env)
    if overrides:
        return overrides
    missing = f"{path}: no such file" if path else "no configuration file given, and none in the environment"
    raise SourceError([missing])
