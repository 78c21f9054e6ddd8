"""The watchdog worker: pets the device under the lease rule, and fences PostgreSQL itself (docs/design.md §4).

It imports little and makes no network or database calls.  Leases and
disarm orders come straight from election on the lease pipe.  Without new
leases it stops petting, so the device fires no later than the lease's
end minus safety_margin, however the other workers hang.  Before the
device could fire (and with no device at all) the software fence SIGKILLs
this node's PostgreSQL and confirms it through /proc: between the lease
running out and that confirmation it touches nothing but the lease pipe,
/proc and kill.  It never writes the magic close on an error path or at
exit: only on election's Disarm, which comes after PostgreSQL stopped or
was demoted, or after its own fence was confirmed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

from hasup import ipc
from hasup.config import WatchdogConfig
from hasup.proc import KillResult, kill_and_confirm, read_stat
from hasup.timing import FENCE_TIMEOUT, Deadlines, settings_problem
from hasup.watchdog import fence
from hasup.watchdog.emulated import EmulatedWatchdog
from hasup.watchdog.lease import LeaseRule
from hasup.watchdog.linux import LinuxWatchdog
from hasup.watchdog.petter import Device, DeviceError, Petter
from hasup.worker import WorkerContext, pump, setup_worker

log = logging.getLogger("hasup.watchdog")

REPORT_INTERVAL = 10.0  # unchanged state is re-sent this often; changes go out at once
RESET_CONFIRM = 1.0  # how long a reset waits to see every process gone before this worker exits


def unusable(cfg: WatchdogConfig) -> str | None:
    """Why the device cannot be used, checked without opening it (opening would arm it)."""
    if cfg.mode == "off":
        return None
    if not os.path.exists(cfg.device):
        return f"watchdog device {cfg.device} does not exist"
    if cfg.driver != "testing" and not os.access(cfg.device, os.W_OK):
        return f"watchdog device {cfg.device} is not writable by this user"
    return None


def reset_processes(data_dir: str, supervisor_pid: int, timeout: float = RESET_CONFIRM) -> KillResult:
    """The reset as processes: SIGKILL this node's PostgreSQL and the supervisor's whole tree but us, and confirm.

    PostgreSQL goes by its data directory too, so a postmaster or backend
    outside the tree dies as well.  The kills go out at once; only the
    confirmation takes up to `timeout`.
    """
    trees = []
    if os.getppid() == supervisor_pid:
        # Still our parent, so its pid cannot have passed to a stranger.  Once we are orphaned,
        # the node's tree is no longer ours to find: PostgreSQL alone is killed then.
        st = read_stat(supervisor_pid)
        if st is not None:
            trees.append((supervisor_pid, st.starttime))
    return kill_and_confirm(data_dir, subreaper=supervisor_pid if trees else None, trees=trees, timeout=timeout)


def make_device(cfg: WatchdogConfig) -> Device:
    if cfg.driver == "testing":
        return EmulatedWatchdog(cfg.device)
    return LinuxWatchdog(cfg.device)


class WatchdogWorker:
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.config.watchdog
        self.lease: ipc.Lease | None = None
        self.petter: Petter | None = None
        self.failed = False
        self.reason = "watchdog.mode is off" if self.cfg.mode == "off" else "not leading"
        self.warned: set[str] = set()
        self.terminating = False
        # The software fence: on while watchdog.software_fence is set and the lease's timings keep the rule.
        self.fence_ok = False
        self.valid_until: float | None = None  # the newest lease since the last disarm
        self.margin = 0.0  # the effective safety_margin of that lease's timings
        self.fenced_lease: float | None = None  # the lease a confirmed fence acted on
        self.fence_retry_at = 0.0
        self.device_problem: str | None = None  # why the device cannot be used, as check_device last saw it
        self.fences = 0
        self.last_fence: float | None = None  # wall clock
        self.last_fence_result = ""

    def warn_once(self, message: str) -> None:
        if message not in self.warned:
            self.warned.add(message)
            log.warning(message)

    def reset_node(self, why: str) -> None:
        """Do what the device would do: kill every process of this node at once, ourselves last."""
        log.critical(why)
        result = reset_processes(self.ctx.config.postgresql.data_dir, self.ctx.supervisor_pid)
        # The log writer was the supervisor, gone now: stderr (the journal) is all that is left for the last word.
        with contextlib.suppress(OSError):
            os.write(2, f"hasup watchdog: node reset, kill {result.reason}\n".encode(errors="replace"))
        os._exit(70)

    def on_lease(self, lease: ipc.Lease) -> None:
        if lease.valid_until <= 0:
            return  # election's "no lease" (it never led, or its lease was taken back): nothing to enforce
        self.lease = lease
        deadlines = Deadlines.of(lease.ttl, lease.loop_wait, lease.retry_timeout, self.cfg.safety_margin)
        problem = settings_problem(lease.ttl, lease.loop_wait, lease.retry_timeout, deadlines.safety_margin)
        margin, timeout = deadlines.safety_margin, deadlines.watchdog_timeout
        # Leases only move forward: an older one arriving late changes nothing.
        first = self.valid_until is None
        if self.valid_until is None or lease.valid_until > self.valid_until:
            self.valid_until = lease.valid_until
        self.margin = margin
        self.fence_ok = self.cfg.software_fence and problem is None
        if first and self.fence_ok:
            log.info("software fence armed: PostgreSQL is killed if the lease is not renewed within %.1f s",
                     fence.fence_at(lease.valid_until, margin) - time.monotonic())
        if self.cfg.software_fence and problem:
            # As the device: a fence on these timings could kill a leader whose renewal is slow but healthy.
            self.warn_once(f"software fence off: {problem}")
        if self.cfg.mode == "off":
            return
        if problem or timeout is None:
            self.failed = True
            self.reason = problem or "no watchdog timeout of at least 1 s fits these timings"
            self.warn_once(f"watchdog not armed: {self.reason}")
            return
        if self.petter is None or self.petter.timeout != timeout or self.petter.rule.safety_margin != margin:
            if self.petter is not None and self.petter.armed:
                return  # keep the armed device; new timings apply after the next disarm
            self.petter = Petter(LeaseRule(margin), make_device(self.cfg), time.monotonic, timeout, self.reset_node)
        self.petter.on_lease(lease.valid_until)

    def on_disarm(self, msg: ipc.Disarm) -> None:
        if self.petter is not None and self.petter.armed:
            try:
                self.petter.disarm()
                log.info("watchdog disarmed (%s)", msg.reason)
            except DeviceError as exc:
                self.failed, self.reason = True, str(exc)
                log.error("could not disarm the watchdog: %s", exc)
        if self.valid_until is not None and self.fence_ok:
            log.info("software fence disarmed (%s)", msg.reason)
        self.petter = None
        self.lease = None
        self.valid_until = None
        self.reason = "not leading"

    def fence_inputs(self) -> fence.FenceInputs:
        return fence.FenceInputs(self.fence_ok, self.valid_until, self.margin, self.fenced_lease)

    def fence_if_due(self) -> None:
        """The lease ran out unrenewed: kill this node's PostgreSQL before the device could fire, and confirm.

        Only /proc and kill until the answer is in: the supervisor, the log writer and election may all be
        the ones that hang.  Reported (logged, and in WatchdogState) only after that.
        """
        now = time.monotonic()
        if now < self.fence_retry_at or not fence.fence_due(now, self.fence_inputs()):
            return
        lease = self.valid_until
        # The supervisor is the subreaper: a backend whose postmaster died already is re-parented to it.
        subreaper = self.ctx.supervisor_pid if os.getppid() == self.ctx.supervisor_pid else None
        result = kill_and_confirm(self.ctx.config.postgresql.data_dir, subreaper=subreaper, timeout=FENCE_TIMEOUT)
        if result.killed:
            self.fences += 1
            self.last_fence = time.time()
        self.last_fence_result = result.reason
        if not result.confirmed:
            self.fence_retry_at = time.monotonic() + fence.RETRY
            log.critical("software fence: the leader lease ran out unrenewed; killing PostgreSQL %s", result.reason)
            return
        self.fenced_lease = lease
        log.critical("software fence: the leader lease ran out unrenewed %.1f s before the lease rule's limit; "
                     "killed PostgreSQL, %s", lease - self.margin - now if lease is not None else 0.0, result.reason)
        if self.petter is not None and self.petter.armed:
            # PostgreSQL is confirmed gone: the reset would only cost the host, as election's Disarm says.
            try:
                self.petter.disarm()
                log.info("watchdog disarmed (PostgreSQL fenced)")
            except DeviceError as exc:
                self.failed, self.reason = True, str(exc)
                log.error("could not disarm the watchdog: %s", exc)
            self.petter = None

    def check_device(self) -> None:
        """While not armed, keep the verdict on the device current (it may appear or vanish)."""
        if self.petter is not None and self.petter.armed:
            return
        problem = self.device_problem = unusable(self.cfg)
        if problem:
            self.failed, self.reason = True, problem
            self.warn_once(f"{problem}: " + ("this node will not lead" if self.cfg.mode == "required"
                                              else "leading unarmed if elected"))
        elif self.failed and self.reason.startswith("watchdog device"):
            self.failed, self.reason = False, "not leading"

    def pet(self) -> None:
        if self.petter is None or self.failed and not self.petter.armed:
            return
        try:
            result = self.petter.step()
        except DeviceError as exc:
            self.failed, self.reason = True, str(exc)
            self.warn_once(f"watchdog unusable, running unarmed: {exc}")
            return
        if result.action == "armed":
            log.info("watchdog armed with a %ss timeout", result.timeout)
            self.failed, self.reason = False, ""
        elif result.action == "retimed":
            log.debug("watchdog petted with a %ss timeout", result.timeout)
        elif result.action == "refused":
            shortest = self.petter.shortest
            self.warn_once(f"the watchdog device refused a {shortest - 1}s timeout: when the lease runs out it "
                           f"may fire up to about {shortest}s before the lease rule requires")

    def state(self) -> ipc.WatchdogState:
        p = self.petter
        return ipc.WatchdogState(
            mode=self.cfg.mode, armed=bool(p and p.armed), timeout=p.current if p else None,
            last_pet=p.last_pet if p else None, lease_valid_until=self.lease.valid_until if self.lease else None,
            failed=self.failed, reason=self.reason, protection=self.protection(), fences=self.fences,
            last_fence=self.last_fence, last_fence_result=self.last_fence_result)

    def protection(self) -> str:
        return fence.protection(self.cfg.mode, self.device_problem, self.cfg.software_fence)

    def next_wake(self) -> float:
        due = fence.next_check(time.monotonic(), self.fence_inputs())
        device = self.device_wake()
        if due is None:
            return device
        return min(device, max(due, self.fence_retry_at - time.monotonic(), 0.01))

    def device_wake(self) -> float:
        p = self.petter
        if p is None or not p.armed:
            return 1.0 if p is not None else REPORT_INTERVAL
        # The petter knows when its next pet is due, shorter-timeout pets included (not a fixed W/2).
        due = p.next_due()
        if due is None:
            return REPORT_INTERVAL  # nothing to pet until a new lease, whose arrival wakes us anyway
        return max(0.05, due - time.monotonic())

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "terminating", True))
        extra = [self.ctx.lease_sock] if self.ctx.lease_sock is not None else []
        reported: ipc.WatchdogState | None = None
        next_report = 0.0
        self.device_problem = unusable(self.cfg)
        log.info(fence.protection_line(self.cfg.mode, self.cfg.device, self.device_problem, self.cfg.software_fence))
        while True:
            try:
                if self.ctx.orphaned():
                    raise ipc.PeerClosed("supervisor")
                pump(self.ctx, 0.0 if self.terminating else min(self.next_wake(), next_report - time.monotonic()),
                     extra=extra)
            except ipc.PeerClosed:
                return  # no magic close: an armed device must fire unless someone re-arms it in time
            if self.ctx.lease_sock is not None:
                for env in ipc.receive_datagrams(self.ctx.lease_sock):
                    if isinstance(env.message, ipc.Lease):
                        self.on_lease(env.message)
                    elif isinstance(env.message, ipc.Disarm):
                        self.on_disarm(env.message)
            if self.terminating:
                return  # the lease pipe was drained: a Disarm sent before the stop was honoured
            self.fence_if_due()
            self.check_device()
            self.pet()
            state = self.state()
            if state != reported or time.monotonic() >= next_report:
                self.ctx.channel.send_now(state)
                reported = state
                next_report = time.monotonic() + REPORT_INTERVAL


def run(ctx: WorkerContext) -> None:
    setup_worker(ctx)
    WatchdogWorker(ctx).run()
