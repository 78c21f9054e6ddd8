"""The vip worker: the virtual IP follows this node's leadership.

It holds no policy of its own: election's ClusterView (do we hold the lock,
until when) and the postgres worker's PgState (is PostgreSQL a serving
primary) arrive through the supervisor, and `hasup.vip.address.wanted` decides.
A worker, not the supervisor, because `ip` and the raw socket are I/O the
supervisor must never wait on; and being a separate process it is the only
one that keeps CAP_NET_ADMIN and CAP_NET_RAW (see hasup.supervision.caps).

Safety: the address goes when the lock's lease is about to run out even if
no message arrives (election may hang), when a demote or stop begins, on
SIGTERM, and when the supervisor disappears.  After a crash of the whole
node, systemd's ExecStopPost (`hasup-vip down`) takes it off.
"""

from __future__ import annotations

import logging
import signal
import time

from hasup import ipc
from hasup.config import VipConfig
from hasup.vip import address as addr
from hasup.worker import WorkerContext, apply_reload, pump, setup_worker

log = logging.getLogger("hasup.vip")

ANNOUNCE_AFTER = (0.0, 1.0, 3.0)  # gratuitous ARPs after taking the address: switches and hosts miss some
CHECK_EVERY = 5.0  # while holding it, confirm the address is still there (someone may have removed it)
RETRY_AFTER = 1.0  # a failed `ip` call is retried this soon
STARTUP_GRACE = 1.0  # a restarted worker gets the last snapshots replayed at once; a fresh node does not


class Terminate(Exception):
    """SIGTERM: raised from the handler so a wait in select() ends at once."""


class VipWorker:
    def __init__(self, ctx: WorkerContext) -> None:
        assert ctx.config.vip is not None
        self.ctx = ctx
        self.cfg: VipConfig = ctx.config.vip
        self.view: ipc.ClusterView | None = None
        self.pg: ipc.PgState | None = None
        self.holding = False  # what we believe is on the interface
        self.announce_at: list[float] = []
        self.next_check = 0.0
        self.retry_at = 0.0
        self.started = time.monotonic()

    def on_message(self, msg: ipc.Message) -> None:
        if isinstance(msg, ipc.ClusterView):
            self.view = msg
        elif isinstance(msg, ipc.PgState):
            self.pg = msg
        elif isinstance(msg, ipc.ConfigChanged):
            old = self.cfg
            if apply_reload(self.ctx, msg) and self.ctx.config.vip != old:
                # A changed (or removed) address: let go of the old one; the new one follows the rule.
                self.release(old, "the vip configuration changed")
                if self.ctx.config.vip is not None:
                    self.cfg = self.ctx.config.vip
                self.holding = False

    def reconcile(self, now: float) -> None:
        if self.ctx.config.vip is None:
            return
        if self.view is None and now - self.started < STARTUP_GRACE:
            return  # a restart's replayed snapshots are on their way
        want = addr.wanted(self.view, self.pg, now)
        if want == self.holding and not (want and now >= self.next_check):
            return
        if now < self.retry_at:
            return
        try:
            if want:
                if addr.add(self.cfg):
                    log.info("took the virtual IP %s on %s", self.cfg.cidr, self.cfg.interface)
                    self.announce_at = [now + d for d in ANNOUNCE_AFTER]
                elif not self.holding:
                    log.info("the virtual IP %s is already on %s", self.cfg.cidr, self.cfg.interface)
                self.holding = True
                self.next_check = now + CHECK_EVERY
            else:
                self.release(self.cfg, self.why_not(now))
                self.holding = False
                self.announce_at = []
        except addr.VipError as exc:
            log.error("%s", exc)
            self.retry_at = now + RETRY_AFTER
        except Exception:  # `ip` answered something unexpected: keep the worker, try again
            log.exception("unexpected error while %s the virtual IP", "taking" if want else "removing")
            self.retry_at = now + RETRY_AFTER

    def why_not(self, now: float) -> str:
        v, pg = self.view, self.pg
        if v is None or not v.holds_lock:
            return "this node does not hold the leader lock"
        if now >= v.lock_valid_until - addr.LEASE_MARGIN:
            return "the leader lock was not renewed in time"
        if pg is None:
            return "PostgreSQL's state is unknown"
        return f"PostgreSQL is {pg.state} as {pg.role}" + (f" ({pg.busy})" if pg.busy else "")

    def release(self, cfg: VipConfig | None, reason: str) -> None:
        if cfg is None:
            return
        try:
            if addr.remove(cfg):
                log.info("removed the virtual IP %s from %s: %s", cfg.cidr, cfg.interface, reason)
        except addr.VipError as exc:
            log.error("%s", exc)
        except Exception:
            log.exception("unexpected error while removing the virtual IP")

    def announce(self, now: float) -> None:
        due = [t for t in self.announce_at if t <= now]
        if not due or not self.holding:
            return
        self.announce_at = [t for t in self.announce_at if t > now]
        try:
            if addr.announce(self.cfg):
                log.debug("sent gratuitous ARP for %s on %s", self.cfg.address, self.cfg.interface)
        except addr.VipError as exc:
            log.warning("%s", exc)

    def timeout(self, now: float) -> float:
        deadlines = [now + CHECK_EVERY]
        if self.announce_at:
            deadlines.append(min(self.announce_at))
        if self.holding and self.view is not None:
            deadlines.append(self.view.lock_valid_until - addr.LEASE_MARGIN)
        if self.retry_at > now:
            deadlines.append(self.retry_at)
        if self.view is None:
            deadlines.append(self.started + STARTUP_GRACE)
        return max(0.0, min(deadlines) - now)

    def run(self) -> None:
        # SIGTERM comes at the end of an orderly shutdown: let go of the address first.
        signal.signal(signal.SIGTERM, self.on_sigterm)
        try:
            try:
                self.holding = addr.present(self.cfg)
            except addr.VipError as exc:
                log.error("%s", exc)
            except Exception:
                log.exception("unexpected error while looking for the virtual IP")
            while True:
                if self.ctx.orphaned():
                    raise ipc.PeerClosed("supervisor")
                for env in pump(self.ctx, self.timeout(time.monotonic())):
                    self.on_message(env.message)
                now = time.monotonic()
                self.reconcile(now)
                self.announce(now)
        except ipc.PeerClosed:
            self.release(self.ctx.config.vip, "the supervisor is gone")
        except Terminate:
            self.release(self.ctx.config.vip, "shutting down")

    @staticmethod
    def on_sigterm(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the release must not be interrupted
        raise Terminate()


def run(ctx: WorkerContext) -> None:
    setup_worker(ctx)
    VipWorker(ctx).run()
