"""The policy's fixed inputs, from this node's configuration and the dynamic configuration in force."""

from __future__ import annotations

from dataclasses import replace

from hasup.config import Config, DynamicConfig
from hasup.config.methods import methods_to_try
from hasup.config.values import Invalid, to_bool
from hasup.election.policy import Node, Settings
from hasup.timing import Deadlines


def node_of(cfg: Config) -> Node:
    tags = cfg.tags
    source = tags.raw.get("replicatefrom")
    pg = cfg.postgresql
    try:
        nostream = bool(to_bool(tags.raw.get("nostream") or False))
    except Invalid:
        nostream = False  # as Patroni: a value it cannot read as a boolean is no tag
    return Node(cfg.name, tags.nofailover, tags.failover_priority,
                str(source) if isinstance(source, str) and source else None,
                clone_without_leader=bool(methods_to_try(pg.create_replica_methods, pg.replica_methods,
                                                         have_source=False)),
                nostream=nostream)


def settings_of(d: DynamicConfig, cfg: Config) -> Settings:
    pgc = cfg.postgresql
    if d.standby_cluster:
        # Nobody commits in a standby cluster, so nobody waits for a synchronous standby (as in Patroni):
        # a /sync key left from its days as a primary cluster must not keep members out of the race.
        d = replace(d, synchronous_mode=False, synchronous_mode_strict=False)
    return Settings(d.ttl, d.loop_wait, d.retry_timeout, d.maximum_lag_on_failover, d.check_timeline,
                    d.use_pg_rewind if pgc.use_pg_rewind is None else pgc.use_pg_rewind, pgc.health_deadline,
                    d.primary_start_timeout, d.synchronous_mode, d.synchronous_mode_strict, d.synchronous_node_count,
                    d.failsafe_mode, standby_cluster=bool(d.standby_cluster), quorum_commit=d.quorum_commit,
                    maximum_lag_on_syncnode=d.maximum_lag_on_syncnode)


def deadlines_of(d: DynamicConfig, cfg: Config) -> Deadlines:
    return Deadlines.of(d.ttl, d.loop_wait, d.retry_timeout, cfg.watchdog.safety_margin, cfg.postgresql.health_deadline)
