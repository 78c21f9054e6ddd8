"""Carrying out the policy's actions: etcd writes, requests to the postgres worker, leases, the supervisor.

Nothing here decides.  `run` takes a Decision's actions in order and stops
at the first failure that matters (hasup.election.actions: best-effort
ones are logged and passed over).
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from hasup import ipc
from hasup.config import Config, DynamicConfig, initial_dcs_config
from hasup.config.standby import REMOTE, remote_url
from hasup.dcs.model import Cluster
from hasup.dcs.store import DCSError, Store
from hasup.election import actions as act
from hasup.election.failsafe import Failsafe
from hasup.election.inputs import node_of
from hasup.election.leases import WatchdogLeases
from hasup.election.member import member_data, recorded_history, with_protection
from hasup.election.postgres_link import PostgresLink
from hasup.postgresql.slots import handover_value, slot_name, status_value

log = logging.getLogger("hasup.election")

EXIT_FATAL = 3  # the supervisor stops the node and exits 1: retrying cannot help


class Executor:
    def __init__(self, config: Callable[[], Config], store: Store, link: PostgresLink, leases: WatchdogLeases,
                 failsafe: Failsafe, send: Callable[[ipc.Message], object],
                 dynamic: Callable[[], DynamicConfig],
                 known_config: Callable[[], dict[str, Any]] = dict) -> None:
        self.config = config  # a reload replaces it (tags published in the member key)
        self.store, self.link, self.leases, self.failsafe = store, link, leases, failsafe
        self.send = send
        self.dynamic = dynamic
        self.known_config = known_config  # the dynamic configuration last read from etcd or the local cache
        self.status_written: dict[str, Any] | None = None  # the status key as last written, to skip repeats
        self.sync_written: tuple[tuple[str, ...], int | None] | None = None

    def run(self, actions: tuple[act.Action, ...], cluster: Cluster | None) -> bool:
        """Carry out the actions in order; False when one failed and stopped the rest."""
        for action in actions:
            if not self.execute(action, cluster) and not action.best_effort:
                return False
        return True

    def execute(self, action: act.Action, cluster: Cluster | None) -> bool:
        try:
            return self._execute(action, cluster)
        except DCSError as exc:
            log.error("etcd write failed (%s): %s", type(action).__name__, exc)
            if isinstance(action, act.AcquireLock | act.RefreshLock | act.TakeLock):
                self.leases.expire()
            return False

    def _execute(self, action: act.Action, cluster: Cluster | None) -> bool:
        name, ttl = self.config().name, self.dynamic().ttl
        if isinstance(action, act.AcquireLock | act.RefreshLock | act.TakeLock):
            return self.lock(action, ttl, cluster is not None and cluster.paused)
        if isinstance(action, act.ReleaseLock | act.YieldLock):
            self.leases.expire()
            self.store.delete_leader(name)
        elif isinstance(action, act.ClaimInitialize):
            if not self.store.claim_initialize():
                log.info("failed to acquire initialize lock")
                return False
        elif isinstance(action, act.PublishInitialize):
            self.store.set_initialize(action.sysid)
        elif isinstance(action, act.DeleteInitialize):
            self.store.delete_initialize()
        elif isinstance(action, act.WriteInitialConfig):
            self.store.set_config(initial_dcs_config(self.config()))
        elif isinstance(action, act.RepublishConfig):
            config = self.known_config() or initial_dcs_config(self.config())
            log.warning("the config key is missing from etcd: writing back the dynamic configuration in force")
            self.store.set_config(config)
        elif isinstance(action, act.ClearFailover):
            if cluster is not None and cluster.failover is not None:
                self.store.clear_failover(cluster.failover_index)
        elif isinstance(action, act.RecordHandOver):
            previous = self.status_written or (cluster.status if cluster else None)
            self.store.set_status(handover_value(action.lsn, previous, self.own_slot()))
            self.status_written = None
        elif isinstance(action, act.WriteStatus):
            self.write_status(cluster)
        elif isinstance(action, act.WriteHistory):
            self.write_history(cluster)
        elif isinstance(action, act.WriteFailsafe):
            self.store.set_failsafe(dict(action.members))
            self.failsafe.members = dict(action.members)  # etcd may be gone before we read it back
        elif isinstance(action, act.WriteSync):
            written = (action.standbys, action.quorum)
            if written != self.sync_written:
                log.info("synchronous standbys: %s%s", ", ".join(action.standbys) or "none",
                         f" (quorum {action.quorum})" if action.quorum is not None else "")
            self.store.set_sync(name, action.standbys, action.quorum)
            self.sync_written = written
        elif isinstance(action, act.ClearSync):
            self.store.delete_sync()
        elif isinstance(action, act.FencePostgres):
            pg = self.link.pg
            self.send(ipc.Fence(pg.postmaster_pid if pg is not None else None,
                                "it did not answer probes within postgresql.health_deadline"))
        elif isinstance(action, act.Disarm):
            self.leases.disarm(action.reason)
        elif isinstance(action, act.ReportShutdown):
            self.send(ipc.ShutdownDone(action.stopped, action.released, action.left_running))
        elif isinstance(action, act.Fatal):
            log.critical(action.reason)
            os._exit(EXIT_FATAL)
        else:
            self.send_request(action, cluster)
        return True

    def lock(self, action: act.AcquireLock | act.RefreshLock | act.TakeLock, ttl: int, paused: bool) -> bool:
        started = time.monotonic()
        if isinstance(action, act.TakeLock):
            self.store.take_leader(self.config().name, ttl)
        elif not (self.store.acquire_leader if isinstance(action, act.AcquireLock)
                  else self.store.refresh_leader)(self.config().name, ttl):
            log.warning("could not %s the leader lock", "acquire" if isinstance(action, act.AcquireLock)
                        else "refresh")
            self.leases.expire()
            return False
        # The renewal may have been sent by this cycle's read, before `started` (hasup/dcs/etcd3.py):
        # the lease counts from whichever began first.
        alive_at = self.store.lock_alive_at
        self.grant_lease(min(started, alive_at) if alive_at is not None else started, paused)
        return True

    def grant_lease(self, started: float, paused: bool) -> None:
        self.leases.grant(started, self.dynamic(), paused)

    def send_request(self, action: act.Action, cluster: Cluster | None) -> None:
        def member_url(name: str | None) -> str | None:
            if name == REMOTE:  # the standby leader's upstream: standby_cluster's host (hasup.config.standby)
                return remote_url(self.dynamic().standby_cluster)
            m = cluster.members.get(name) if cluster and name else None
            return m.conn_url if m else None

        request = self.link.request
        if isinstance(action, act.RunBootstrap):
            request(ipc.Bootstrap, action)
        elif isinstance(action, act.RunCreateReplica):
            request(ipc.CreateReplica, action, leader=action.source,
                    leader_conn_url=member_url(action.source) if action.source else None)
        elif isinstance(action, act.RunStart):
            request(ipc.Start, action, as_primary=action.as_primary, leader=action.leader,
                    leader_conn_url=member_url(action.leader))
        elif isinstance(action, act.RunPromote):
            request(ipc.Promote, action, require_lsn=action.require_lsn)
        elif isinstance(action, act.RunDemote):
            request(ipc.Demote, action)
        elif isinstance(action, act.RunFollow):
            leader_tl = None
            if cluster is not None and action.leader and action.leader != REMOTE:
                # The member key can lag a fresh promotion by a cycle; /history cannot.
                m = cluster.members.get(action.leader)
                leader_tl = max((m.timeline if m else None) or 0, cluster.timeline) or None
            request(ipc.Follow, action, leader=action.leader, leader_conn_url=member_url(action.leader),
                    leader_timeline=leader_tl, force_rewind=action.rewind)
        elif isinstance(action, act.RunStop):
            request(ipc.Stop, action, mode=action.mode)
        elif isinstance(action, act.SetSyncStandbys):
            request(ipc.SetSyncStandbys, action, setting=action.setting)
        elif isinstance(action, act.RunResumeReplay):
            request(ipc.ResumeReplay, action)
        else:
            raise TypeError(f"unhandled action {action!r}")

    def touch_member(self, cluster: Cluster, scheduled_restart: dict[str, Any] | None,
                     watchdog: ipc.WatchdogState | None = None) -> None:
        try:
            cfg = self.config()
            leading = cluster.leader is not None and cluster.leader.name == cfg.name
            data = member_data(cfg, self.link.pg, cluster.paused,
                               standby_leader=leading and bool(self.dynamic().standby_cluster))
            if scheduled_restart is not None:
                data["scheduled_restart"] = scheduled_restart
            with_protection(data, watchdog)
            self.store.touch_member(cfg.name, data, self.dynamic().ttl)
        except DCSError as exc:
            log.error("could not update the member key: %s", exc)

    def write_status(self, cluster: Cluster | None) -> None:
        pg = self.link.pg
        if pg is None or pg.wal_position is None:
            return
        status = status_value(pg.wal_position, pg.slots, pg.retain_slots, cluster.status if cluster else None,
                              self.own_slot())
        if status != self.status_written:
            self.store.set_status(status)
            self.status_written = status

    def own_slot(self) -> str | None:
        """This node's member slot as its /status lists it (None: it never streams)."""
        me = node_of(self.config())
        return None if me.nostream else slot_name(me.name)

    def write_history(self, cluster: Cluster | None) -> None:
        pg = self.link.pg
        if cluster is None or pg is None or not pg.timeline_history:
            return
        now = datetime.datetime.now(datetime.UTC).isoformat()
        history = recorded_history(cluster.history, pg.timeline_history, now, self.config().name)
        keep = self.dynamic().max_timelines_history
        self.store.set_history(history[-keep:] if keep > 0 else history)
