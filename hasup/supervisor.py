"""The supervisor: forks the workers, routes their messages, restarts them, writes the log.

It does no I/O but pipes, signals, waitpid, /proc reads and the log
writer, so it cannot hang on etcd or PostgreSQL.  Signal handlers only
write to the wakeup fd; everything happens in one loop (tick, then poll).

This class wires the loop; the decisions live in hasup/supervision/ as
units with their own tests: what a death means per kind of worker
(crash_policy), when a silent worker is aborted and killed (heartbeat),
the order of an orderly stop (shutdown), what a started worker gets at
once (routing).  Every process operation goes through a System
(supervision.system), so unit tests run this loop against a fake.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from functools import partial

from setproctitle import setproctitle

from hasup import ipc
from hasup.config import Config, ConfigError, VipConfig, load_config, parse_dynamic
from hasup.supervision import caps, crash_policy, sdnotify
from hasup.supervision.crash_policy import DeathWindow, GiveUp, Stopped
from hasup.supervision.heartbeat import Escalate, Heartbeat
from hasup.supervision.logwriter import LogWriter
from hasup.supervision.routing import Snapshots, destinations
from hasup.supervision.shutdown import Phase, ShutdownOrder, Tell
from hasup.supervision.system import LinuxSystem, StackFile, System, describe_exit
from hasup.timing import ABORT_GRACE, Deadlines
from hasup.vip import address as vipaddr
from hasup.watchdog.fence import FenceHistory
from hasup.worker import PipeLogHandler, WorkerContext
from hasup.workers import api, election, postgres, vip, watchdog

log = logging.getLogger("hasup.supervisor")

ROLES = ("election", "postgres", "watchdog", "api")  # always; "vip" too when the vip section is set
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
M_ARENA_MAX = -8
EXIT_GIVE_UP = 1
SHUTDOWN_STOP_ID = 0  # our own Stop to the postgres worker; election numbers its requests from 1
FORK_RETRY = 1.0  # seconds before another try when fork itself fails (EAGAIN, ENOMEM)
IDLE_WAIT = 0.05  # the loop's shortest wait when something is due now: never a busy loop
# Its longest: every due time is in tick's answer, so this only bounds what one overlooked would cost.
MAX_WAIT = 5.0
# The answers to a batch of pings come within a millisecond or two of each other: waiting this long
# after sending it reads them in one wake-up instead of one each.
PONG_GATHER = 0.005

TARGETS = {"election": election.run, "postgres": postgres.run, "watchdog": watchdog.run, "api": api.run,
           "vip": vip.run}


def prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl failed")


def limit_malloc_arenas() -> None:
    """Threads in the workers would each get a glibc malloc arena; two are plenty for hasup."""
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass


@dataclass
class Worker:
    role: str
    pid: int = 0
    channel: ipc.Channel | None = None
    heartbeat: Heartbeat = field(default_factory=lambda: Heartbeat(0.0))
    stack: StackFile | None = None  # where its faulthandler writes; read when it is gone
    deaths: DeathWindow = field(default_factory=DeathWindow)  # per kind: there is one worker of each
    starts: int = 0
    restart_at: float | None = None
    crash_looping: bool = False
    held_vip_at_death: bool = False  # vip only: the address may still be on the interface
    logs_lost: int = 0  # log records the running worker reported dropping (Pong)


class Supervisor:
    def __init__(self, config: Config, config_path: str, writer: LogWriter, system: System | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.writer = writer
        self.os: System = system if system is not None else LinuxSystem()
        self.roles = ROLES + (("vip",) if config.vip is not None else ())
        self.workers = {role: Worker(role) for role in self.roles}
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.lease_election, self.lease_watchdog = ipc.lease_pair()
        self.pid = os.getpid()
        self.shutdown_started: float | None = None
        self.shutdown: ShutdownOrder | None = None
        self.shutdown_reason = "SIGTERM"
        self.shutdown_done = False  # election reported ShutdownDone
        self.postgres_stopped = False  # the postgres worker answered our own Stop
        self.leave_postgres_running = False
        self.exit_code = 0
        # Taken out of the environment before the first fork: only we talk to systemd.
        self.notifier = sdnotify.Notifier.from_environment(os.environ)
        self.api_listening = False
        self.ready_sent = False
        self.next_extend = 0.0
        self.next_watchdog = 0.0
        self.snapshots = Snapshots()
        self.views_received = 0
        self.pinged = False  # tick sent pings this turn (PONG_GATHER)
        self.giving_up: GiveUp | None = None
        self.views_at_release = 0  # views_received when election was told PostgreSQL had stopped
        self.guarded_lease = 0.0  # the lease (lock_valid_until) the lease guard already acted on
        self.logs_lost_retired = 0  # reported by workers that have since exited
        self.fence_history = FenceHistory()  # the software fence's count and time, across watchdog workers
        self.logs_lost_reported = 0  # the last count sent to the api
        seed, _ = parse_dynamic(config.bootstrap.dcs)
        self.deadlines = self.deadlines_for(seed.ttl, seed.loop_wait, seed.retry_timeout)

    def deadlines_for(self, ttl: int, loop_wait: int, retry_timeout: int) -> Deadlines:
        return Deadlines.of(ttl, loop_wait, retry_timeout, self.config.watchdog.safety_margin,
                            self.config.postgresql.health_deadline, self.config.watchdog.mode != "off",
                            fence_on=self.config.watchdog.software_fence)

    @property
    def last_pg(self) -> ipc.PgState | None:
        return self.snapshots.last(ipc.PgState)

    @property
    def last_view(self) -> ipc.ClusterView | None:
        return self.snapshots.last(ipc.ClusterView)

    # -- process management ---------------------------------------------------------

    def spawn(self, role: str) -> None:
        w = self.workers[role]
        ours, theirs = ipc.channel_pair()
        stack = self.os.stack_file()
        try:
            pid = self.os.fork(lambda: self.child(role, ours, theirs, stack), theirs)
        except OSError as exc:
            log.error("could not start the %s worker: %s; trying again in %g s", role, exc, FORK_RETRY)
            for end in (ours, theirs):
                end.close()
            if stack is not None:
                stack.close()
            w.restart_at = self.os.monotonic() + FORK_RETRY
            return
        theirs.close()
        now = self.os.monotonic()
        w.pid = pid
        w.channel = ipc.Channel(ours, role)
        w.stack = stack
        w.heartbeat = Heartbeat(last_pong=now)
        w.restart_at = None
        w.logs_lost = 0
        self.sel.register(w.channel, selectors.EVENT_READ, role)
        log.info("started %s worker (pid %d)", role, pid)
        w.starts += 1
        if w.starts > 1 and role != "election":  # a restart, not the first start
            self.send("election", ipc.WorkerRestarted(role))
        replay = self.snapshots.for_start(role)
        for msg in replay:
            self.send(role, msg)
        if replay:
            # On the socket now, before the worker's first read: a new api reads it before it serves.
            try:
                w.channel.flush()
            except ipc.PeerClosed:
                pass

    def child(self, role: str, ours: socket.socket, theirs: socket.socket, stack: StackFile | None) -> int:
        """The new worker's body, in the forked process; its exit code."""
        try:
            ours.close()
            keep = {theirs.fileno()} | self.lease_fds(role) | ({stack.fileno()} if stack is not None else set())
            self.child_hygiene(keep)
            if role != "vip":
                # CAP_NET_ADMIN/CAP_NET_RAW (AmbientCapabilities) are for the VIP alone:
                # PostgreSQL, and whatever a superuser runs through it, must not inherit them.
                caps.drop_all()
            lease = self.lease_election if role == "election" else \
                self.lease_watchdog if role == "watchdog" else None
            ctx = WorkerContext(role, self.config, ipc.Channel(theirs, "supervisor"), lease, self.pid,
                                stack.fileno() if stack is not None else None)
            TARGETS[role](ctx)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log_crash(role)
            return 1
        return 0

    def lease_fds(self, role: str) -> set[int]:
        if role == "election":
            return {self.lease_election.fileno()}
        if role == "watchdog":
            return {self.lease_watchdog.fileno()}
        return set()

    def child_hygiene(self, keep: set[int]) -> None:
        """In a fresh worker: drop the supervisor's signal plumbing and every pipe end not ours."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        self.sel.close()
        fds = {self.wake_r.fileno(), self.wake_w.fileno(), self.lease_election.fileno(),
               self.lease_watchdog.fileno()}
        if self.notifier.fileno() is not None:
            fds.add(self.notifier.fileno())  # type: ignore[arg-type]
        for w in self.workers.values():
            if w.channel is not None:
                fds.add(w.channel.fileno())
            if w.stack is not None:
                fds.add(w.stack.fileno())
        for fd in fds - keep:
            try:
                os.close(fd)
            except OSError:
                pass
        self.writer.close_in_child()
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGUSR2)
        except OSError:
            pass
        # PDEATHSIG only wakes us; loops notice the orphaning through pipe EOF.
        signal.signal(signal.SIGUSR2, lambda *_: None)

    def reap(self) -> None:
        for pid, code in self.os.reap():
            for w in self.workers.values():
                if w.pid == pid:
                    self.worker_exited(w, code)
                    break

    def worker_exited(self, w: Worker, code: int) -> None:
        """code as the System reaps it: the exit status, or -signum."""
        if w.channel is not None:
            self.drain(w)
            self.sel.unregister(w.channel)
            w.channel.close()
            w.channel = None
        w.pid = 0
        self.logs_lost_retired += w.logs_lost
        w.logs_lost = 0
        if w.stack is not None:
            log_stack(w.role, w.stack, code)
            w.stack = None
        if self.shutdown_started is not None:
            log.info("%s worker exited (%s)", w.role, describe_exit(code))
            return
        if w.role == "election" and code == election.EXIT_FATAL:
            log.critical("election worker hit a fatal condition; stopping the node")
            self.exit_code = EXIT_GIVE_UP
            self.begin_shutdown()
            return
        log.error("%s worker exited unexpectedly (%s)", w.role, describe_exit(code))
        now = self.os.monotonic()
        deaths = w.deaths.record(now)
        policy = crash_policy.policy_for(w.role, self.config.watchdog.mode)
        verdict = crash_policy.verdict(policy, deaths)
        w.crash_looping = verdict.crash_loop
        if w.role == "vip":
            w.held_vip_at_death = vipaddr.wanted(self.last_view, self.last_pg, now)
        if verdict.restart_in is None:
            log.critical("%s worker died %d times in %.0f s: its crash loop means this node %s", w.role, deaths,
                         w.deaths.window, policy.on_spent.value)
            self.give_up(w.role, now)
            return
        if verdict.crash_loop:
            # Loud on purpose, at every death: nothing else on this node tells the operator.
            log.critical("%s worker keeps crashing (%d deaths in %.0f s): restarting it in %.0f s; PostgreSQL is "
                         "left alone%s", w.role, deaths, w.deaths.window, verdict.restart_in,
                         ", health checks go unanswered until it is back" if w.role == "api" else "")
        w.restart_at = now + verdict.restart_in

    def drain(self, w: Worker) -> None:
        try:
            if w.channel is not None:
                for env in w.channel.receive():
                    self.route(w.role, env)
        except (ipc.PeerClosed, ipc.ProtocolError):
            pass

    # -- messages -------------------------------------------------------------------------

    def route(self, sender: str, env: ipc.Envelope) -> None:
        msg = env.message
        if isinstance(msg, ipc.Pong):
            w = self.workers[sender]
            w.heartbeat.pong(self.os.monotonic())
            w.logs_lost = msg.logs_lost
        elif isinstance(msg, ipc.LogRecord):
            self.writer.write(msg, sender)
        elif isinstance(msg, ipc.Fence):
            self.fence(msg)
        elif isinstance(msg, ipc.ApiListening):
            self.api_listening = True
        elif isinstance(msg, ipc.ShutdownDone):
            log.info("election finished its shutdown (postgres stopped: %s, leader key released: %s%s)",
                     msg.stopped_postgres, msg.released_lock, ", left running: paused" if msg.left_running else "")
            self.leave_postgres_running = msg.left_running
            self.shutdown_done = True
        elif isinstance(msg, ipc.Reply) and sender == "postgres" and msg.id == SHUTDOWN_STOP_ID \
                and msg.request == "Stop" and self.shutdown is not None:
            log.info("the postgres worker %s PostgreSQL%s", "stopped" if msg.ok else "could not stop",
                     f": {msg.message}" if msg.message else "")
            self.postgres_stopped = True
        else:
            if isinstance(msg, ipc.WatchdogState):
                fences, last = self.fence_history.carry(msg.fences, msg.last_fence)
                msg = replace(msg, fences=fences, last_fence=last)
            self.snapshots.keep(msg)
            if isinstance(msg, ipc.PgState):
                self.update_status()
            elif isinstance(msg, ipc.ClusterView):
                self.views_received += 1
                self.update_status()
                if msg.config:
                    self.follow_timing(msg.config)
            for dest in destinations(msg):
                self.send(dest, msg)

    def follow_timing(self, config: dict[str, object]) -> None:
        """Heartbeat deadlines follow the cluster's live timing, not the bootstrap seed."""
        dynamic, _ = parse_dynamic(config)
        deadlines = self.deadlines_for(dynamic.ttl, dynamic.loop_wait, dynamic.retry_timeout)
        if deadlines != self.deadlines:
            for problem in deadlines.problems(self.config.watchdog.mode != "off"):
                log.error("timing: %s", problem)
            self.deadlines = deadlines

    def send(self, role: str, msg: ipc.Message) -> None:
        w = self.workers.get(role)
        if w is None or w.channel is None:
            return
        dropped = w.channel.dropped
        if not w.channel.send(msg) and w.channel.dropped > dropped:  # one too large for a frame is logged by ipc
            log.warning("dropped %s for %s worker (%d dropped so far)", type(msg).__name__, role,
                        w.channel.dropped)

    def report_log_loss(self) -> None:
        """Tell the api (for /metrics) how many log records were lost, whenever the count moves."""
        total = self.writer.records_lost + self.logs_lost_retired + sum(w.logs_lost for w in self.workers.values())
        if total == self.logs_lost_reported:
            return
        self.logs_lost_reported = total
        msg = ipc.LogLoss(min(total, ipc.MAX_COUNT))
        self.snapshots.keep(msg)  # a restarted api gets it at once (routing.REPLAY)
        self.send("api", msg)

    # -- signals and heartbeats -------------------------------------------------------------

    def install_signals(self) -> None:
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT)
        for sig in handled:
            signal.signal(sig, lambda *_: None)  # the wakeup fd carries the number
        # A parent may have started us with these blocked (the mask survives exec):
        # then SIGTERM would never stop us.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "signals")

    def handle_signals(self) -> None:
        try:
            data = self.wake_r.recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            if signum == signal.SIGCHLD:
                self.reap()
            elif signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                self.begin_shutdown()
            elif signum == signal.SIGHUP:
                self.reload()

    def reload(self) -> None:
        try:
            config, warnings = load_config(self.config_path)
        except ConfigError as exc:
            for line in exc.problems:
                log.error("reload refused: %s", line)
            return
        for w in warnings:
            log.warning(w)
        self.config = config
        try:
            self.writer.reconfigure(config.log)
        except OSError as exc:  # e.g. a new log.dir that does not exist: keep writing where we were
            log.error("log settings not applied: %s", exc)
        for role in self.roles:
            self.send(role, ipc.ConfigChanged(config.raw))
        log.info("configuration reloaded")

    def heartbeats(self, now: float) -> None:
        """Ping whoever is due; abort, then kill, a worker silent past its deadline (supervision.heartbeat)."""
        pinged = [w for w in self.workers.values() if w.channel is not None]
        if any(now >= w.heartbeat.next_ping for w in pinged):
            # One wake-up for several pings: whoever is due within half its interval goes now too, so the
            # pings (and their answers) come together instead of each on a timer of its own.
            for w in pinged:
                interval = self.deadlines.ping_interval(w.role)
                n = w.heartbeat.ping(now, interval, early=interval / 2)
                if n is not None and w.channel is not None:
                    w.channel.send(ipc.Ping(n))
                    self.pinged = True
        if self.shutdown_started is not None:
            return  # busy stopping PostgreSQL is no hang; the shutdown order kills stragglers itself
        for w in self.workers.values():
            if not w.pid:
                continue
            pid = w.pid
            act = w.heartbeat.step(now, self.deadlines.heartbeat(w.role), ABORT_GRACE,
                                   partial(self.is_stopped, pid))
            silent = now - w.heartbeat.last_pong
            if act is Escalate.ABORT:
                log.error("%s worker (pid %d) missed its heartbeat for %.1f s: aborting it (SIGABRT; its stack "
                          "goes to the log)", w.role, pid, silent)
                self.kill(pid, signal.SIGABRT)
            elif act is Escalate.KILL_STOPPED:
                log.error("%s worker (pid %d) missed its heartbeat for %.1f s and is stopped: killing it", w.role,
                          pid, silent)
                self.kill(pid, signal.SIGKILL)
            elif act is Escalate.KILL:
                log.error("%s worker (pid %d) is still there %.1f s after %s: killing it", w.role, pid, ABORT_GRACE,
                          "SIGABRT" if w.heartbeat.kills == 1 else "SIGKILL")
                self.kill(pid, signal.SIGKILL)

    def is_stopped(self, pid: int) -> bool:
        st = self.os.stat(pid)
        return st is not None and st.state in ("T", "t")

    def next_heartbeat(self) -> float:
        due = [w.heartbeat.next_due(self.deadlines.heartbeat(w.role), ABORT_GRACE, pinging=w.channel is not None)
               for w in self.workers.values() if w.pid and self.shutdown_started is None]
        due += [w.heartbeat.next_ping for w in self.workers.values() if w.channel is not None]
        return min(due, default=float("inf"))

    def kill(self, pid: int, sig: int) -> None:
        if pid:
            self.os.kill(pid, sig)

    # -- systemd ---------------------------------------------------------------------------------

    def update_status(self) -> None:
        if self.shutdown_started is not None or not self.ready_sent:
            return
        self.notifier.set_status(self.status_line())

    def status_line(self) -> str:
        pg, view = self.last_pg, self.last_view
        looping = [w.role for w in self.workers.values() if w.crash_looping]
        return sdnotify.describe(pg.role if pg else None, pg.state if pg else None,
                                 view.leader if view else None, self.config.name,
                                 view.paused if view else False) \
            + (f"; {', '.join(looping)} worker crash-looping" if looping else "")

    def notify_step(self, now: float) -> None:
        """READY=1 once it is true, EXTEND_TIMEOUT_USEC while starting or stopping, WATCHDOG=1.

        READY=1 waits for the signal handlers (installed before any worker), every worker
        forked and the API listening -- not for PostgreSQL: a replica may clone for hours.
        """
        n = self.notifier
        if not n.enabled:
            return
        if self.shutdown_started is None and not self.ready_sent:
            if self.api_listening and all(self.workers[r].pid for r in self.roles):
                self.ready_sent = True
                n.ready(self.status_line())
                log.info("told systemd we are ready")
            elif now >= self.next_extend:
                n.extend_timeout()
                self.next_extend = now + sdnotify.EXTEND_EVERY
        elif self.shutdown_started is not None and now >= self.next_extend:
            # An orderly stop (a checkpoint) may outlast TimeoutStopSec; our own budget bounds it.
            if now - self.shutdown_started < self.shutdown_budget():
                n.extend_timeout()
            self.next_extend = now + sdnotify.EXTEND_EVERY
        if n.watchdog_interval is not None and now >= self.next_watchdog:
            # From this loop only: it proves the supervisor turns, not merely that a thread lives.
            n.watchdog()
            self.next_watchdog = now + n.watchdog_interval

    def next_notify(self) -> float:
        n = self.notifier
        if not n.enabled:
            return float("inf")
        due = self.next_watchdog if n.watchdog_interval is not None else float("inf")
        if not self.ready_sent or self.shutdown_started is not None:
            due = min(due, self.next_extend)
        return due

    # -- shutdown (hasup.supervision.shutdown) ------------------------------------------------------

    def shutdown_budget(self) -> float:
        return self.config.postgresql.pg_ctl_timeout + 30.0 + self.config.postgresql.stop_hook_time

    def begin_shutdown(self) -> None:
        if self.shutdown_started is not None:
            return
        log.info("shutting down")
        now = self.os.monotonic()
        self.stopping(now)
        view = self.last_view
        # Maintenance mode: the operator owns PostgreSQL, which keeps running.  A live election says so itself
        # (ShutdownDone, left running); without one, the supervisor must not stop it either.
        paused_alone = view is not None and view.paused and not self.workers["election"].pid
        if paused_alone:
            log.info("the cluster is paused and election is not running: leaving PostgreSQL running")
            self.leave_postgres_running = True
        self.shutdown = ShutdownOrder(now, self.shutdown_budget(), postgres_settled=paused_alone)
        self.shutdown_turn(now)  # the first message goes now, not after the next wait

    def stopping(self, now: float) -> None:
        self.shutdown_started = now
        self.notifier.stopping()
        self.next_extend = 0.0

    def shutdown_turn(self, now: float) -> bool:
        """Advance the shutdown order; True when every worker is gone."""
        assert self.shutdown is not None
        running = [role for role, w in self.workers.items() if w.pid]
        before = self.shutdown.phase
        for cmd in self.shutdown.step(now, running, self.shutdown_done, self.postgres_stopped):
            if isinstance(cmd, Tell):
                if cmd.what == "shutdown":
                    self.send("election", ipc.Shutdown(self.shutdown_reason))
                else:
                    log.warning("election is not running: asking the postgres worker to stop PostgreSQL (fast); "
                                "the leader key, if ours, expires after ttl")
                    self.send("postgres", ipc.Stop(id=SHUTDOWN_STOP_ID, deadline=now + self.shutdown_budget(),
                                                   mode="fast"))
                continue
            if cmd.sig == signal.SIGKILL:
                log.warning("%s worker (pid %d) did not exit after SIGTERM: killing it", cmd.role,
                            self.workers[cmd.role].pid)
            self.kill(self.workers[cmd.role].pid, cmd.sig)
        phase = self.shutdown.phase
        if phase is not before and phase is not None and running:
            log.info("shutdown: %s%s", phase.value, f" ({self.shutdown.why})" if phase is Phase.TERMINATE else "")
        return self.shutdown.finished(running)

    def fence(self, msg: ipc.Fence) -> None:
        """Kill every process of our hung PostgreSQL and tell election whether that is confirmed.

        Here, not in a worker: the supervisor is the subreaper that sees orphaned
        backends, and /proc reads and signals cannot hang on PostgreSQL.
        """
        log.warning("fencing PostgreSQL: %s", msg.reason)
        result = self.os.fence(msg.postmaster_pid, self.config.postgresql.data_dir, self.worker_pids())
        self.reap()
        self.send("election", ipc.FenceDone(result.confirmed, tuple(result.killed), result.reason))

    def worker_pids(self) -> set[int]:
        return {w.pid for w in self.workers.values() if w.pid}

    # -- crash loops (hasup.supervision.crash_policy) ------------------------------------------------------------

    def give_up(self, role: str, now: float) -> None:
        """A worker's crash loop means this node stops: in order, PostgreSQL before the lock (GiveUp)."""
        self.exit_code = EXIT_GIVE_UP
        if self.shutdown_started is not None:
            return
        if self.last_view is not None and self.last_view.paused:
            # Maintenance mode: the operator owns PostgreSQL, which keeps running as after SIGTERM.
            log.critical("the cluster is paused: leaving PostgreSQL running")
            self.stopping(now)
            self.leave_postgres_running = True
            self.shutdown = ShutdownOrder(now, self.shutdown_budget(), postgres_settled=True)
            return
        self.stopping(now)
        release_grace = float(parse_dynamic(self.last_view.config)[0].retry_timeout) if self.last_view else 10.0
        self.giving_up = GiveUp(self, role, now, release_grace=release_grace + 5.0)

    # GiveUpOps: the seam GiveUp drives (signals, /proc and pipes only).

    def stop_election(self) -> None:
        if self.workers["election"].pid:
            self.send("election", ipc.Shutdown("a worker crash loop"))

    def find_our_postmaster(self) -> int | None:
        pg = self.last_pg
        return self.os.find_postmaster(pg.postmaster_pid if pg else None, self.config.postgresql.data_dir)

    def quit_postmaster(self) -> bool:
        pid = self.find_our_postmaster()
        return pid is not None and self.os.signal_process(pid, signal.SIGQUIT)

    def postmaster_alive(self) -> bool:
        self.reap()  # the postmaster is re-parented to us: an unreaped one would look alive to the next start
        return self.find_our_postmaster() is not None

    def confirm_stopped(self) -> Stopped:
        result = self.os.fence(None, self.config.postgresql.data_dir, self.worker_pids())
        self.reap()
        return Stopped(result.confirmed, tuple(result.killed), result.reason)

    def election_alive(self) -> bool:
        return bool(self.workers["election"].pid)

    def tell_election_stopped(self, stopped: Stopped) -> None:
        self.views_at_release = self.views_received
        log.info("PostgreSQL is confirmed stopped: election may release the leader key")
        self.send("election", ipc.StoppedForGiveUp(True, stopped.killed, f"{stopped.reason} (giving up)"))

    def lock_released(self) -> bool:
        view = self.last_view
        fresh = self.views_received > self.views_at_release and view is not None
        return self.shutdown_done or (fresh and view is not None and not view.holds_lock)

    def disarm(self, reason: str) -> None:
        # On the lease pipe, as election would: the watchdog worker honours a Disarm before it exits.
        ipc.send_datagram(self.lease_election, ipc.Disarm(reason), 0)

    def guard_lease(self, now: float) -> None:
        """Election is down (between restarts): stop a primary before the lease it granted can end."""
        view = self.last_view
        if self.workers["election"].pid or self.shutdown_started is not None or view is None:
            return
        margin = self.deadlines.safety_margin + crash_policy.GUARD_SLACK
        if view.lock_valid_until != self.guarded_lease and crash_policy.lease_lapsing(view, self.last_pg, now, margin):
            self.guarded_lease = view.lock_valid_until
            log.critical("election is not running and the leader lease ends in %.1f s: stopping PostgreSQL "
                         "(immediate) before the key can expire", view.lock_valid_until - now)
            if not self.quit_postmaster():
                log.warning("no PostgreSQL to stop")

    def restart_vip_early(self, now: float) -> None:
        w = self.workers.get("vip")
        if w is None or w.pid or w.restart_at is None or w.restart_at <= now:
            return
        if crash_policy.vip_restart_now(w.held_vip_at_death, self.last_view, self.last_pg, now):
            log.warning("this node should no longer carry the virtual IP: restarting the vip worker now to remove it")
            w.held_vip_at_death = False
            w.restart_at = now

    def next_deadline(self, now: float) -> float:
        """The earliest moment the loop has something to do besides pings and systemd."""
        due = [w.restart_at for w in self.workers.values()
               if not w.pid and w.restart_at is not None and self.shutdown_started is None]
        view = self.last_view
        if not self.workers["election"].pid and view is not None and view.lock_valid_until != self.guarded_lease:
            lapse = crash_policy.lease_deadline(view, self.deadlines.safety_margin + crash_policy.GUARD_SLACK)
            if lapse is not None:
                due.append(lapse)
        vip = self.workers.get("vip")
        if vip is not None and not vip.pid and vip.held_vip_at_death and view is not None:
            due.append(view.lock_valid_until - vipaddr.LEASE_MARGIN)
        if self.giving_up is not None and not self.giving_up.done:
            due.append(now + 0.1)  # polls /proc for the postmaster's end
        elif self.shutdown is not None:
            due.append(self.shutdown.next_due())
        return min(due, default=float("inf"))

    def stop_leftover_postmaster(self) -> None:
        """Last resort: the postgres worker died before stopping PostgreSQL."""
        pid = self.find_our_postmaster()
        if pid is not None:
            log.warning("PostgreSQL (pid %d) still runs after the workers exited: stopping it", pid)
            self.os.signal_process(pid, signal.SIGQUIT)

    # -- main loop --------------------------------------------------------------------------------

    def run(self) -> int:
        setproctitle(f"hasup: supervisor {self.config.scope}/{self.config.name}")
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.install_signals()
        limit_malloc_arenas()
        gc.collect()
        for problem in self.deadlines.problems(self.config.watchdog.mode != "off"):
            log.error("timing: %s", problem)  # the bootstrap timing; etcd's, once read, is checked again
        for role in self.roles:
            self.spawn(role)
        while (due := self.tick()) is not None:
            self.poll(timeout=min(MAX_WAIT, max(0.0, due - self.os.monotonic()) or IDLE_WAIT))
        self.reap()
        if self.exit_code == 0 and self.shutdown_started is not None and not self.leave_postgres_running:
            self.stop_leftover_postmaster()
        if self.config.vip is not None:
            # The vip worker removes the address when we stop leading; it may have died first.
            # Nothing else is left to do, so waiting for `ip` here blocks no one.
            release_vip(self.config.vip)
        log.info("supervisor exiting (%d)", self.exit_code)
        self.writer.flush()
        self.notifier.close()
        return self.exit_code

    def tick(self) -> float | None:
        """One turn of the loop but the wait: when the next thing is due (monotonic), None once all are gone."""
        now = self.os.monotonic()
        self.notify_step(now)
        if self.giving_up is not None and not self.giving_up.done:
            # Until PostgreSQL is confirmed stopped (and the lock handed back) the workers stay:
            # the postgres worker and election may be part of it, the watchdog must hear the disarm.
            if self.giving_up.step(now):
                self.shutdown = ShutdownOrder(now, self.shutdown_budget(), postgres_settled=True)
        if self.shutdown is not None and self.shutdown_turn(now):
            return None
        self.guard_lease(now)
        self.restart_vip_early(now)
        for w in self.workers.values():
            if not w.pid and w.restart_at is not None and now >= w.restart_at and self.shutdown_started is None:
                self.spawn(w.role)
        self.heartbeats(now)
        self.report_log_loss()
        return min(self.next_heartbeat(), self.next_notify(), self.next_deadline(now))

    def poll(self, timeout: float) -> None:
        # What tick queued (pings, replays) goes out now: a socketpair nearly always takes it whole, and
        # waiting for the selector to say so would cost a wake-up per message.  Only a full pipe is left
        # for the selector, and its registration changes only when that changes.
        self.flush_all()
        if self.pinged:
            self.pinged = False
            time.sleep(PONG_GATHER)
        for w in self.workers.values():
            if w.channel is not None:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if w.channel.wants_write() else 0)
                if events != self.sel.get_key(w.channel).events:
                    self.sel.modify(w.channel, events, w.role)
        for key, mask in self.sel.select(timeout):
            if key.data == "signals":
                self.handle_signals()
                continue
            w = self.workers[key.data]
            if w.channel is None:
                continue
            if mask & selectors.EVENT_READ:
                self.service(w, reading=True)
        self.flush_all()  # what the messages read made for others (relayed snapshots, replies)
        self.reap()

    def flush_all(self) -> None:
        for w in self.workers.values():
            if w.channel is not None and w.channel.wants_write():
                self.service(w, reading=False)

    def service(self, w: Worker, reading: bool) -> None:
        """Read from (and route) or write to a worker's channel; a closed or garbled one is dropped (the
        worker is dying: waitpid will tell us how)."""
        if w.channel is None:
            return
        try:
            if reading:
                for env in w.channel.receive():
                    self.route(w.role, env)
            else:
                w.channel.flush()
        except (ipc.PeerClosed, ipc.ProtocolError) as exc:
            if isinstance(exc, ipc.ProtocolError):
                log.error("bad message from %s worker: %s", w.role, exc)
                self.kill(w.pid, signal.SIGKILL)
            else:
                # A write can find the worker gone first (a ping to one just aborted for a missed
                # heartbeat): what it wrote before dying (a fence's report, its last log lines) still counts.
                self.drain(w)
            if w.channel is not None:
                self.sel.unregister(w.channel)
                w.channel.close()
                w.channel = None


