"""How the configuration loader reads raw values: converters, key tables, sources.

Nothing here knows hasup's dataclasses. Converters turn one raw YAML or environment value into a
typed value (bounded: no integer beyond 64 bits, no inf or NaN) or raise `Invalid`; `Reader`
applies them and collects every problem and warning; the tables say which keys hasup reads, their
bounds, which ones are safety settings it must refuse, and which environment variables set which
keys; `read_sources` reads files, directories and variables into one raw mapping through a YAML
loader with limits on size, depth, aliases, duplicate keys and numbers. `hasup.config` turns that
mapping into a `Config`.
"""

from __future__ import annotations

import math
import os
import re
import reprlib
import shlex
import stat
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import Resolver

try:  # libyaml scans and parses in C: a 1 MiB file in milliseconds rather than seconds
    from yaml._yaml import CParser as _EventSource
except ImportError:  # pragma: no cover -- PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader as _YamlReader
    from yaml.scanner import Scanner

    class _EventSource(_YamlReader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            _YamlReader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)

T = TypeVar("T")

# Keys whose values never appear in a message (the same names hasup.ipc redacts).
SECRET_KEYS = frozenset({"password", "keyfile_password", "sslpassword", "key_password"})
# Keys under which a wrong-typed value may still hold a secret (e.g. `authentication: "user:pw"`).
SECRET_CONTAINERS = frozenset({"authentication", "superuser", "replication", "rewind", "users"})

PLACEHOLDER_NAME = "__patroni_strict_sync_replica_placeholder__"
DEFAULT_ETCD_PORT = 2379

_TRUE = frozenset({"on", "true", "yes", "1"})
_FALSE = frozenset({"off", "false", "no", "0"})
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_DIGITS = re.compile(r"[+-]?[0-9]+")
_PORT = re.compile(r"[0-9]{1,5}")

# Every integer hasup keeps fits PostgreSQL's bigint and JSON readers in other languages; beyond it a
# value is a typo or an attack, and Python would happily carry a 10**400 into every computation.
INT64_MAX = 2**63 - 1

# -- limits on a configuration file (DESIGN.md §11) -------------------------------------------
# A real configuration is a few KiB; 1 MiB leaves room for thousands of pg_hba lines and keeps a
# configuration near the size of one IPC frame (hasup.ipc.MAX_FRAME), which a reload sends to the
# workers as JSON (a file close to the limit can still exceed the frame: the IPC side must cope).
MAX_CONFIG_BYTES = 1 << 20
# Patroni's keys nest about six deep; anything near this is generated or hostile, and the limit
# keeps every recursive walk of the result (merging, copying, JSON) far from Python's recursion limit.
MAX_YAML_DEPTH = 64
# Values (scalars, lists, mappings) in one document, counting each alias as the copy it stands for:
# bounds the work of parsing a file and of everything that walks the result later (a "billion
# laughs" file is small on disk but expands exponentially).
MAX_YAML_VALUES = 50_000
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

# Integer dynamic settings: (minimum, maximum). hasup's ttl minimum is 10, not Patroni's 20: its
# lease keepalive runs in a worker that a slow PostgreSQL cannot starve (DESIGN.md §7). The maxima
# are far beyond any sane cluster (Patroni has none): they exist so that no value written to etcd
# or the file can overflow a deadline computation, a sleep or a device timeout (DESIGN.md §11).
HOUR = 3600
DAY = 86400
DYNAMIC_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "ttl": (10, HOUR),
    "loop_wait": (1, HOUR),
    "retry_timeout": (3, HOUR),
    "maximum_lag_on_failover": (0, INT64_MAX),  # bytes of WAL
    "max_timelines_history": (0, 100_000),  # 0: keep every entry
    # A negative start or stop timeout means the same as 0 to the code that reads it; crash recovery
    # of a large primary may take hours, so a day is the ceiling.
    "primary_start_timeout": (0, DAY),
    "primary_stop_timeout": (0, DAY),
    "synchronous_node_count": (1, 1000),
}
LEGACY_NAMES = {"primary_start_timeout": "master_start_timeout", "primary_stop_timeout": "master_stop_timeout"}
DYNAMIC_BOOLS = ("check_timeline", "pause", "synchronous_mode_strict", "failsafe_mode")
SLOT_KEYS = ("slots", "permanent_slots", "permanent_replication_slots", "ignore_slots", "member_slots_ttl")
DCS_USED = (*DYNAMIC_INT_BOUNDS, *LEGACY_NAMES.values(), *DYNAMIC_BOOLS, *UNSAFE_REASONS, *SLOT_KEYS, "postgresql")
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


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxdict, _SHORT_REPR.maxlist, _SHORT_REPR.maxstring = 2, 4, 4, 80
_SHORT_REPR.maxother = 80


