"""Restore methods: replica creation methods, a custom bootstrap method and recovery settings.

`postgresql.create_replica_methods` names, in order, how a replica's data directory is built:
`basebackup` (built in) or a method with its own section `postgresql.<method>`.  `bootstrap.method`
names a section `bootstrap.<method>` whose command restores a new cluster's data directory.
`recovery_conf` sections hold recovery parameters (restore_command, recovery_target_*, ...).
Keys of a method section that are not its settings are passed to its command as `--key=value`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hasup.config.schema import Reader
from hasup.config.values import DAY, Invalid, join_key, seconds_between, shown, to_bool, to_command, to_str

BASEBACKUP = "basebackup"
# hasup's own key of a method section (Patroni has none, so a Patroni config never sets it): how long
# the command may run before its whole process group is killed and the next method is tried.  The
# name carries the prefix so that it cannot take away an argument a Patroni-era script expects.
TIMEOUT_KEY = "hasup_timeout"
# A restore may legitimately take many hours; a hung one only keeps this node from joining (the
# leader and the other replicas go on, and a shutdown kills it at once), so the default is generous.
DEFAULT_METHOD_TIMEOUT = float(DAY)
MAX_METHOD_TIMEOUT = 30.0 * DAY
MAX_METHODS = 16
# The settings of a replica method's section; every other key becomes an argument.
REPLICA_METHOD_SETTINGS = ("command", "keep_data", "no_leader", "no_params", TIMEOUT_KEY)
# The settings of a custom bootstrap section; `scope` and `datadir` are hasup's arguments to give.
BOOTSTRAP_METHOD_SETTINGS = ("command", "keep_existing_recovery_conf", "recovery_conf", "no_params", TIMEOUT_KEY)
BOOTSTRAP_RESERVED_ARGS = ("scope", "datadir")

_METHOD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,62}")
_ARG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
MAX_ARG_VALUE = 4096

# Recovery parameters of PostgreSQL 12 and later that a recovery_conf section may set.
RECOVERY_PARAMETERS = frozenset({
    "restore_command", "archive_cleanup_command", "recovery_end_command", "recovery_min_apply_delay",
    "recovery_target", "recovery_target_action", "recovery_target_inclusive", "recovery_target_lsn",
    "recovery_target_name", "recovery_target_time", "recovery_target_timeline", "recovery_target_xid",
})
# Recovery parameters hasup sets itself (a replica streams from the leader it follows).
MANAGED_RECOVERY = frozenset({"primary_conninfo", "primary_slot_name", "standby_mode"})
# Older spellings: PostgreSQL 16 removed the trigger file and hasup promotes with pg_ctl anyway.
OBSOLETE_RECOVERY = frozenset({"trigger_file", "promote_trigger_file"})
MAX_RECOVERY_VALUE = 8192
_TARGET_ACTIONS = ("pause", "promote", "shutdown")


@dataclass(frozen=True)
class ReplicaMethod:
    """One way to build a replica's data directory (`postgresql.<name>`)."""

    name: str
    command: str
    keep_data: bool = False  # leave whatever is in the data directory before and after a failed run
    no_leader: bool = False  # may run while the cluster has no leader (restores from a backup store)
    no_params: bool = False  # pass only the section's own arguments, not scope/role/datadir/connstring
    timeout: float = DEFAULT_METHOD_TIMEOUT
    # Every other key of the section, in the order given, as (name, value) for `--name=value`.
    arguments: tuple[tuple[str, str], ...] = ()
    # The flags given in the section (keep_data, no_leader, no_params) as Patroni passes them too.
    given_flags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BootstrapMethod:
    """A custom `bootstrap.method`: a command that restores the new cluster's data directory."""

    name: str
    command: str
    keep_existing_recovery_conf: bool = False
    recovery_conf: dict[str, Any] | None = None  # None: not given (then the restored settings decide)
    no_params: bool = False
    timeout: float = DEFAULT_METHOD_TIMEOUT
    arguments: tuple[tuple[str, str], ...] = field(default=())


