"""The dynamic configuration: the cluster-wide settings kept in etcd's `config` key.

`parse_dynamic` reads them leniently, the way a running node must: within the same bounds as the
file, and never raising; `dynamic_problems` lists what it would have to adjust (PATCH /config);
`check_dcs` checks them strictly where they seed the cluster (bootstrap.dcs); `initial_dcs_config`
is what a bootstrapping node writes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hasup.config.model import Config
from hasup.config.schema import (
    DCS_PG_USED,
    DCS_USED,
    DYNAMIC_BOOLS,
    DYNAMIC_INT_BOUNDS,
    LEGACY_NAMES,
    UNSAFE_REASONS,
    UNSUPPORTED,
    Reader,
    lenient,
)
from hasup.config.slot_settings import parse_slot_settings
from hasup.config.standby import is_standby, to_standby_cluster
from hasup.config.values import (
    int_between,
    join_key,
    parameter_problem,
    shown,
    to_bool,
    to_int,
    to_mapping,
    to_str_list,
    to_sync_mode,
)


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
    quorum_commit: bool = False  # synchronous_mode: quorum (hasup.election.quorum)
    maximum_lag_on_syncnode: int = -1  # bytes; a standby further behind is not chosen as synchronous
    failsafe_mode: bool = False
    pause: bool = False
    use_pg_rewind: bool = False
    use_slots: bool = True
    parameters: dict[str, Any] = field(default_factory=dict)  # postgresql.parameters (dynamic)
    pg_hba: tuple[str, ...] | None = None  # postgresql.pg_hba (dynamic); a local pg_hba wins
    # Set (with a host, port or restore_command) makes this a standby cluster (hasup.config.standby).
    standby_cluster: dict[str, Any] | None = None


_DEFAULTS = DynamicConfig()


def refuse_unsafe(r: Reader, section: Mapping[str, Any], prefix: str) -> None:
    """A safety setting hasup cannot honour yet is an error when set; a falsy value is fine."""
    for key, reason in UNSAFE_REASONS.items():
        value = section.get(key)
        if value is None:
            continue
        path = join_key(prefix, key)
        convert: Callable[[Any], Any] = to_bool
        if key == "standby_cluster":
            if prefix == "" and is_standby(r.convert(path, value, to_mapping)):
                r.problem(path, reason)
            continue  # under bootstrap.dcs: checked with the other dynamic settings
        if r.convert(path, value, convert):
            r.problem(path, f"{UNSUPPORTED}; {reason}")


def check_dcs(r: Reader, dcs: Mapping[str, Any], prefix: str) -> None:
    """Strict checks of the initial dynamic configuration; the dict itself is kept as given."""
    refuse_unsafe(r, dcs, prefix)
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
    r.get(dcs, join_key(prefix, "synchronous_mode"), to_sync_mode, None)
    pg_path = join_key(prefix, "postgresql")
    pg = r.section(dcs, pg_path)
    r.get(dcs, join_key(prefix, "standby_cluster"), to_standby_cluster, None)
    r.get(pg, f"{pg_path}.use_pg_rewind", to_bool, None)
    r.get(pg, f"{pg_path}.use_slots", to_bool, None)
    read_parameters(r, pg, f"{pg_path}.parameters")
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


def read_parameters(r: Reader, section: Mapping[str, Any], path: str) -> dict[str, Any]:
    """postgresql.parameters: every name and value checked before it can reach postgresql.conf."""
    nothing: dict[str, Any] = {}
    given = r.get(section, path, to_mapping, nothing)
    for name, value in given.items():
        problem = parameter_problem(name, value)
        if problem is not None:
            # The name itself may be what is wrong (a newline, a quote): shown quoted, never as a key.
            r.problem(path, f"{shown(name)}: {problem}")
    return given


def _dynamic_int(source: Mapping[str, Any], key: str, notes: list[str]) -> int:
    legacy = LEGACY_NAMES.get(key)
    name = legacy if legacy and source.get(key) is None and source.get(legacy) is not None else key
    value = lenient(source, name, to_int, getattr(_DEFAULTS, key), notes)
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
    flags["synchronous_mode"] = bool(sync_mode)  # quorum is a flavour of synchronous mode
    standby: dict[str, Any] = lenient(raw, "standby_cluster", to_standby_cluster, {}, notes)
    pg: dict[str, Any] = lenient(raw, "postgresql", to_mapping, {}, notes)
    on: list[str] = []
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
        quorum_commit=sync_mode == "quorum",
        maximum_lag_on_syncnode=ints["maximum_lag_on_syncnode"],
        failsafe_mode=flags["failsafe_mode"],
        pause=flags["pause"],
        use_pg_rewind=lenient(pg, "postgresql.use_pg_rewind", to_bool, False, notes),
        use_slots=lenient(pg, "postgresql.use_slots", to_bool, True, notes),
        parameters=_dynamic_parameters(pg, notes),
        pg_hba=lenient(pg, "postgresql.pg_hba", to_str_list, None, notes),
        standby_cluster=standby if is_standby(standby) else None,
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