def shown(value: Any, limit: int = 60) -> str:
    """A short repr for messages; user:password in URLs is masked.

    Bounded whatever the value: a huge or deeply nested one (from etcd, or an alias bomb) must not
    cost seconds, memory or a RecursionError just to be named in a warning.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        # repr() of an integer past 4300 digits raises ValueError; its size is what matters here
        text = f"<an integer of {value.bit_length()} bits>"
    elif isinstance(value, str):
        text = repr(value[: limit + 1])
    elif isinstance(value, dict | list | tuple | set):
        text = _SHORT_REPR.repr(value)
    else:
        text = repr(value)
    text = _URL_USERINFO.sub(r"\1:******@", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_secret_path(path: str) -> bool:
    parts = path.split(".")
    return parts[-1] in SECRET_KEYS or any(p in SECRET_CONTAINERS for p in parts)


# -- scalar converters ------------------------------------------------------------------


def to_str(value: Any) -> str:
    # YAML turns `password: 12345` into an int; accept that, but not bools (`yes` is rarely a name).
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= INT64_MAX:
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
    """An integer within 64 bits, from an int or a string of digits (environment variables, etcd)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value.strip())
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        raise Invalid(f"out of range (at most {INT64_MAX})", value)
    else:
        raise Invalid("expected an integer", value)
    if abs(number) > INT64_MAX:
        raise Invalid(f"out of range (at most {INT64_MAX})", value)
    return number


def int_between(minimum: int, maximum: int) -> Callable[[Any], int]:
    """A converter for integers from `minimum` to `maximum`, both included."""

    def convert(value: Any) -> int:
        number = to_int(value)
        if number < minimum:
            raise Invalid(f"must be at least {minimum}", value)
        if number > maximum:
            raise Invalid(f"must be at most {maximum}", value)
        return number

    return convert


def at_least(minimum: int) -> Callable[[Any], int]:
    """A converter for integers not below `minimum` (and within 64 bits, like every integer)."""
    return int_between(minimum, INT64_MAX)


def seconds_between(minimum: float, maximum: float) -> Callable[[Any], float]:
    """A converter for a finite duration in (possibly fractional) seconds within [minimum, maximum]."""

    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise Invalid("expected a number of seconds", value)
        if isinstance(value, str) and len(value) > 40:  # float() of a long digit string is slow and inf
            raise Invalid("expected a number of seconds", value)
        try:
            number = float(value)
        except (ValueError, OverflowError):  # float(10**400) overflows
            raise Invalid("expected a number of seconds", value) from None
        if not math.isfinite(number):
            raise Invalid("expected a finite number of seconds", value)
        if number < minimum:
            raise Invalid(f"must be at least {minimum:g}", value)
        if number > maximum:
            raise Invalid(f"must be at most {maximum:g}", value)
        return number

    return convert


def seconds_at_least(minimum: float) -> Callable[[Any], float]:
    """A converter for a duration of at least `minimum` seconds, and at most a day."""
    return seconds_between(minimum, DAY)


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


# -- PostgreSQL parameters ----------------------------------------------------------------

# A parameter name as PostgreSQL's configuration-file lexer reads one: an identifier, or two joined
# by a dot (an extension's parameter, e.g. pg_stat_statements.max). Anything else (`=`, spaces,
# quotes, a newline) could smuggle a second setting into postgresql.conf.
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}(\.[A-Za-z_][A-Za-z0-9_]{0,99})?")
# Directives of postgresql.conf, not parameters: `include = 'file'` would pull any file the postgres
# user can read into the server's configuration.
CONF_DIRECTIVES = frozenset({"include", "include_dir", "include_if_exists"})
MAX_PARAMETER_VALUE = 65536  # characters; the longest real values (archive_command, preload lists) are < 1 KiB


def parameter_problem(name: Any, value: Any) -> str | None:
    """Why `name: value` cannot be written into postgresql.conf, or None when it can."""
    if not isinstance(name, str) or not _PARAMETER_NAME.fullmatch(name):
        return "not a parameter name (letters, digits and _, with one dot for an extension's parameter)"
    if name.lower() in CONF_DIRECTIVES:
        return "a postgresql.conf directive, not a parameter"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if abs(value) <= INT64_MAX else f"out of range (at most {INT64_MAX})"
    if isinstance(value, float):
        return None if math.isfinite(value) else "expected a finite number"
    if isinstance(value, str):
        if "\0" in value:
            return "contains a NUL character"  # no configuration file can carry one
        if len(value) > MAX_PARAMETER_VALUE:
            return f"longer than {MAX_PARAMETER_VALUE} characters"
        return None
    return "expected a string, a number or a boolean"


