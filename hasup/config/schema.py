"""Which keys of Patroni's YAML hasup reads, and the Reader that checks them.

The tables say which keys hasup reads in each section, their bounds, which ones are safety
settings it must refuse, and which options it owns; `Reader` applies the converters of
`hasup.config.values` to a section's keys and collects every problem and warning, so all can be
reported at once, one line each, each starting with its dotted key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from hasup.config.values import DAY, HOUR, INT64_MAX, Invalid, is_secret_path, join_key, leaf, shown, to_mapping

T = TypeVar("T")

# A member name Patroni reserves for itself (strict synchronous mode's placeholder).
PLACEHOLDER_NAME = "__patroni_strict_sync_replica_placeholder__"

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

# Why each safety setting cannot simply be ignored (docs/design.md §7): running without it would
# silently weaken a promise the operator asked for.
UNSAFE_REASONS = {
    # Read from bootstrap.dcs and the dynamic configuration only (as Patroni); at the top level of the file it
    # would be silently ignored, and the cluster bootstrapped as a primary instead of a standby.
    "standby_cluster": "only read from bootstrap.dcs (then the dynamic configuration); refusing to start rather "
                       "than bootstrap a primary cluster instead of a standby",
}

# Integer dynamic settings: (minimum, maximum). hasup's ttl minimum is 10, not Patroni's 20: its
# lease keepalive runs in a worker that a slow PostgreSQL cannot starve (docs/design.md §7). The maxima
# are far beyond any sane cluster (Patroni has none): they exist so that no value written to etcd
# or the file can overflow a deadline computation, a sleep or a device timeout (docs/design.md §11).
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
    "maximum_lag_on_syncnode": (-INT64_MAX, INT64_MAX),  # bytes of WAL; 0 or less: no limit
}
LEGACY_NAMES = {"primary_start_timeout": "master_start_timeout", "primary_stop_timeout": "master_stop_timeout"}
DYNAMIC_BOOLS = ("check_timeline", "pause", "synchronous_mode_strict", "failsafe_mode")
DYNAMIC_OTHER = ("synchronous_mode",)  # on, off or quorum (values.to_sync_mode)
SLOT_KEYS = ("slots", "permanent_slots", "permanent_replication_slots", "ignore_slots", "member_slots_ttl")
DCS_USED = (*DYNAMIC_INT_BOUNDS, *LEGACY_NAMES.values(), *DYNAMIC_BOOLS, *DYNAMIC_OTHER, *UNSAFE_REASONS, *SLOT_KEYS,
            "postgresql")
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
    "callbacks", "callback_timeout", "pre_promote", "before_stop",
    "remove_data_directory_on_rewind_failure", "remove_data_directory_on_diverged_timelines",
    # Replica creation and recovery (hasup/config/methods.py); each custom method's own section is
    # read too, under the method's name.
    "create_replica_methods", "create_replica_method", "recovery_conf",
)
# postgresql.callbacks.<action>, each a command line (hasup/postgresql/callbacks.py).
CALLBACK_ACTIONS = ("on_start", "on_stop", "on_restart", "on_reload", "on_role_change")
TAGS_UNUSED: tuple[str, ...] = ()  # Patroni tags hasup publishes but ignores
LOG_USED = (
    "type", "level", "traceback_level", "format", "dateformat", "static_fields", "dir", "mode", "file_num",
    "file_size", "loggers",
)
VIP_USED = ("address", "prefix", "netmask", "broadcast", "interface", "label")
WATCHDOG_USED = ("mode", "device", "safety_margin", "driver", "software_fence")


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
