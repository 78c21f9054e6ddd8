"""The postgres worker: executes lifecycle requests and reports PgState.

Long actions run on a thread so probes and PgState keep flowing while a
basebackup takes hours.  The worker never decides: election asks, it
converges and reports.  When the supervisor dies it stops PostgreSQL
(immediate) and exits: an unsupervised primary must not keep running.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hasup import ipc
from hasup.config import DynamicConfig, parse_dynamic
from hasup.config.slot_settings import parse_slot_settings
from hasup.postgresql.callbacks import Callbacks
from hasup.postgresql.control import Binaries, Postmaster, controldata, data_dir_empty
from hasup.postgresql.lifecycle import ActionFailed, Lifecycle
from hasup.postgresql.probe import ProbeFailed, Prober, ProbeResult, ProbeTimedOut
from hasup.postgresql.slot_keeper import SlotJob, SlotKeeper
from hasup.postgresql.state import ACTION_STATES, PgStatus
from hasup.timing import FULL_PROBE_INTERVAL, KEEPALIVE, PROBE_INTERVAL, PROBE_TIMEOUT, RELOAD_SETTLE
from hasup.worker import WorkerContext, apply_reload, pump, setup_worker

log = logging.getLogger("hasup.postgres")


def replication_state(probe: ProbeResult, archive_recovery: bool) -> str | None:
    """Patroni's replication_state of a replica: streaming, else in archive recovery when it has a
    restore_command to fetch WAL with, else nothing (the member key then says "not streaming")."""
    if not probe.in_recovery:
        return None
    if probe.streaming:
        return "streaming"
    return "in archive recovery" if archive_recovery else None


class PostgresWorker:
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        # Until etcd's config key is seen (before bootstrap), bootstrap.dcs is the dynamic config.
        self.dynamic: DynamicConfig = parse_dynamic(cfg.bootstrap.dcs)[0]
        self.postmaster = Postmaster(Binaries(cfg.postgresql.bin_dir), cfg.postgresql.data_dir,
                                     os.path.join(cfg.postgresql.config_dir, "postgresql.conf"))
        self.lifecycle = Lifecycle(cfg, self.dynamic, self.postmaster, self._set_action_state)
        # The costly facts are read now and then, and whenever the quick probe hints at a change.
        self.prober = Prober(self.lifecycle.local_dsn(), PROBE_TIMEOUT, full_every=FULL_PROBE_INTERVAL)
        self.action: str = ""  # the request being carried out, by name ("promote", "follow", ...)
        self.action_state: PgStatus | None = None  # what that action says PostgreSQL is going through
        self.done: queue.SimpleQueue[ipc.Reply] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.last_probe: ProbeResult | None = None
        self.last_good: ipc.PgState | None = None  # the last state a probe confirmed (probe_at = when)
        self.failed_probes = 0
        self.unanswered_since = 0.0  # monotonic: the first probe of the current failing streak that timed out
        self.was_running = False
        self.stopped_on_purpose = False
        self.history_cache: tuple[int, tuple[tuple[int, int, str], ...]] = (0, ())
        self.last_sent: ipc.PgState | None = None
        self.last_sent_at = 0.0
        self.slots = SlotKeeper(self.lifecycle.local_dsn)
        self.queued: ipc.Request | None = None
        self.view_left_out: tuple[str, ...] = ()  # what the last ClusterView came without (ipc.fit)
        self.callbacks = Callbacks(lambda: self.ctx.config)

    # -- actions ---------------------------------------------------------------

    def _set_action_state(self, state: PgStatus) -> None:
        # Called from the action's thread: wake the main loop so the new state is reported now,
        # not up to a probe interval later (an operator polling /patroni must not see the old one).
        self.action_state = state
        os.write(self.wake_w, b"s")

    def start_action(self, req: ipc.Request) -> None:
        if self.action:
            preempts = isinstance(req, ipc.Stop) or (isinstance(req, ipc.Reinitialize) and req.force)
            if preempts and self.queued is None:
                # A stop (or a forced reinitialize) outranks whatever runs: cancel it, then do this.
                log.info("%s requested during %s: cancelling it", type(req).__name__.lower(), self.action)
                self.queued = req
                self.lifecycle.cancel_current()
                return
            self.ctx.channel.send_now(ipc.Reply(req.id, type(req).__name__, False, f"{self.action} in progress"))
            return
        self.lifecycle.cancel.clear()
        fn = self._action_for(req)
        name = type(req).__name__.lower()
        self.action = name
        self.action_state = ACTION_STATES.get(name)
        self.report(force=True)  # busy from now on, for the api too
        self.callbacks.began(req, self.last_sent)

        def runner() -> None:
            try:
                result = fn()
                reply = ipc.Reply(req.id, type(req).__name__, True, "", result)
            except ActionFailed as exc:
                log.error("%s failed: %s", name, exc)
                reply = ipc.Reply(req.id, type(req).__name__, False, str(exc), exc.result)
            except Exception as exc:  # a bug must not leave the worker wedged as busy
                log.exception("%s raised", name)
                reply = ipc.Reply(req.id, type(req).__name__, False, f"{type(exc).__name__}: {exc}")
            self.done.put(reply)
            os.write(self.wake_w, b"x")

        threading.Thread(target=runner, name=name, daemon=True).start()

    def _action_for(self, req: ipc.Request) -> Callable[[], dict[str, Any]]:
        lc = self.lifecycle
        running_role = None
        if self.last_probe is not None and self.postmaster.pid() is not None:
            running_role = "replica" if self.last_probe.in_recovery else "primary"
        if isinstance(req, ipc.Bootstrap):
            return lc.bootstrap
        if isinstance(req, ipc.CreateReplica):
            return lambda: lc.create_replica(req.leader, req.leader_conn_url)
        if isinstance(req, ipc.Start):
            return lambda: lc.start(req.as_primary, req.leader, req.leader_conn_url)
        if isinstance(req, ipc.Promote):
            return lambda: lc.promote(req.require_lsn)
        if isinstance(req, ipc.Demote):
            return lc.demote
        if isinstance(req, ipc.Follow):
            return lambda: lc.follow(req.leader, req.leader_conn_url, req.leader_timeline, running_role,
                                     req.force_rewind)
        if isinstance(req, ipc.Stop):
            self.stopped_on_purpose = True
            # hasup stops immediately only when it must not wait: a primary whose lease may be gone.
            return lambda: lc.stop(req.mode, before_stop=req.mode != "immediate")
        if isinstance(req, ipc.SetSyncStandbys):
            return lambda: lc.set_sync_standbys(req.setting)
        if isinstance(req, ipc.ResumeReplay):
            return lc.resume_replay
        if isinstance(req, ipc.Restart):
            return lambda: lc.restart(req.timeout, req.leader, req.leader_conn_url)
        if isinstance(req, ipc.Reinitialize):
            return lambda: lc.reinitialize(req.leader, req.leader_conn_url, req.from_leader)
        raise ValueError(f"unknown request {req!r}")

    def finish_actions(self) -> None:
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass
        while not self.done.empty():
            reply = self.done.get()
            self.prober.refresh()  # what the action did (a promotion, a restart) shows in the next report
            self.action = ""
            self.action_state = None
            # The callbacks start before the reply goes: a Stop's reply may end the node's shutdown, and
            # the supervisor's SIGTERM would then come before an on_stop started after it.
            self.callbacks.finished(reply, self.lifecycle.following, self.postmaster.pid() is not None)
            self.ctx.channel.send_now(reply)
            self.report(force=True)
        if self.queued is not None and not self.action:
            req, self.queued = self.queued, None
            self.start_action(req)

    # -- state -------------------------------------------------------------------

    def observe(self) -> ipc.PgState:
        cfg = self.ctx.config
        pid = self.postmaster.pid()
        probe: ProbeResult | None = None
        if pid is not None and self.action not in ("bootstrap",):
            try:
                probe = self.prober.probe()
                self.failed_probes = 0
                self.unanswered_since = 0.0
            except ProbeFailed as exc:
                if isinstance(exc, ProbeTimedOut) and not self.unanswered_since:
                    self.unanswered_since = time.monotonic()
                self.failed_probes += 1
                if self.failed_probes in (1, 10) or self.failed_probes % 60 == 0:
                    log.warning("probe failed (%d in a row): %s", self.failed_probes, exc)
        else:
            self.prober.close()
            self.failed_probes = 0  # nothing to probe: failures of a server that is gone mean nothing now
            self.unanswered_since = 0.0
        self.last_probe = probe if probe is not None else (self.last_probe if pid is not None else None)
        now = time.monotonic()
        if probe is None and pid is not None and self.last_good is not None and not self.action:
            # Alive but not answering (hung, frozen, overloaded): report the last facts we
            # confirmed, with their age, and let the reader judge staleness.  Never guess.
            return replace(self.last_good, probe_ok=False, failed_probes=self.failed_probes, postmaster_pid=pid)
        if probe is not None:
            self.was_running = True
            self.stopped_on_purpose = False
            role = "replica" if probe.in_recovery else "primary"
            self.last_good = ipc.PgState(
                state=self.reported_state(),
                role=role, data_dir_empty=False, probe_ok=True, probe_at=now, worker_pid=os.getpid(),
                busy=self.action, postmaster_pid=pid, postmaster_start_time=probe.postmaster_start_time,
                server_version=probe.server_version, sysid=probe.sysid, timeline=probe.timeline,
                checkpoint_timeline=probe.checkpoint_timeline,
                wal_position=probe.wal_position, received_location=probe.received_lsn,
                replayed_location=probe.replayed_lsn, replayed_timestamp=probe.replayed_timestamp,
                replay_paused=probe.replay_paused,
                replication_state=replication_state(probe, self.lifecycle.archive_recovery),
                upstream=self.lifecycle.following if probe.in_recovery else None,
                replication=probe.replication,
                timeline_history=self.timeline_history(probe) if not probe.in_recovery else (),
                pending_restart=probe.pending_restart, sync_standby_names=probe.sync_standby_names,
                slots=self.slots.published[0], retain_slots=self.slots.published[1],
            )
            if self.lifecycle.sync_setting is None and self.dynamic.synchronous_mode:
                # A restarted worker: keep what PostgreSQL runs with, so a re-render cannot drop a
                # standby the sync key still names.
                self.lifecycle.sync_setting = probe.sync_standby_names
            return self.last_good
        self.last_good = None
        empty = data_dir_empty(cfg.postgresql.data_dir)
        cd = controldata(self.postmaster.bins, cfg.postgresql.data_dir) if not empty and not self.action else {}
        cluster_state = cd.get("Database cluster state")
        if self.action_state is not None:
            state = self.action_state
        elif pid is not None:
            state = PgStatus.STARTING if self.failed_probes < 3 else PgStatus.UNKNOWN
        elif self.was_running and not self.stopped_on_purpose:
            state = PgStatus.CRASHED
        else:
            state = PgStatus.STOPPED
        sysid = cd.get("Database system identifier")
        try:
            tl: int | None = int(cd["Latest checkpoint's TimeLineID"]) if cd else None
        except (KeyError, ValueError):
            tl = None
        # A postmaster hung since a moment we know (this worker started, or an action ran, while it hung):
        # that moment, not now, is when its facts were last confirmed, or it would never be fenced.  One
        # that refuses at once (starting up) is not hung.
        confirmed_at = self.unanswered_since if pid is not None and self.unanswered_since else now
        return ipc.PgState(
            state=state, role=self.stopped_role(empty, cluster_state), data_dir_empty=empty, probe_ok=False,
            probe_at=confirmed_at, worker_pid=os.getpid(), failed_probes=self.failed_probes, busy=self.action,
            postmaster_pid=pid,
            sysid=sysid, timeline=tl, controldata_state=cluster_state,
            upstream=self.lifecycle.following,
        )

    def reported_state(self) -> PgStatus:
        """The state of a PostgreSQL that answers: running, unless an action says otherwise."""
        if self.action == "stop":
            return PgStatus.STOPPING
        if self.action in ("restart", "reinitialize") and self.action_state is not None:
            # Until the action is done, as Patroni reports it: restarting, creating replica, starting.
            return self.action_state
        return PgStatus.RUNNING

    def stopped_role(self, empty: bool, cluster_state: str | None) -> str:
        if empty or cluster_state is None:
            return "uninitialized"
        if cluster_state in ("in archive recovery", "shut down in recovery"):
            return "replica"
        if os.path.exists(os.path.join(self.ctx.config.postgresql.data_dir, "standby.signal")):
            return "replica"
        return "primary"

    def timeline_history(self, probe: ProbeResult) -> tuple[tuple[int, int, str], ...]:
        tl = probe.timeline or 1
        if tl <= 1:
            return ()
        if self.history_cache[0] == tl:
            return self.history_cache[1]
        path = os.path.join(self.ctx.config.postgresql.data_dir, "pg_wal", f"{tl:08X}.history")
        entries = []
        try:
            with open(path) as f:
                for line in f:
                    parts = line.strip().split("\t")
                    if len(parts) >= 2 and parts[0].isdigit():
                        hi, lo = parts[1].split("/")
                        entries.append((int(parts[0]), (int(hi, 16) << 32) + int(lo, 16),
                                        parts[2] if len(parts) > 2 else ""))
        except (OSError, ValueError):
            return ()
        self.history_cache = (tl, tuple(entries))
        return self.history_cache[1]

    def report(self, force: bool = False) -> None:
        state = self.observe()
        self.callbacks.observed(state)
        now = time.monotonic()
        unchanged = self.last_sent is not None and replace(state, probe_at=0.0) == replace(self.last_sent, probe_at=0.0)
        if unchanged and not force and now - self.last_sent_at < KEEPALIVE:
            return
        self.last_sent, self.last_sent_at = state, now
        self.ctx.channel.send_now(state)

    # -- main loop ------------------------------------------------------------------

    def on_message(self, env: ipc.Envelope) -> None:
        msg = env.message
        if isinstance(msg, ipc.Request):
            self.start_action(msg)
        elif isinstance(msg, ipc.ConfigChanged) and apply_reload(self.ctx, msg):
            self.lifecycle.cfg = self.ctx.config
            if not self.action:
                self.apply_parameters()
        elif isinstance(msg, ipc.ClusterView):
            if msg.left_out != self.view_left_out:
                self.view_left_out = msg.left_out
                held_back = [what for what, ok in (
                    ("keeping the last complete configuration", ipc.complete(msg, "config_values")),
                    ("leaving replication slots as they are", self.view_usable_for_slots(msg))) if not ok]
                if held_back:
                    log.warning("the cluster view came without some of its parts (%s): %s", ", ".join(msg.left_out),
                                " and ".join(held_back))
            # A configuration with values left out is not the cluster's: rendering it would drop parameters.
            if msg.config and ipc.complete(msg, "config_values"):
                dynamic, _ = parse_dynamic(msg.config)
                if dynamic != self.dynamic:
                    # primary_slot_name follows use_slots (reloadable since PostgreSQL 13)
                    changed = (dynamic.parameters, dynamic.use_slots, dynamic.synchronous_mode,
                               dynamic.synchronous_mode_strict) != (self.dynamic.parameters, self.dynamic.use_slots,
                                                                    self.dynamic.synchronous_mode,
                                                                    self.dynamic.synchronous_mode_strict)
                    # A standby cluster's remote (host, slot, restore_command...) is reloadable too.
                    changed |= dynamic.standby_cluster != self.dynamic.standby_cluster
                    if not dynamic.synchronous_mode:
                        self.lifecycle.sync_setting = None
                    self.dynamic = dynamic
                    self.lifecycle.dynamic = dynamic
                    if changed and not self.action:
                        self.apply_parameters()
            if msg.config and self.view_usable_for_slots(msg):
                self.keep_slots(msg)

    @staticmethod
    def view_usable_for_slots(view: ipc.ClusterView) -> bool:
        """A view short of members, of the leader's slot list or of the slot settings would have
        slots dropped as if their members had left the cluster or their settings were gone."""
        return all(ipc.complete(view, part) for part in ("members", "status_slots", "config_values"))

    def apply_parameters(self) -> None:
        self.lifecycle.apply_parameters()
        self.prober.refresh(RELOAD_SETTLE)  # pending_restart may change once PostgreSQL has reloaded
        self.callbacks.reloaded(self.last_sent)  # on_reload, if PostgreSQL ran and got SIGHUP

    def keep_slots(self, view: ipc.ClusterView) -> None:
        """Bring the replication slots in line with the cluster (on a thread: see SlotKeeper)."""
        if self.action or self.failed_probes or self.last_probe is None or self.postmaster.pid() is None:
            return
        cfg = self.ctx.config
        settings, notes = parse_slot_settings(view.config, self.dynamic.use_slots)
        self.slots.submit(SlotJob(
            me=cfg.name, nofailover=cfg.tags.nofailover, holds_lock=view.holds_lock, leader=view.leader,
            paused=view.paused, members=view.members, settings=settings, status=view.status, notes=tuple(notes)))

    def orphaned_stop(self) -> None:
        log.critical("supervisor is gone: stopping PostgreSQL (immediate) and exiting")
        self.lifecycle.cancel_current()
        try:
            self.lifecycle.stop("immediate", timeout=30, before_stop=False)
        except ActionFailed as exc:
            log.critical("could not stop PostgreSQL: %s", exc)

    def run(self) -> None:
        next_probe = 0.0
        while True:
            try:
                if self.ctx.orphaned():
                    raise ipc.PeerClosed("supervisor")
                timeout = max(0.0, min(next_probe, self.callbacks.next_deadline()) - time.monotonic())
                woke: list[object] = []
                for env in pump(self.ctx, timeout, extra=[self.wake_r], on_ready=woke.append):
                    self.on_message(env)
                if woke or not self.done.empty():
                    self.finish_actions()
                self.callbacks.poll()  # reap finished callbacks, kill overdue ones: never waits
                if woke or time.monotonic() >= next_probe:
                    self.report()
                    # After a failed probe, ask again at once: a hung primary is fenced after
                    # FAILED_PROBES_TO_FENCE of them, and that should take seconds, not intervals.
                    next_probe = time.monotonic() + (0.0 if self.failed_probes == 1 else PROBE_INTERVAL)
            except ipc.PeerClosed:
                self.orphaned_stop()
                return


def run(ctx: WorkerContext) -> None:
    setup_worker(ctx)
    PostgresWorker(ctx).run()
