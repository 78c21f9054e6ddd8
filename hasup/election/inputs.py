"""The policy's fixed inputs, from this node's configuration and the dynamic configuration in force."""

from __future__ import annotations

from hasup.config import Config, DynamicConfig
from hasup.config.values import Invalid, to_bool
from hasup.election.policy import Node, Settings
from hasup.timing import Deadlines


def node_of(cfg: Config) -> Node:
    tags = cfg.tags
    source = tags.raw.get("replicatefrom")
    try:
        nostream = bool(to_bool(tags.raw.get("nostream") or False))
    except Invalid:
        nostream = False  # as Patroni: a value it cannot read as a boolean is no tag
    return Node(cfg.name, tags.nofailover, tags.failover_priority,
                str(source) if isinstance(source, str) and source else None, nostream)


def settings_of(d: DynamicConfig, cfg: Config) -> Settings:
    pgc = cfg.postgresql
    return Settings(d.ttl, d.loop_wait, d.retry_timeout, d.maximum_lag_on_failover, d.check_timeline,
                    d.use_pg_rewind if pgc.use_pg_rewind is None else pgc.use_pg_rewind, pgc.health_deadline,
                    d.primary_start_timeout, d.synchronous_mode, d.synchronous_mode_strict, d.synchronous_node_count,
                    d.failsafe_mode, quorum_commit=d.quorum_commit,
                    maximum_lag_on_syncnode=d.maximum_lag_on_syncnode)


def deadlines_of(d: DynamicConfig, cfg: Config) -> Deadlines:
    return Deadlines.of(d.ttl, d.loop_wait, d.retry_timeout, cfg.watchdog.safety_margin, cfg.postgresql.health_deadline)