def methods_to_try(names: Sequence[str], methods: Mapping[str, ReplicaMethod], have_source: bool) -> list[str]:
    """The replica methods to try, in order; without a member to clone from, only those marked no_leader."""
    if have_source:
        return list(names)
    return [n for n in names if n != BASEBACKUP and n in methods and methods[n].no_leader]


def argument_value(value: Any) -> str:
    """A section value as its command sees it; booleans as Python spells them, like Patroni."""
    if not isinstance(value, bool | str | int | float):
        raise Invalid("expected a string, a number or a boolean", value)
    text = str(value)
    if "\0" in text or len(text) > MAX_ARG_VALUE:
        raise Invalid(f"expected at most {MAX_ARG_VALUE} characters without NUL", value)
    return text


def _arguments(r: Reader, section: Mapping[str, Any], path: str, settings: tuple[str, ...],
               skip: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    result = []
    for key, value in section.items():
        if key in settings or key in skip:
            continue
        where = join_key(path, key)
        if not isinstance(key, str) or not _ARG_NAME.fullmatch(key):
            r.problem(where, "not an argument name (letters, digits, '_', '.', '-')")
            continue
        if value is None:
            continue
        text = r.convert(where, value, argument_value)
        if text is not None:
            result.append((key, text))
    return tuple(result)


def _timeout(r: Reader, section: Mapping[str, Any], path: str) -> float:
    return r.get(section, f"{path}.{TIMEOUT_KEY}", seconds_between(1, MAX_METHOD_TIMEOUT), DEFAULT_METHOD_TIMEOUT)


def to_method_list(value: Any) -> tuple[str, ...]:
    """create_replica_methods: a list (or one name) of distinct method names."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise Invalid("expected a non-empty list of method names", value)
    if len(items) > MAX_METHODS:
        raise Invalid(f"at most {MAX_METHODS} methods", value)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str) or not _METHOD_NAME.fullmatch(item):
            raise Invalid(f"{shown(item)} is not a method name (letters, digits, '_' and '-')", value)
        if item in names:
            raise Invalid(f"method {item!r} listed twice", value)
        names.append(item)
    return tuple(names)


def read_replica_methods(
    r: Reader, sec: Mapping[str, Any], reserved: tuple[str, ...]
) -> tuple[tuple[str, ...], dict[str, ReplicaMethod]]:
    """The ordered method names and the settings of each custom one (`reserved`: the section's own keys,
    which cannot name a method)."""
    names: tuple[str, ...] = (BASEBACKUP,)
    for key in ("create_replica_methods", "create_replica_method"):  # the second: Patroni's older spelling
        if sec.get(key) is not None:
            names = r.get(sec, f"postgresql.{key}", to_method_list, names)
            break
    methods: dict[str, ReplicaMethod] = {}
    for name in names:
        if name == BASEBACKUP:
            continue  # its section holds pg_basebackup's options (postgresql.basebackup)
        path = f"postgresql.{name}"
        if name in reserved:
            r.problem("postgresql.create_replica_methods", f"{name!r} is a key of the postgresql section, "
                      "not a method name")
            continue
        method = read_replica_method(r, sec.get(name), path, name)
        if method is not None:
            methods[name] = method
    return names, methods


def read_replica_method(r: Reader, raw: Any, path: str, name: str) -> ReplicaMethod | None:
    if raw is None:
        raw = {}  # as in Patroni: without a section the method's name is the command
    section = r.convert(path, raw, _mapping)
    if section is None:
        return None
    command = r.get(section, f"{path}.command", to_command, name)
    flags = {flag: r.get(section, f"{path}.{flag}", to_bool, False) for flag in ("keep_data", "no_leader", "no_params")}
    given = tuple((flag, str(flags[flag])) for flag in ("keep_data", "no_leader", "no_params")
                  if section.get(flag) is not None)
    return ReplicaMethod(name, command, flags["keep_data"], flags["no_leader"], flags["no_params"],
                         _timeout(r, section, path), _arguments(r, section, path, REPLICA_METHOD_SETTINGS), given)


def read_bootstrap_method(r: Reader, sec: Mapping[str, Any], name: str) -> BootstrapMethod | None:
    path = f"bootstrap.{name}"
    section = r.convert(path, sec.get(name), _mapping) if sec.get(name) is not None else None
    if section is None:
        # Running initdb instead would create an empty cluster where a restore was asked for.
        r.problem("bootstrap.method", f"{name!r} needs a section bootstrap.{name} with its command")
        return None
    command = r.require(section, f"{path}.command", to_command)
    recovery = None
    if section.get("recovery_conf") is not None:
        recovery = read_recovery_conf(r, section, f"{path}.recovery_conf", targets=True)
    method = BootstrapMethod(
        name=name,
        command=command or "",
        keep_existing_recovery_conf=r.get(section, f"{path}.keep_existing_recovery_conf", to_bool, False),
        recovery_conf=recovery,
        no_params=r.get(section, f"{path}.no_params", to_bool, False),
        timeout=_timeout(r, section, path),
        arguments=_arguments(r, section, path, BOOTSTRAP_METHOD_SETTINGS, BOOTSTRAP_RESERVED_ARGS),
    )
    return method if command else None


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid("expected a mapping", value)
    return value


# -- recovery parameters -------------------------------------------------------------------


def _recovery_value(name: str, value: Any) -> Any:
    if name == "recovery_target_inclusive":
        return to_bool(value)
    if name == "recovery_min_apply_delay":
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= 2147483647:
                raise Invalid("expected 0 to 2147483647 (milliseconds)", value)
            return value
        text = to_str(value).strip()
        if not re.fullmatch(r"[0-9]{1,10}\s*(us|ms|s|min|h|d)?", text):
            raise Invalid("expected a duration such as 5min or 300000 (milliseconds)", value)
        return text
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Invalid("expected a string", value)
    text = str(value)
    if "\0" in text or len(text) > MAX_RECOVERY_VALUE:
        raise Invalid(f"expected at most {MAX_RECOVERY_VALUE} characters without NUL", value)
    if name == "recovery_target" and text not in ("immediate", ""):
        raise Invalid("expected 'immediate'", value)
    if name == "recovery_target_action" and text not in _TARGET_ACTIONS:
        raise Invalid(f"expected one of {', '.join(_TARGET_ACTIONS)}", value)
    return text


def read_recovery_conf(r: Reader, parent: Mapping[str, Any], path: str, targets: bool) -> dict[str, Any]:
    """A recovery_conf section, checked: names PostgreSQL 12+ knows, bounded values.  Without
    `targets` (a replica's), recovery_target_* keys are dropped with a warning: a replica follows its
    leader's timeline to the end."""
    section = r.section(parent, path)
    result: dict[str, Any] = {}
    for key, value in section.items():
        where = join_key(path, key)
        name = key.lower() if isinstance(key, str) else key
        if name == "pause_at_recovery_target":  # the pre-9.5 spelling of recovery_target_action
            flag = r.convert(where, value, to_bool)
            if flag is not None:
                result.setdefault("recovery_target_action", "pause" if flag else "promote")
            continue
        if name in MANAGED_RECOVERY:
            r.warn(where, "set by hasup, ignored")
            continue
        if name in OBSOLETE_RECOVERY:
            r.warn(where, "not used: hasup promotes with pg_ctl promote, ignored")
            continue
        if name not in RECOVERY_PARAMETERS:
            r.warn(where, "not a recovery parameter of PostgreSQL 12 or later, ignored")
            continue
        if value is None:
            continue
        if not targets and name.startswith("recovery_target"):
            r.warn(where, "a replica follows its leader's timeline; recovery targets apply to "
                          "bootstrap.<method>.recovery_conf only, ignored")
            continue
        converted = r.convert(where, value, functools.partial(_recovery_value, name))
        if converted is not None:
            result[name] = converted
    return result
