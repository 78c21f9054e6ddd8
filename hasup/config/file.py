"""The local YAML file: its sections read into a `Config`, every problem reported at once.

`load_config` reads a file (or a directory of them) with the HASUP_/PATRONI_ environment
variables over it, checks every key hasup uses and returns a `Config` plus warning lines; every
problem is one line naming its key, all raised together in one `ConfigError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hasup.config.bootstrap import read_bootstrap
from hasup.config.dynamic import parse_dynamic, refuse_unsafe
from hasup.config.environment import effective_environment, env_overrides
from hasup.config.etcd import read_etcd
from hasup.config.log import read_log
from hasup.config.model import Config, ConfigError, Tags, VipConfig, WatchdogConfig
from hasup.config.postgresql import read_postgresql
from hasup.config.restapi import read_restapi
from hasup.config.schema import (
    IGNORED,
    PLACEHOLDER_NAME,
    TAGS_UNUSED,
    TOP_DYNAMIC_ONLY,
    TOP_USED,
    WATCHDOG_USED,
    Reader,
)
from hasup.config.sources import SourceError, deep_merge, parse_yaml, read_sources
from hasup.config.values import HOUR, int_between, to_bool, to_str, to_watchdog_mode
from hasup.config.vip import read_vip
from hasup.timing import Deadlines

_INT32_MAX = 2**31 - 1  # Patroni's tags are read by tools that keep them in a C int


def _identity(r: Reader, top: Mapping[str, Any]) -> tuple[str | None, str | None, str]:
    name = r.require(top, "name", to_str)
    if name == PLACEHOLDER_NAME:
        r.problem("name", "this name is reserved for Patroni's internal use")
    scope = r.require(top, "scope", to_str)
    # Stored without leading/trailing slashes; "/" alone means the etcd root, as in Patroni.
    namespace = "/".join(part for part in r.get(top, "namespace", to_str, "/service").split("/") if part)
    return name, scope, namespace


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


def _watchdog(r: Reader, top: Mapping[str, Any]) -> WatchdogConfig:
    sec = r.section(top, "watchdog")
    default = WatchdogConfig()
    # YAML reads `mode: off` as false, so a present-but-false value must not fall to the default.
    given = sec.get("mode")
    mode: str | None
    if given is True or isinstance(given, str) and given.strip().lower() in ("on", "true", "yes"):
        # YAML reads `mode: on` as true.  Whoever wrote it wanted the watchdog: use the device when there
        # is one, as automatic does, rather than run without it (Patroni turns it off) or refuse to start.
        r.warnings.append(f"watchdog.mode: {given!r} is not one of off, automatic, required; read as automatic")
        mode = "automatic"
    else:
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
        software_fence=r.get(sec, "watchdog.software_fence", to_bool, default.software_fence),
    )


def load_vip(path: str, env: Mapping[str, str] | None = None) -> VipConfig | None:
    """Only the vip section of the configuration at `path` (with the environment over it).

    For the ExecStopPost helper: it must remove the address even when some other part of
    the configuration was broken since hasup started.  Raises ConfigError for vip problems.
    """
    try:
        raw = read_sources(path, effective_environment(env))
    except SourceError as exc:
        raise ConfigError(exc.problems) from None
    r = Reader()
    vip = read_vip(r, raw)
    if r.problems:
        raise ConfigError(r.problems)
    return vip


def build_config(raw: Mapping[str, Any]) -> tuple[Config, list[str]]:
    """Validate a merged raw configuration; every problem is collected before ConfigError is raised."""
    r = Reader()
    r.ignore_rest(raw, "", TOP_USED, dynamic_only=TOP_DYNAMIC_ONLY)
    name, scope, namespace = _identity(r, raw)
    refuse_unsafe(r, raw, "")
    restapi = read_restapi(r, raw)
    etcd = read_etcd(r, raw)
    bootstrap = read_bootstrap(r, raw)
    postgresql = read_postgresql(r, raw)
    tags, log, watchdog, vip = _tags(r, raw), read_log(r, raw), _watchdog(r, raw), read_vip(r, raw)
    dynamic, timing = parse_dynamic(bootstrap.dcs)  # only the timing rule can still warn after strict checks
    if postgresql is not None:
        # The deadline rules this file alone decides; those on the cluster's timing are checked (and
        # logged) by the supervisor, since etcd's values, not bootstrap.dcs, are the ones in force.
        deadlines = Deadlines.of(dynamic.ttl, dynamic.loop_wait, dynamic.retry_timeout, watchdog.safety_margin,
                                 postgresql.health_deadline)
        r.problems.extend(deadlines.static_problems())
    if r.problems or name is None or scope is None or restapi is None or etcd is None or postgresql is None:
        raise ConfigError(r.problems or ["configuration: incomplete"])
    config = Config(scope, namespace, name, restapi, etcd, bootstrap, postgresql, tags, log, watchdog, dict(raw),
                    vip)
    return config, r.warnings + [f"bootstrap.dcs: {line}" for line in timing]


def load_config(path: str, env: Mapping[str, str] | None = None) -> tuple[Config, list[str]]:
    """Read, merge and validate the configuration at `path` (a file or a directory).

    `env` defaults to the variables `take_environment` saved, else `os.environ`.
    Returns the config and warning lines; raises ConfigError listing every problem.
    """
    try:
        raw = read_sources(path, effective_environment(env))
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