# -- addresses --------------------------------------------------------------------------


def _port(text: str, value: Any, expected: str) -> int:
    # Not str.isdigit(): it accepts digits such as '²' that int() then refuses.
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
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
    # A key with a newline, control character or megabytes of text must not break "one line per
    # problem": such a key is shown as a short repr.
    name = key if isinstance(key, str) and key.isprintable() and len(key) <= 100 else shown(key)
    return f"{prefix}.{name}" if prefix else str(name)


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
        notes.append(f"{path}: {exc.render(show_value=not is_secret_path(path))}; using {shown(default)}")
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # Converters raise only Invalid by design; this keeps a running node going if one slips.
        notes.append(f"{path}: unreadable value ({type(exc).__name__}); using {shown(default)}")
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
            parsed = load_yaml(value)
        except (yaml.YAMLError, RecursionError):
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


# -- YAML with limits ------------------------------------------------------------------------
# PyYAML's safe loader still parses without bounds: aliases expand without limit, nesting recurses
# until RecursionError, a second `authentication:` silently replaces the first, 10**400 and .inf
# are taken as numbers, and a few bad scalars (the date 2024-13-01) escape as plain exceptions.
# This loader refuses each of those with the line it happened on.

_MERGE_TAG = "tag:yaml.org,2002:merge"
_LONGEST_INTEGER = 80  # characters: room for 64 bits in binary with underscores, not for int()'s slow path


class YamlRefused(yaml.MarkedYAMLError):
    """A document broke one of the loader's limits or rules; `problem` says which, `problem_mark` where."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _BoundedComposer(Composer):
    """Builds the node graph with depth, size and alias limits checked as each event arrives, so a
    hostile document is refused after at most MAX_YAML_VALUES values have been read."""

    peek_event: Callable[[], Any]  # from the event source it is mixed with

    def _start_bounds(self) -> None:
        self._depth = 0
        self._values = 0
        self._chars = 0
        # anchor -> (values, scalar characters) of what it names, counted with its own aliases expanded
        self._anchored: dict[Any, tuple[int, int]] = {}
        # mapping node -> its pairs as written: a merge key (<<) later rewrites node.value in place
        self.written_pairs: dict[Node, list[tuple[Node, Node]]] = {}

    def _grow(self, values: int, chars: int, mark: Any, alias: bool) -> None:
        self._values += values
        self._chars += chars
        if self._values > MAX_YAML_VALUES or self._chars > MAX_CONFIG_BYTES:
            what = "YAML aliases expand the document to" if alias else "the document holds"
            raise YamlRefused(f"{what} more than {MAX_YAML_VALUES} values or {MAX_CONFIG_BYTES} characters", mark)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            size = self._anchored.get(event.anchor)
            if size is None and event.anchor in self.anchors:
                # A value containing itself: every walk of it (merge, copy, JSON) would never end.
                raise YamlRefused(f"alias {shown(event.anchor)} is used inside the value it names",
                                  event.start_mark)
            if size is not None:
                self._grow(*size, event.start_mark, alias=True)
            return super().compose_node(parent, index)  # an undefined alias fails there
        if self._depth >= MAX_YAML_DEPTH:
            raise YamlRefused(f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        values, chars = self._values, self._chars
        self._grow(1, len(event.value) if isinstance(event, ScalarEvent) else 0, event.start_mark, alias=False)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if event.anchor is not None:
            self._anchored[event.anchor] = (self._values - values, self._chars - chars)
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        self.written_pairs[node] = list(node.value)
        return node


class _StrictConstructor(SafeConstructor):
    """SafeConstructor that refuses duplicate keys, integers beyond 64 bits and non-finite floats."""

    written_pairs: dict[Node, list[tuple[Node, Node]]]

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, ArithmeticError):
            # The exception's text may quote the value, and the value may be a password.
            raise YamlRefused(f"cannot read this value as {node.tag.rpartition(':')[2]}", node.start_mark) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            self._refuse_duplicates(node)
        return super().construct_mapping(node, deep)

    def _refuse_duplicates(self, node: MappingNode) -> None:
        # Patroni's loader keeps the last of two equal keys: a second `authentication:` that lacks a
        # password would silently turn REST authentication off. Merged keys (<<) may be overridden.
        first: dict[Any, Any] = {}
        pairs: list[tuple[Node, Node]] = self.written_pairs.get(node) or list(node.value)
        for key_node, _ in pairs:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            earlier: Any = first.setdefault(key, key_node.start_mark)
            if earlier is not key_node.start_mark:
                raise YamlRefused(f"duplicate key {shown(key)} (first at line {earlier.line + 1})",
                                  key_node.start_mark)

    def construct_strict_int(self, node: ScalarNode) -> int:
        if len(str(node.value)) > _LONGEST_INTEGER:
            raise YamlRefused(_INTEGER_TOO_LARGE, node.start_mark)
        number: int = self.construct_yaml_int(node)
        if abs(number) > INT64_MAX:
            raise YamlRefused(_INTEGER_TOO_LARGE, node.start_mark)
        return number

    def construct_finite_float(self, node: ScalarNode) -> float:
        number: float = self.construct_yaml_float(node)
        if not math.isfinite(number):
            raise YamlRefused("not a finite number (.inf, .nan and overflowing numbers are refused)",
                              node.start_mark)
        return number


    def construct_timestamp_text(self, node: ScalarNode) -> str:
        # Kept as written: the configuration travels as JSON (IPC, etcd, the member key's tags), which
        # has no dates, and a date object there crashed whoever encoded it.
        return str(self.construct_scalar(node))


_INTEGER_TOO_LARGE = "integer out of range (more than 64 bits); quote it if it is meant as a string"
_StrictConstructor.add_constructor(  # type: ignore[type-var]
    "tag:yaml.org,2002:timestamp", _StrictConstructor.construct_timestamp_text)
_StrictConstructor.add_constructor(  # type: ignore[type-var]
    "tag:yaml.org,2002:int", _StrictConstructor.construct_strict_int)
_StrictConstructor.add_constructor(  # type: ignore[type-var]
    "tag:yaml.org,2002:float", _StrictConstructor.construct_finite_float)


class _BoundedLoader(_BoundedComposer, _EventSource, _StrictConstructor, Resolver):
    def __init__(self, stream: str) -> None:
        _EventSource.__init__(self, stream)
        Composer.__init__(self)
        _StrictConstructor.__init__(self)
        Resolver.__init__(self)
        self._start_bounds()


def load_yaml(text: str) -> Any:
    """One YAML document, parsed within hasup's limits (depth, values, aliases, 64-bit integers,
    finite floats, unique keys). Raises yaml.YAMLError; YamlRefused when a limit was reached."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _position(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"


