"""The election worker: owns the etcd session, runs the HA cycle, sends leases.

It runs a cycle every loop_wait, at once when the leader-key watch fires,
and at once when the postgres worker's health changes.  It decides
nothing: every cycle and every answer to one of its requests goes through
hasup.election.policy.decide(), and the Executor carries out what comes back.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace

from hasup import ipc
from hasup.config import DynamicConfig
from hasup.dcs.model import Cluster
from hasup.election import phases as ph
from hasup.election import policy as ha
from hasup.election.cycle_errors import CycleErrors, lease_lapses
from hasup.election.executor import EXIT_FATAL, Executor
from hasup.election.failsafe import Failsafe
from hasup.election.fencing import unhealthy_for
from hasup.election.inputs import deadlines_of, node_of, settings_of
from hasup.election.leases import WatchdogLeases
from hasup.election.offload import Offloader
from hasup.election.operator import OperatorDesk
from hasup.election.orphan import release_when_stopped
from hasup.election.postgres_link import PostgresLink
from hasup.election.reader import ClusterReader
from hasup.election.stopwatches import Stopwatches
from hasup.peers import client_context, fetch_all
from hasup.timing import FAILED_ACTION_RETRY, view_max_age
from hasup.worker import WorkerContext, apply_reload, pump, setup_worker

log = logging.getLogger("hasup.election")

__all__ = ["EXIT_FATAL", "ElectionWorker", "run"]  # the supervisor reads EXIT_FATAL


class ElectionWorker:
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx, cfg, send = ctx, ctx.config, ctx.channel.send_now
        self.me = node_of(cfg)
        # etcd and peer calls run on a helper thread so the loop keeps answering its (short) heartbeat.
        self.offload = Offloader(ctx, lambda: self.reader.dynamic.retry_timeout + 2.0, urgent=self.urgent)
        self.reader = ClusterReader(cfg, self.offload)
        self.link = PostgresLink(send, cfg.postgresql.pg_ctl_timeout,
                                 cfg.postgresql.stop_hook_time + cfg.postgresql.promote_hook_time)
        self.leases = WatchdogLeases(ctx.lease_sock)
        self.failsafe = Failsafe(cfg)
        self.executor = Executor(lambda: ctx.config, self.reader.store, self.link, self.leases, self.failsafe, send,
                                 lambda: self.reader.dynamic, known_config=lambda: self.reader.last_config)
        self.desk = OperatorDesk(self.link, self.holds_lock, lambda: self.reader.cluster, self.busy, send)
        self.stopwatches = Stopwatches()
        self.errors = CycleErrors()
        self.phase: ph.Phase = ph.Idle()
        # Until the watchdog worker reports, a required watchdog counts as unusable.
        self.watchdog: ipc.WatchdogState | None = None if cfg.watchdog.mode != "required" else \
            ipc.WatchdogState("required", False, None, None, None, True, "not reported yet")
        self.run_now = True
        self.retry_at: float | None = None  # a failed action's next cycle (timing.FAILED_ACTION_RETRY)
        self.recheck_in: float | None = None
        self.failed_in_a_row = 0  # cycles in a row whose actions stopped at a failure
        self.last_reason, self.reason_logged_at = "", 0.0
        self.published: ipc.ClusterView | None = None  # the last view sent, and when
        self.published_at = 0.0

    # -- decisions ------------------------------------------------------------------------------

    def busy(self) -> str:
        return ", ".join(self.link.in_flight() + (["fence"] if isinstance(self.phase, ph.Fencing) else []))

    def holds_lock(self) -> bool:
        c = self.reader.cluster
        return c is not None and c.leader is not None and c.leader.name == self.me.name \
            and self.leases.valid_until > time.monotonic()

    def gather(self, cluster: Cluster | None) -> ha.Local:
        pg, now, w = self.link.pg, time.monotonic(), self.stopwatches
        holds = cluster is not None and cluster.leader is not None and cluster.leader.name == self.me.name
        peers = {}
        if cluster is not None and (cluster.leader is None or holds and cluster.failover is not None) \
                and pg is not None and pg.state == "running" and not isinstance(self.phase, ph.ShuttingDown):
            peers = self.offload.call(fetch_all, ha.race_candidates(cluster, self.me.name),
                                      client_context(self.ctx.config.restapi))
        wd, deadlines = self.watchdog, deadlines_of(self.reader.dynamic, self.ctx.config)
        return ha.Local(pg, self.link.fresh(now), self.busy(), peers, w.not_streaming_for(pg, cluster), time.time(),
                        watchdog_usable=not (wd is not None and wd.mode == "required" and wd.failed),
                        failover_age=w.failover_age(cluster),
                        unhealthy_for=unhealthy_for(pg, self.link.received_at, now, deadlines),
                        down_for=w.down_for(pg, holds), failsafe_confirmed=cluster is None and self.failsafe_check(pg),
                        failsafe_leader=self.failsafe.leader(cluster), phase=self.phase, now=now,
                        sync_since=self.link.sync_since,
                        primary_for=now - self.link.primary_since if self.link.primary_since is not None else 0.0)

    def carry_out(self, decision: ha.Decision, cluster: Cluster | None) -> bool:
        if not self.executor.run(decision.actions, cluster):
            return False
        if decision.phase is not None:
            self.phase = decision.phase
        return True

    def answer(self, event: ph.Event) -> None:
        """An answer to one of our requests: the policy says what follows (hasup.election.protocol)."""
        local = ha.Local(self.link.pg, False, phase=self.phase, now=time.monotonic())
        settings = settings_of(self.reader.dynamic, self.ctx.config)
        decision = ha.decide(self.reader.cluster, local, self.me, settings, event)
        if decision.reason:
            level = logging.CRITICAL if isinstance(decision.phase, ph.FenceUnconfirmed) else logging.WARNING \
                if any(isinstance(a, ha.ReleaseLock) for a in decision.actions) else logging.INFO
            log.log(level, decision.reason)
        self.carry_out(decision, self.reader.cluster)
        self.run_now = True

    def cycle(self) -> None:
        cluster = self.reader.read()
        if cluster is not None:
            self.failsafe.remember(cluster)
            if not isinstance(self.phase, ph.ShuttingDown):
                self.desk.tick(time.time())
        local = self.gather(cluster)
        decision = ha.decide(cluster, local, self.me, settings_of(self.reader.dynamic, self.ctx.config))
        if self.carry_out(decision, cluster):
            self.failed_in_a_row = 0
            self.log_reason(decision.reason)  # only what actually happened
        else:
            # Look again at once: what we read is out of date.  Not after a second failure in a row, though:
            # what keeps an action failing (a leader key naming nobody) would spin the loop against etcd.
            self.failed_in_a_row += 1
            self.run_now = self.failed_in_a_row < 2
        self.recheck_in = decision.recheck_in
        if local.unhealthy_for > 0:
            # Be there the moment the health deadline passes, not a loop_wait later.
            due = max(0.05, settings_of(self.reader.dynamic, self.ctx.config).health_deadline - local.unhealthy_for)
            self.recheck_in = min(due, self.recheck_in or due)
        if cluster is not None:
            self.executor.touch_member(cluster, self.desk.scheduled, self.watchdog)
        self.leases.disarm_if_safe(self.link.pg, self.holds_lock())
        self.publish_view(decision.reason)

    def failsafe_check(self, pg: ipc.PgState | None) -> bool:
        """etcd is unreachable: may our running primary keep leading (failsafe_mode)?"""
        started = time.monotonic()
        if isinstance(self.phase, ph.ShuttingDown) or not self.failsafe.confirm(
                self.offload.call, pg, self.reader.dynamic.failsafe_mode):
            return False
        # Every member now treats us as the leader until started + ttl: nobody can take over before.
        self.executor.grant_lease(started, paused=False)
        self.failsafe.confirmed_until = started + self.reader.dynamic.ttl
        return True

    def log_reason(self, reason: str) -> None:
        now = time.monotonic()
        if reason != self.last_reason or now - self.reason_logged_at > 60:
            log.info(reason)
            self.last_reason, self.reason_logged_at = reason, now

    def publish_view(self, reason: str) -> None:
        view = self.reader.view(self.holds_lock(), self.leases.valid_until, reason, self.desk.scheduled,
                                self.errors.count)
        view = replace(view, failsafe_until=self.failsafe.active_until())
        now = time.monotonic()
        if self.published is not None and unchanged_view(view, self.published) \
                and now - self.published_at < view_keepalive(self.reader.dynamic):
            return
        self.published, self.published_at = view, now
        self.ctx.channel.send_now(view)

    # -- when things go wrong ------------------------------------------------------------------------

    def guarded_cycle(self) -> None:
        """One cycle; an unexpected error costs this cycle, not the worker (the next one starts afresh)."""
        try:
            self.cycle()
        except (ipc.PeerClosed, ipc.ProtocolError):
            raise  # the supervisor is gone (run() handles that safely) or its pipe is beyond repair
        except Exception as exc:
            self.errors.record(exc, time.monotonic())
            self.stop_if_lease_lapses(time.monotonic())
            try:
                self.publish_view(f"election cycle failed: {type(exc).__name__}")
            except Exception:  # the view may be what failed; the next good cycle publishes again
                pass

    def stop_if_lease_lapses(self, now: float) -> None:
        c, d = self.reader.cluster, self.reader.dynamic
        if lease_lapses(self.link.pg, c is not None and c.paused, isinstance(self.phase, ph.ShuttingDown),
                        self.leases.valid_until - now, d, self.link.pending.values()):
            log.critical("election cycles keep failing and the leader lease runs out: stopping PostgreSQL")
            self.leases.expire()
            self.link.request(ipc.Stop, mode="immediate")

    def orphaned(self) -> None:
        cfg = self.ctx.config
        release_when_stopped(self.reader.raw_store, self.reader.cluster, self.me.name, cfg.postgresql.data_dir,
                             cfg.postgresql.pg_ctl_timeout)

    # -- main loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        self.reader.watch.start()
        next_cycle = time.monotonic()
        while True:
            try:
                if self.ctx.orphaned():
                    raise ipc.PeerClosed("supervisor")
                deferred = self.offload.take_deferred()  # arrived while an etcd call ran
                due = min(next_cycle, self.cycle_wanted_at())
                timeout = 0.0 if deferred else max(0.0, due - time.monotonic())
                woke: list[object] = []
                for env in deferred + pump(self.ctx, timeout, extra=[self.reader.wake_r], on_ready=woke.append):
                    self.on_message(env.message)
                if woke:
                    self.reader.woken()
                    self.run_now, self.retry_at = True, None  # news from etcd: decide now, failure or not
                if time.monotonic() >= min(next_cycle, self.cycle_wanted_at()):
                    self.run_now, self.retry_at, started = False, None, time.monotonic()
                    self.guarded_cycle()
                    loop_wait = self.reader.dynamic.loop_wait
                    next_cycle = started + min(loop_wait, self.recheck_in or loop_wait)
                    self.reader.arm_watch(self.me.name, next_cycle)
            except ipc.PeerClosed:
                self.orphaned()
                return

    def cycle_wanted_at(self) -> float:
        """When a cycle asked for by what arrived should run: now, or once a failed action's pause is over."""
        if not self.run_now:
            return math.inf
        return self.retry_at if self.retry_at is not None else 0.0

    def urgent(self, env: ipc.Envelope) -> bool:
        """What cannot wait for an etcd call to end (Offloader); True when the message was consumed."""
        if isinstance(env.message, ipc.PgState):
            # A leader cut off from etcd demoted and its PostgreSQL is down: disarm now, not after the next
            # read times out, or the device (armed until the lease runs out) resets the node for nothing.
            self.leases.disarm_if_safe(env.message, self.holds_lock())
            return False  # still handled in order once the call returns
        return self.answer_failsafe_ping(env.message)

    def answer_failsafe_ping(self, msg: ipc.Message) -> bool:
        """POST /failsafe is answered at once, even in the middle of an etcd call: its sender resets itself
        unless every member answers within its timeout (see Offloader)."""
        d = self.reader.dynamic
        reply = self.failsafe.answer(msg, self.link.pg, d.failsafe_mode, d.ttl)
        if reply is not None:
            self.ctx.channel.send_now(reply)
            if reply.code == 200:  # /patroni says failsafe mode holds now, not a cycle later
                self.publish_view(self.last_reason)
        return reply is not None

    def on_message(self, msg: ipc.Message) -> None:
        if self.answer_failsafe_ping(msg):
            return
        if isinstance(msg, ipc.PgState):
            self.run_now |= self.link.on_pgstate(msg, self.reader.dynamic.synchronous_mode)
            self.leases.disarm_if_safe(msg, self.holds_lock())
        elif isinstance(msg, ipc.WatchdogState):
            self.run_now |= self.watchdog is None or (msg.failed, msg.armed) != (self.watchdog.failed,
                                                                                   self.watchdog.armed)
            self.watchdog = msg
        elif isinstance(msg, ipc.Reply):
            waited, action = self.link.on_reply(msg)
            self.desk.on_reply(msg)
            self.run_now |= waited
            if waited and not msg.ok:
                # Its PgState (no longer busy) asks for a cycle at once too: both wait.
                self.retry_at = time.monotonic() + min(FAILED_ACTION_RETRY, self.reader.dynamic.loop_wait)
            if action is not None:
                self.answer(ph.Replied(action, msg.ok, msg.message, msg.result))
        elif isinstance(msg, ipc.StoppedForGiveUp):  # before FenceDone, its base class
            self.answer(ph.GaveUp(msg.reason))
        elif isinstance(msg, ipc.FenceDone):
            self.link.outdated |= msg.confirmed  # what we hold describes the PostgreSQL that was just killed
            self.answer(ph.Fenced(msg.confirmed, f"{len(msg.killed)} processes killed: {msg.reason}" if msg.confirmed
                               else msg.reason))
        elif isinstance(msg, ipc.AdminRequest):
            self.desk.handle(msg)
            self.run_now = True  # publish what changed (busy, a scheduled restart) at once
        elif isinstance(msg, ipc.WorkerRestarted) and msg.role == "watchdog" and self.holds_lock():
            self.leases.resend(self.reader.dynamic)  # its device is armed and counting: give it our lease now
        elif isinstance(msg, ipc.Shutdown):
            self.answer(ph.ShutdownAsked())
        elif isinstance(msg, ipc.ConfigChanged) and apply_reload(self.ctx, msg):
            self.me = node_of(self.ctx.config)
            self.run_now = True  # publish the new tags at once


def unchanged_view(view: ipc.ClusterView, last: ipc.ClusterView) -> bool:
    """Nothing in view the last one sent did not say, but the time of its etcd read.  A leader's lease
    moves every cycle and is news each time (the api's /primary, the vip worker and the supervisor's lease
    guard all count on it); a replica's lock_valid_until means nothing."""
    if view.holds_lock or last.holds_lock:
        return False
    return replace(view, read_at=0.0, read_at_wall=0.0, lock_valid_until=0.0) == \
        replace(last, read_at=0.0, read_at_wall=0.0, lock_valid_until=0.0)


def view_keepalive(dynamic: DynamicConfig) -> float:
    """An unchanged view is sent again after this long (at the next cycle): the api takes a view received
    more than timing.view_max_age ago for stale, and with a cycle's wait on top this stays within half of it."""
    return max(0.0, view_max_age(dynamic.ttl, dynamic.loop_wait, dynamic.retry_timeout) / 2 - dynamic.loop_wait)


def run(ctx: WorkerContext) -> None:
    setup_worker(ctx)
    ElectionWorker(ctx).run()