def log_stack(role: str, stack: StackFile, code: int) -> None:
    """Log what a worker's faulthandler wrote as it died (SIGABRT from a missed heartbeat, a crash in C),
    and close the file: through the log writer, so it lands where every other line of the node does."""
    text = stack.read()
    stack.close()
    if text.strip():
        log.error("%s worker (%s) left its stack:\n%s", role, describe_exit(code), text.rstrip())


def log_crash(role: str) -> None:
    """In a dying worker: its traceback through the log writer when the worker had set up
    logging (then it names the worker and obeys traceback_level), else on stderr."""
    root = logging.getLogger()
    if any(isinstance(h, PipeLogHandler) for h in root.handlers):
        root.critical("%s worker crashed", role, exc_info=True)
    else:
        import traceback
        traceback.print_exc()


def release_vip(cfg: VipConfig) -> None:
    try:
        if vipaddr.remove(cfg):
            log.info("removed the virtual IP %s from %s", cfg.cidr, cfg.interface)
    except vipaddr.VipError as exc:
        log.error("could not remove the virtual IP: %s", exc)


def run(config: Config, config_path: str, warnings: list[str]) -> int:
    writer = LogWriter(config.log)
    writer.install()
    if writer.problem:
        log.error(writer.problem)
    for w in warnings:
        log.warning(w)
    try:
        return Supervisor(config, config_path, writer).run()
    except KeyboardInterrupt:
        return 1
    finally:
        writer.flush()
        sys.stderr.flush()