def _too_large(source: str, size: int) -> str:
    return f"{source}: {size} bytes, more than the {MAX_CONFIG_BYTES} a configuration may have"


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    if len(text) > MAX_CONFIG_BYTES:
        raise SourceError([_too_large(source, len(text.encode("utf-8", "replace")))])
    try:
        data = load_yaml(text)
    except YamlRefused as exc:
        raise SourceError([f"{source}: {_position(exc.problem_mark)}: {exc.problem}"]) from None
    except yaml.MarkedYAMLError as exc:
        # Only the position and the parser's complaint: the offending line may hold a password.
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({exc.context} at line {exc.context_mark.line + 1})" if exc.context and exc.context_mark else ""
        raise SourceError([f"{source}: invalid YAML{where}: {exc.problem}{context}"]) from None
    except (yaml.YAMLError, RecursionError):
        raise SourceError([f"{source}: invalid YAML"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SourceError([f"{source}: expected a mapping at the top level"])
    return data


def _read_text(path: str) -> str:
    """The file's text; refused before reading when it is not a regular file or is too large."""
    try:
        # Non-blocking, so that opening a FIFO does not wait for a writer; fstat then says what it is.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError([f"{path}: cannot read ({exc.strerror})"]) from None
    except ValueError:  # a NUL in the path
        raise SourceError([f"{path!r}: cannot read (not a valid path)"]) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SourceError([f"{path}: cannot read (not a regular file)"])
        if info.st_size > MAX_CONFIG_BYTES:
            raise SourceError([_too_large(path, info.st_size)])
        try:
            # Read one byte past the limit: a file that grew since fstat is caught too.
            data = handle.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise SourceError([f"{path}: cannot read ({exc.strerror})"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise SourceError([_too_large(path, len(data))])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError([f"{path}: cannot read (not UTF-8 text)"]) from None


def _read_path(path: str) -> dict[str, Any]:
    """One file, or every *.yml / *.yaml file of a directory merged in name order (later wins)."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith((".yml", ".yaml")))
        files = [p for p in (os.path.join(path, n) for n in names) if os.path.isfile(p)]
    else:
        files = [path]
    merged: dict[str, Any] | None = None
    problems: list[str] = []
    total = 0
    for name in files:
        try:
            text = _read_text(name)
            total += len(text)
            if total > MAX_CONFIG_BYTES:
                # Each file may be small, yet together they are one configuration.
                problems.append(f"{path}: its YAML files hold more than the {MAX_CONFIG_BYTES} bytes "
                                "a configuration may have")
                break
            data = parse_yaml(text, name)
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
