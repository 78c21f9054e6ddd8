"""The election worker: owns the etcd session, runs the HA cycle, sends leases.

It runs a cycle every loop_wait, at once when the leader-key watch fires,
and at once when the postgres worker's health changes.  Policy lives in
hasup.election.policy.decide(); this file gathers inputs and carries out actions.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
import traceback
from typing import Any, cast

from hasup import ipc
from hasup.config import Config, initial_dcs_config, parse_dynamic
from hasup.dcs.backends import open_store
from hasup.dcs.model import Cluster, with_last_good
from hasup.dcs.parse import BAD_VALUES
from hasup.dcs.store import DCSError, Store
from hasup.dcs.watch import KeyWatch
from hasup.election import policy as ha
from hasup.election.failsafe import Failsafe
from hasup.election.fencing import Fencing, unhealthy_for
from hasup.election.leases import WatchdogLeases
from hasup.election.member import member_data, recorded_history
from hasup.election.offload import OffloadedProxy, Offloader
from hasup.election.operator import OperatorDesk
from hasup.election.stopwatches import Stopwatches
from hasup.election.sync import sync_now
from hasup.peers import client_context, fetch_all
from hasup.postgresql.control import pid_alive, postmaster_pid
from hasup.postgresql.slots import status_value
from hasup.timing import Deadlines
from hasup.worker import WorkerContext, apply_reload, pump, setup_worker

log = logging.getLogger("hasup.election")

EXIT_FATAL = 3  # the supervisor stops the node and exits 1: retrying cannot help
STALE_PGSTATE = 10.0  # seconds; older PgState is not acted on (the worker is restarting)
CYCLE_ERROR_RELOG = 300.0  # seconds before the same failure of a cycle is logged with its traceback again
REQUEST_DEADLINES = {"Bootstrap": 3600.0, "CreateReplica": 86400.0, "Reinitialize": 86400.0}


class ElectionWorker:
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.me = node_of(cfg)
        self.dynamic, _ = parse_dynamic(cfg.bootstrap.dcs)
        # etcd and peer calls run on a helper thread so the loop keeps answering its (short) heartbeat.
        self.offload = Offloader(ctx, lambda: self.dynamic.retry_timeout + 2.0, urgent=self.urgent)
        self.raw_store = open_store(cfg.etcd, cfg.namespace, cfg.scope, self.dynamic.retry_timeout)
        self.store = cast(Store, OffloadedProxy(self.raw_store, self.offload))
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.watch = KeyWatch(open_store(cfg.etcd, cfg.namespace, cfg.scope, self.dynamic.retry_timeout),
                                 self.wake_w)
        self.pg: ipc.PgState | None = None
        self.pg_received = 0.0
        # After a reply, the PgState we hold predates the action's effect; the
        # worker sends a new one right behind the reply.  Acting on the old one
        # could, say, clone over a data directory that was just filled.
        self.pg_outdated = False
        self.pending: dict[int, tuple[ipc.Request, int | None]] = {}  # id -> (request, worker pid at send)
        self.next_id = 1
        self.cluster: Cluster | None = None
        self.last_read: Cluster | None = None  # the last successful read, rejected values patched (with_last_good)
        self.read_at = 0.0
        self.read_at_wall = 0.0
        self.leases = WatchdogLeases(ctx.lease_sock)
        self.last_reason = ""
        self.reason_logged_at = 0.0
        self.status_written: dict[str, Any] | None = None
        self.shutting_down = False
        self.shutdown_stop_id: int | None = None
        self.run_now = True
        self.recheck_in: float | None = None
        self.sync_written: tuple[str, ...] | None = None
        self.last_config: dict[str, Any] = {}
        self.stopwatches = Stopwatches()
        # Until the watchdog worker reports, a required watchdog counts as unusable.
        self.watchdog: ipc.WatchdogState | None = None if cfg.watchdog.mode != "required" else \
            ipc.WatchdogState("required", False, None, None, None, True, "not reported yet")
        self.desk = OperatorDesk(self, ctx.channel.send_now)
        self.fencing = Fencing(ctx.channel.send_now)
        self.failsafe = Failsafe(cfg)
        self.cycle_errors = 0
        self.cycle_errors_logged: dict[tuple[str, str, int], float] = {}  # failure -> when its traceback was logged
        self.emergency_stop_id: int | None = None
        self.failed_in_a_row = 0  # cycles in a row whose actions stopped at a failure

    # -- requests to the postgres worker -----------------------------------------

    def request(self, cls: type[ipc.Request], **kwargs: Any) -> int:
        rid = self.next_id
        self.next_id += 1
        deadline = time.monotonic() + REQUEST_DEADLINES.get(cls.__name__, self.ctx.config.postgresql.pg_ctl_timeout
                                                            + 120.0) + float(kwargs.get("timeout") or 0)
        req = cls(id=rid, deadline=deadline, **kwargs)
        self.pending[rid] = (req, self.pg.worker_pid if self.pg else None)
        self.ctx.channel.send_now(req)
        return rid

    @property
    def busy(self) -> str:
        now = time.monotonic()
        for rid, (req, _pid) in list(self.pending.items()):
            if now > req.deadline:
                log.warning("%s request %d passed its deadline: outcome unknown", type(req).__name__, rid)
                del self.pending[rid]
        names = {type(r).__name__.lower() for r, _ in self.pending.values()} | ({"fence"} if self.fencing.in_progress
                                                                                  else set())
        return ", ".join(sorted(names))

    def on_reply(self, reply: ipc.Reply) -> None:
        entry = self.pending.pop(reply.id, None)
        if entry is None:
            return
        self.pg_outdated = True
        level = logging.INFO if reply.ok else logging.ERROR
        log.log(level, "%s %s%s", reply.request, "succeeded" if reply.ok else "failed",
                f": {reply.message}" if reply.message else "")
        self.desk.on_reply(reply)
        if reply.request == "Bootstrap":
            self.finish_bootstrap(reply)
        elif reply.request == "Demote":
            self.finish_switchover(reply)
        elif reply.request == "Promote" and not reply.ok and self.holds_lock():
            # Not caught up with the old leader (or promote failed): let a better node lead.
            log.warning("giving the leader lock back: %s", reply.message)
            self.release_lock()
        if self.shutdown_stop_id == reply.id:
            self.finish_shutdown(stopped=reply.ok)
        self.run_now = True

    def on_pgstate(self, state: ipc.PgState) -> None:
        prev = self.pg
        self.pg = state
        self.pg_received = time.monotonic()
        self.pg_outdated = False
        self.fencing.on_pgstate(state)
        self.maybe_disarm()
        # A restarted postgres worker lost whatever it was doing for us.
        for rid, (_req, pid) in list(self.pending.items()):
            if pid is not None and state.worker_pid != pid:
                del self.pending[rid]
        if prev is None or (prev.state, prev.role, prev.busy, prev.probe_ok, prev.failed_probes) != \
                (state.state, state.role, state.busy, state.probe_ok, state.failed_probes):
            self.run_now = True
        elif self.dynamic.synchronous_mode and (prev.sync_standby_names, sync_now(prev.replication)) != \
                (state.sync_standby_names, sync_now(state.replication)):
            self.run_now = True  # the next step of a synchronous standby change can be taken now

    # -- the cycle ----------------------------------------------------------------

    def settings(self) -> ha.Settings:
        d = self.dynamic
        local_rewind = self.ctx.config.postgresql.use_pg_rewind
        return ha.Settings(d.ttl, d.loop_wait, d.retry_timeout, d.maximum_lag_on_failover, d.check_timeline,
                           d.use_pg_rewind if local_rewind is None else local_rewind,
                           self.ctx.config.postgresql.health_deadline, d.primary_start_timeout,
                           d.synchronous_mode, d.synchronous_mode_strict, d.synchronous_node_count,
                           d.failsafe_mode)

    def deadlines(self) -> Deadlines:
        d, cfg = self.dynamic, self.ctx.config
        return Deadlines.of(d.ttl, d.loop_wait, d.retry_timeout, cfg.watchdog.safety_margin,
                            cfg.postgresql.health_deadline)

    def read_cluster(self) -> Cluster | None:
        try:
            cluster = self.store.get_cluster()
        except DCSError as exc:
            log.error("cannot read the cluster from etcd: %s", exc)
            return None
        cluster = with_last_good(cluster, self.last_read)
        self.last_read = cluster
        self.read_at, self.read_at_wall = time.monotonic(), time.time()
        self.failsafe.remember(cluster)
        if cluster.config:
            self.last_config = cluster.config
            dynamic, warnings = parse_dynamic(cluster.config)
            if dynamic != self.dynamic:
                for w in warnings:
                    log.warning(w)
                self.dynamic = dynamic
                self.store.retry_timeout = self.watch.store.retry_timeout = dynamic.retry_timeout
        return cluster

    def cycle(self) -> None:
        cluster = self.read_cluster()
        self.cluster = cluster
        if cluster is not None and not self.shutting_down:
            self.desk.tick(time.time())
        pg = self.pg
        fresh = pg is not None and time.monotonic() - self.pg_received < STALE_PGSTATE and not self.pg_outdated
        peers = {}
        holds = cluster is not None and cluster.leader is not None and cluster.leader.name == self.me.name
        if cluster is not None and (cluster.leader is None or holds and cluster.failover is not None) \
                and pg is not None and pg.state == "running" and not self.shutting_down:
            peers = self.offload.call(fetch_all, ha.race_candidates(cluster, self.me.name),
                                      client_context(self.ctx.config.restapi))
        wd = self.watchdog
        usable = not (wd is not None and wd.mode == "required" and wd.failed)
        if cluster is not None and cluster.leader is not None and cluster.leader.name != self.me.name:
            self.fencing.someone_else_leads()
        now = time.monotonic()
        confirmed = cluster is None and self.failsafe_check(pg)
        watches = self.stopwatches
        local = ha.Local(pg, fresh, self.busy, peers, watches.not_streaming_for(pg, cluster), time.time(), usable,
                         watches.failover_age(cluster), unhealthy_for(pg, self.pg_received, now, self.deadlines()),
                         self.fencing.sitting_out(), watches.down_for(pg, holds), confirmed,
                         self.failsafe.leader(cluster))
        # Just fenced (or yielded): our PostgreSQL was hung or down while primary; let another node lead first.
        me = dataclasses.replace(self.me, nofailover=True) if self.fencing.sitting_out() else self.me
        if self.shutting_down:
            decision = ha.Decision((ha.RefreshLock(),) if holds else (), "shutting down")
        else:
            decision = ha.decide(cluster, local, me, self.settings())
        for action in decision.actions:
            if not self.execute(action, cluster):
                # Look again at once: what we read is out of date.  Not after a second failure in a row,
                # though: what keeps an action failing (a leader key holding a value that names nobody,
                # a fence not confirmed) would spin the loop against etcd and flood the log.
                self.failed_in_a_row += 1
                self.run_now = self.failed_in_a_row < 2
                break
        else:
            self.failed_in_a_row = 0
            self.log_reason(decision.reason)  # only what actually happened
        self.recheck_in = decision.recheck_in
        if local.unhealthy_for > 0:
            # Be there the moment the health deadline passes, not a loop_wait later.
            due = max(0.05, self.settings().health_deadline - local.unhealthy_for)
            self.recheck_in = min(due, self.recheck_in or due)
        if cluster is not None:
            self.touch_member()
        self.maybe_disarm()
        self.publish_view(decision.reason)

    def failsafe_check(self, pg: ipc.PgState | None) -> bool:
        """etcd is unreachable: may our running primary keep leading (failsafe_mode)?"""
        if not self.dynamic.failsafe_mode or self.shutting_down or pg is None or pg.role != "primary" \
                or pg.state != "running":
            return False
        started = time.monotonic()
        if not self.failsafe.confirm(self.offload.call):
            return False
        # Every member now treats us as the leader until started + ttl: nobody can take over before.
        self.grant_lease(started)
        return True

    def log_reason(self, reason: str) -> None:
        now = time.monotonic()
        if reason != self.last_reason or now - self.reason_logged_at > 60:
            log.info(reason)
            self.last_reason, self.reason_logged_at = reason, now

    def execute(self, action: ha.Action, cluster: Cluster | None) -> bool:
        """Carry out one action; False stops the rest of the list."""
        ttl = self.dynamic.ttl
        try:
            if isinstance(action, ha.AcquireLock | ha.RefreshLock) and self.fencing.failed:
                return False  # a fence we could not confirm: let the lease run out
            if isinstance(action, ha.AcquireLock | ha.RefreshLock):
                started = time.monotonic()
                fn = self.store.acquire_leader if isinstance(action, ha.AcquireLock) else self.store.refresh_leader
                if not fn(self.me.name, ttl):
                    log.warning("could not %s the leader lock", "acquire" if isinstance(action, ha.AcquireLock)
                                else "refresh")
                    self.leases.expire()
                    return False
                self.grant_lease(started)
            elif isinstance(action, ha.ReleaseLock):
                self.store.delete_leader(self.me.name)
                self.leases.expire()
            elif isinstance(action, ha.ClaimInitialize):
                if not self.store.claim_initialize():
                    log.info("failed to acquire initialize lock")
                    return False
            elif isinstance(action, ha.PublishInitialize):
                self.store.set_initialize(action.sysid)
            elif isinstance(action, ha.ClearFailover):
                if cluster is not None and cluster.failover is not None:
                    self.store.clear_failover(cluster.failover_index)
            elif isinstance(action, ha.WriteStatus):
                self.write_status()
            elif isinstance(action, ha.WriteHistory):
                self.write_history(cluster)
            elif isinstance(action, ha.WriteFailsafe):
                self.store.set_failsafe(dict(action.members))
                self.failsafe.members = dict(action.members)  # etcd may be gone before we read it back
            elif isinstance(action, ha.WriteSync):
                if action.standbys != self.sync_written:
                    log.info("synchronous standbys: %s", ", ".join(action.standbys) or "none")
                self.store.set_sync(self.me.name, action.standbys)
                self.sync_written = action.standbys
            elif isinstance(action, ha.ClearSync):
                self.store.delete_sync()
            elif isinstance(action, ha.YieldLock):
                self.release_lock()
                self.fencing.sit_out(ttl)
            elif isinstance(action, ha.FencePostgres):
                self.fencing.start(self.pg, "it did not answer probes within postgresql.health_deadline")
            elif isinstance(action, ha.Fatal):
                log.critical(action.reason)
                os._exit(EXIT_FATAL)
            else:
                self.send_pg_request(action, cluster)
        except DCSError as exc:
            log.error("etcd write failed: %s", exc)
            return False
        return True

    def send_pg_request(self, action: ha.Action, cluster: Cluster | None) -> None:
        def member_url(name: str | None) -> str | None:
            m = cluster.members.get(name) if cluster and name else None
            return m.conn_url if m else None

        if isinstance(action, ha.RunBootstrap):
            self.request(ipc.Bootstrap)
        elif isinstance(action, ha.RunCreateReplica):
            self.request(ipc.CreateReplica, leader=action.source, leader_conn_url=member_url(action.source) or "")
        elif isinstance(action, ha.RunStart):
            self.request(ipc.Start, as_primary=action.as_primary, leader=action.leader,
                         leader_conn_url=member_url(action.leader))
        elif isinstance(action, ha.RunPromote):
            self.request(ipc.Promote, require_lsn=action.require_lsn)
        elif isinstance(action, ha.RunDemote):
            self.request(ipc.Demote)
        elif isinstance(action, ha.RunFollow):
            leader_tl = None
            if cluster is not None and action.leader:
                # The member key can lag a fresh promotion by a cycle; /history cannot.
                m = cluster.members.get(action.leader)
                leader_tl = max((m.timeline if m else None) or 0, cluster.timeline) or None
            self.request(ipc.Follow, leader=action.leader, leader_conn_url=member_url(action.leader),
                         leader_timeline=leader_tl, force_rewind=action.rewind)
        elif isinstance(action, ha.RunStop):
            self.request(ipc.Stop, mode=action.mode)
        elif isinstance(action, ha.SetSyncStandbys):
            self.request(ipc.SetSyncStandbys, setting=action.setting)
        else:
            raise TypeError(f"unhandled action {action!r}")

    def grant_lease(self, started: float) -> None:
        paused = self.cluster is not None and self.cluster.paused
        self.leases.grant(started, self.dynamic, paused)

    def maybe_disarm(self, pg: ipc.PgState | None = None) -> None:
        self.leases.disarm_if_safe(pg or self.pg, self.holds_lock())

    def write_status(self) -> None:
        if self.pg is None or self.pg.wal_position is None:
            return
        status = status_value(self.pg.wal_position, self.pg.slots, self.pg.retain_slots,
                              self.cluster.status if self.cluster else None)
        if status != self.status_written:
            self.store.set_status(status)
            self.status_written = status

    def write_history(self, cluster: Cluster | None) -> None:
        if cluster is None or self.pg is None or not self.pg.timeline_history:
            return
        now = datetime.datetime.now(datetime.UTC).isoformat()
        history = recorded_history(cluster.history, self.pg.timeline_history, now, self.me.name)
        if self.dynamic.max_timelines_history > 0:
            history = history[-self.dynamic.max_timelines_history:]
        self.store.set_history(history)

    def touch_member(self) -> None:
        try:
            paused = self.cluster.paused if self.cluster is not None else False
            data = member_data(self.ctx.config, self.pg, paused)
            if self.desk.scheduled is not None:
                data["scheduled_restart"] = self.desk.scheduled
            self.store.touch_member(self.me.name, data, self.dynamic.ttl)
        except DCSError as exc:
            log.error("could not update the member key: %s", exc)

    def publish_view(self, reason: str) -> None:
        c = self.cluster
        holds = self.holds_lock()
        view = ipc.ClusterView(
            read_at=self.read_at if c is not None else 0.0, read_at_wall=self.read_at_wall,
            leader=c.leader.name if c and c.leader else None, holds_lock=holds,
            lock_valid_until=self.leases.valid_until,
            members={n: m.data for n, m in c.members.items()} if c else {},
            # etcd unreachable: the last configuration read still holds (timing bounds, failsafe_mode).
            config=(c.config or {}) if c else self.last_config, history=tuple(tuple(h) for h in c.history) if c else (),
            optime=c.optime if c else None, initialize=c.initialize if c else None,
            sync=c.sync if c else None, failover=c.failover if c else None,
            paused=c.paused if c else False, last_decision=reason, scheduled_restart=self.desk.scheduled,
            status=c.status if c else {}, dcs_bad_values=BAD_VALUES.total, cycle_errors=self.cycle_errors,
        )
        self.ctx.channel.send_now(view)

    # -- bootstrap and shutdown ---------------------------------------------------------

    def finish_bootstrap(self, reply: ipc.Reply) -> None:
        if not reply.ok:
            log.critical("bootstrap failed: %s", reply.message)
            try:
                self.store.delete_initialize()
            except DCSError:
                pass
            os._exit(EXIT_FATAL)
        sysid = str(reply.result.get("sysid", ""))
        started = time.monotonic()
        self.store.set_initialize(sysid)
        self.store.set_config(initial_dcs_config(self.ctx.config))
        self.store.take_leader(self.me.name, self.dynamic.ttl)
        self.grant_lease(started)
        log.info("initialized a new cluster")

    def holds_lock(self) -> bool:
        c = self.cluster
        return c is not None and c.leader is not None and c.leader.name == self.me.name \
            and self.leases.valid_until > time.monotonic()

    def release_lock(self) -> None:
        try:
            self.store.delete_leader(self.me.name)
        except DCSError as exc:
            log.error("could not release the leader key: %s", exc)
        self.leases.expire()

    def finish_switchover(self, reply: ipc.Reply) -> None:
        """PostgreSQL stopped cleanly: connected standbys have flushed the shutdown checkpoint; hand over."""
        if not reply.ok:
            log.error("switchover aborted: %s", reply.message)
            if self.cluster is not None and self.cluster.failover is not None:
                try:
                    self.store.clear_failover(self.cluster.failover_index)
                except DCSError:
                    pass
            return  # PostgreSQL is restarted as primary by the next cycle: we still hold the lock
        lsn = int(reply.result["checkpoint_lsn"])
        try:
            # Candidates promote only once they have received past this point.
            self.store.set_status({"optime": lsn, "slots": {}, "retain_slots": []})
            self.status_written = None
        except DCSError as exc:
            log.error("switchover: could not record the hand-over point: %s", exc)
        self.release_lock()
        log.info("switchover: released the leader lock at LSN %s", lsn)

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        if self.cluster is not None and self.cluster.paused:
            # Maintenance mode: the operator owns PostgreSQL; it keeps running and keeps the key.
            log.info("shutting down while paused: leaving PostgreSQL running and the leader key in place")
            self.ctx.channel.send_now(ipc.ShutdownDone(False, False, left_running=True))
            return
        log.info("shutting down: stopping PostgreSQL")
        self.shutdown_stop_id = self.request(ipc.Stop, mode="fast")

    def finish_shutdown(self, stopped: bool) -> None:
        released = False
        if stopped and self.holds_lock():
            self.release_lock()
            released = True
            log.info("released the leader key after stopping PostgreSQL")
        elif not stopped:
            log.error("PostgreSQL did not stop: keeping the leader key (it expires after ttl)")
        if stopped:
            self.leases.disarm("PostgreSQL stopped for shutdown")
        self.ctx.channel.send_now(ipc.ShutdownDone(stopped, released))
        self.shutdown_stop_id = None

    def orphaned(self) -> None:
        """Supervisor gone: the postgres worker stops PostgreSQL; release the lock once that is confirmed."""
        log.critical("supervisor is gone: waiting for PostgreSQL to stop before releasing the lock")
        deadline = time.monotonic() + self.ctx.config.postgresql.pg_ctl_timeout
        data_dir = self.ctx.config.postgresql.data_dir
        while time.monotonic() < deadline:
            pid = postmaster_pid(data_dir)
            if pid is None or not pid_alive(pid):
                break
            time.sleep(0.1)
        else:
            log.critical("PostgreSQL is still running: leaving the leader key to expire")
            return
        if self.cluster is not None and self.cluster.leader is not None and self.cluster.leader.name == self.me.name:
            try:
                self.raw_store.delete_leader(self.me.name)
            except DCSError:
                pass

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> None:
        self.watch.start()
        next_cycle = time.monotonic()
        while True:
            try:
                if self.ctx.orphaned():
                    raise ipc.PeerClosed("supervisor")
                deferred = self.offload.take_deferred()  # arrived while an etcd call ran
                timeout = 0.0 if self.run_now or deferred else max(0.0, next_cycle - time.monotonic())
                woke: list[object] = []
                for env in deferred + pump(self.ctx, timeout, extra=[self.wake_r], on_ready=woke.append):
                    self.on_message(env.message)
                if woke:
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self.run_now = True
                if self.run_now or time.monotonic() >= next_cycle:
                    self.run_now = False
                    started = time.monotonic()
                    self.guarded_cycle()
                    next_cycle = started + min(self.dynamic.loop_wait, self.recheck_in or self.dynamic.loop_wait)
                    self.arm_watch(next_cycle)
            except ipc.PeerClosed:
                self.orphaned()
                return

    def guarded_cycle(self) -> None:
        """One cycle; an unexpected error costs this cycle, not the worker (the next one starts afresh)."""
        try:
            self.cycle()
        except (ipc.PeerClosed, ipc.ProtocolError):
            raise  # the supervisor is gone (run() handles that safely) or its pipe is beyond repair
        except Exception as exc:
            self.cycle_failed(exc)

    def cycle_failed(self, exc: Exception) -> None:
        """Log (a traceback once per kind of failure), count, publish, and keep a lapsing lease safe."""
        self.cycle_errors += 1
        frames = traceback.extract_tb(exc.__traceback__)
        where = frames[-1] if frames else None
        kind = (type(exc).__name__, where.filename if where else "", (where.lineno or 0) if where else 0)
        now = time.monotonic()
        if now - self.cycle_errors_logged.get(kind, -CYCLE_ERROR_RELOG) >= CYCLE_ERROR_RELOG:
            self.cycle_errors_logged[kind] = now
            log.error("election cycle failed (%d so far); carrying on", self.cycle_errors, exc_info=exc)
        else:
            log.warning("election cycle failed again (%d so far): %s: %s", self.cycle_errors, type(exc).__name__,
                        str(exc)[:200])
        self.stop_if_lease_lapses(now)
        try:
            self.publish_view(f"election cycle failed: {type(exc).__name__}")
        except Exception:  # the view may be what failed; the next good cycle publishes again
            pass

    def stop_if_lease_lapses(self, now: float) -> None:
        """Cycles that keep failing cannot renew the lock: stop a running primary before its lease ends,
        as a leader cut off from etcd does, so no replica that takes over finds it still writable."""
        pg = self.pg
        if pg is None or pg.role != "primary" or pg.state != "running" or self.shutting_down:
            return
        if self.cluster is not None and self.cluster.paused:
            return  # maintenance mode: the operator owns PostgreSQL
        if self.leases.valid_until - now > self.dynamic.loop_wait + self.dynamic.retry_timeout:
            return  # the next cycle may still renew it
        if self.emergency_stop_id is not None and self.emergency_stop_id in self.pending:
            return
        log.critical("election cycles keep failing and the leader lease runs out: stopping PostgreSQL")
        self.leases.expire()
        self.emergency_stop_id = self.request(ipc.Stop, mode="immediate")

    def arm_watch(self, until: float) -> None:
        c = self.cluster
        if c is None or c.leader is None:
            return
        # Replicas wake when the leader key changes; the leader when a switchover is requested.
        key = "failover" if c.leader.name == self.me.name else "leader"
        self.watch.arm(key, c.etcd_index + 1 if key == "failover" else c.watch_index, until)

    def urgent(self, env: ipc.Envelope) -> bool:
        """What cannot wait for an etcd call to end (Offloader); True when the message was consumed."""
        if isinstance(env.message, ipc.PgState):
            # A leader cut off from etcd demoted and its PostgreSQL is down: disarm now, not after the next
            # read times out, or the device (armed until the lease runs out) resets the node for nothing.
            self.maybe_disarm(env.message)
            return False  # still handled in order once the call returns
        return self.answer_failsafe_ping(env.message)

    def answer_failsafe_ping(self, msg: ipc.Message) -> bool:
        """Answer POST /failsafe at once, even in the middle of an etcd call (see Offloader)."""
        if not (isinstance(msg, ipc.AdminRequest) and msg.action == "failsafe"):
            return False
        code, text = self.failsafe.on_ping(str(msg.params.get("name") or ""), self.pg, self.dynamic.ttl) \
            if self.dynamic.failsafe_mode else (502, "Failsafe mode is not enabled")
        self.ctx.channel.send_now(ipc.AdminReply(msg.id, code, text))
        return True

    def on_message(self, msg: ipc.Message) -> None:
        if self.answer_failsafe_ping(msg):
            return
        if isinstance(msg, ipc.PgState):
            self.on_pgstate(msg)
        elif isinstance(msg, ipc.WatchdogState):
            if self.watchdog is None or (msg.failed, msg.armed) != (self.watchdog.failed, self.watchdog.armed):
                self.run_now = True
            self.watchdog = msg
        elif isinstance(msg, ipc.Reply):
            self.on_reply(msg)
        elif isinstance(msg, ipc.FenceDone):
            if self.fencing.finished(msg, self.dynamic.ttl):
                self.pg_outdated = True  # what we hold describes the PostgreSQL that was just killed
                if self.holds_lock():
                    self.release_lock()  # a replica can take over at once: nothing of ours can commit now
            self.run_now = True
        elif isinstance(msg, ipc.AdminRequest):
            self.desk.handle(msg)
            self.run_now = True  # publish what changed (busy, a scheduled restart) at once
        elif isinstance(msg, ipc.WorkerRestarted) and msg.role == "watchdog" and self.holds_lock():
            # Its device is armed and counting: give the new worker our lease at once.
            self.leases.resend(self.dynamic)
        elif isinstance(msg, ipc.Shutdown) and not self.shutting_down:
            self.begin_shutdown()
        elif isinstance(msg, ipc.ConfigChanged) and apply_reload(self.ctx, msg):
            self.me = node_of(self.ctx.config)
            self.run_now = True  # publish the new tags at once


def node_of(cfg: Config) -> ha.Node:
    tags = cfg.tags
    source = tags.raw.get("replicatefrom")
    return ha.Node(cfg.name, tags.nofailover, tags.failover_priority,
                   str(source) if isinstance(source, str) and source else None)


def run(ctx: WorkerContext) -> None:
    setup_worker(ctx)
    ElectionWorker(ctx).run()
