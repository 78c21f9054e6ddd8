"""What a worker's death means, by kind: how soon it comes back, and when the node gives up.

docs/design.md §1 and §11; the table operators read is in docs/operations.md, "When a worker keeps
crashing".  Deaths are counted per kind in a sliding window: a death older than WINDOW is
forgotten, so two incidents an hour apart never add up to a crash loop.  Within BUDGET deaths a
worker comes back quickly.  Beyond it the kind decides:

- api, vip (and a watchdog worker with watchdog.mode off) keep coming back, with a backoff that
  grows to LOOP_CAP: they serve or follow PostgreSQL, and stopping a healthy primary because its
  health endpoint or its address keeper crashes would turn their failure into an outage.
- election, postgres and a watchdog that may have to hold the device give up safely (GiveUp):
  PostgreSQL stopped (immediate) and confirmed gone, only then the leader key released, then the
  supervisor exits 1 and systemd decides.  A node that cannot hold its lease, cannot see its
  database, or cannot keep its watchdog's promise must not go on leading.

The decisions are pure functions of counts and facts; GiveUp drives its effects through a seam
(GiveUpOps) so tests use a fake.  The supervisor only wires them to its loop.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from hasup import ipc
from hasup.vip import address as vipaddr

log = logging.getLogger("hasup.supervisor")

BUDGET = 5  # deaths of one kind within WINDOW that are still ordinary bad luck
WINDOW = 300.0  # seconds a death is remembered
BASE_DELAY = 0.5  # the first delay; doubling with each death in the window
LOOP_CAP = 60.0  # the longest wait between restarts of a crash-looping api or vip worker
# A watchdog worker's device may be armed: the replacement must pet it within W (at least 1 s).
WATCHDOG_CAP = 1.0
IN_BUDGET_CAP = 8.0  # election and postgres: 0.5 (or 0), 1, 2, 4, 8 -- then they give up
# A crash-looping api still answers health checks between crashes: within the budget it comes back
# at once, so one bad request costs the load balancer half a second, not a drained primary.
API_IN_BUDGET = 0.5
STOP_GRACE = 10.0  # seconds for an immediate shutdown to end before every process is killed
GUARD_SLACK = 1.0  # seconds an immediate shutdown needs to take effect (lease guard)


class OnSpent(enum.Enum):
    KEEP_RESTARTING = "keeps restarting, backing off to 60 s; PostgreSQL is left alone"
    GIVE_UP = "gives up safely: PostgreSQL stopped (immediate), then the lock released, exit 1"


@dataclass(frozen=True)
class KindPolicy:
    first_immediate: bool  # a gap in leases (election) or in pets (watchdog) costs more than a loop
    in_budget_cap: float  # the longest delay while deaths are within the budget
    on_spent: OnSpent


def policy_for(kind: str, watchdog_mode: str) -> KindPolicy:
    """The policy of a kind of worker; the watchdog's depends on whether it may hold a device."""
    if kind == "election":
        return KindPolicy(True, IN_BUDGET_CAP, OnSpent.GIVE_UP)
    if kind == "postgres":
        return KindPolicy(False, IN_BUDGET_CAP, OnSpent.GIVE_UP)
    if kind == "watchdog":
        # Off, it holds nothing: its deaths cost nothing.  Otherwise a node whose watchdog worker keeps
        # dying cannot keep the lease rule's promise, docs/design.md §4 (an armed device goes unpetted
        # between incarnations and fires in the middle of whatever PostgreSQL does; mode required must
        # not lead unarmed), so it stops in order rather than leave the device to reset it at a random
        # moment.
        spent = OnSpent.KEEP_RESTARTING if watchdog_mode == "off" else OnSpent.GIVE_UP
        return KindPolicy(True, WATCHDOG_CAP, spent)
    return KindPolicy(False, API_IN_BUDGET, OnSpent.KEEP_RESTARTING)  # api, vip


class DeathWindow:
    """Deaths of one kind of worker in the last `window` seconds (monotonic); older ones are forgotten."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._deaths: deque[float] = deque()

    def record(self, now: float) -> int:
        """Count a death at now; the deaths in the window, this one included."""
        self._deaths.append(now)
        return self.count(now)

    def count(self, now: float) -> int:
        while self._deaths and now - self._deaths[0] >= self.window:
            self._deaths.popleft()
        return len(self._deaths)


@dataclass(frozen=True)
class Verdict:
    restart_in: float | None  # seconds until the restart; None: give up
    crash_loop: bool  # beyond the budget: say so loudly


def verdict(policy: KindPolicy, deaths: int, budget: int = BUDGET) -> Verdict:
    """What to do after a death, `deaths` being those in the window, this one included."""
    if deaths <= budget:
        if deaths == 1 and policy.first_immediate:
            return Verdict(0.0, False)
        return Verdict(min(policy.in_budget_cap, BASE_DELAY * 2 ** (deaths - 1)), False)
    if policy.on_spent is OnSpent.GIVE_UP:
        return Verdict(None, True)
    # 1, 2, 4, ... 60: a loop that crashes at start costs one fork a minute, not a spinning CPU.
    return Verdict(min(LOOP_CAP, 2.0 ** (deaths - budget - 1)), True)


# -- while election is down -------------------------------------------------------------------


def lease_lapsing(view: ipc.ClusterView | None, pg: ipc.PgState | None, now: float, margin: float) -> bool:
    """Election is not running, and the lease it last granted ends within `margin`: PostgreSQL must
    stop now, before the key can expire and a replica take over (the watchdog's job when it is armed;
    with watchdog.mode off nobody else does it).  Paused, the key expires but nobody fails over."""
    if view is None or not view.holds_lock or view.paused or pg is None:
        return False
    return pg.role == "primary" and pg.postmaster_pid is not None and now >= view.lock_valid_until - margin


def lease_deadline(view: ipc.ClusterView | None, margin: float) -> float | None:
    """When lease_lapsing turns true for this view (None: it cannot)."""
    if view is None or not view.holds_lock or view.paused:
        return None
    return view.lock_valid_until - margin


def vip_restart_now(held_at_death: bool, view: ipc.ClusterView | None, pg: ipc.PgState | None,
                    now: float) -> bool:
    """A vip worker waiting out its backoff may have left the address on this node: once the node
    should no longer carry it, start the worker at once (its first act is to take it off) rather
    than let two hosts answer for the address until the backoff ends."""
    return held_at_death and not vipaddr.wanted(view, pg, now)


# -- giving up -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stopped:
    confirmed: bool  # /proc shows no process of this node's PostgreSQL left
    killed: tuple[int, ...]
    reason: str


class GiveUpOps(Protocol):
    """What GiveUp needs of the supervisor: signals, /proc, and its pipes."""

    def stop_election(self) -> None:
        """Tell a live election worker to stop acting (Shutdown): it only keeps the lock while PostgreSQL runs."""

    def quit_postmaster(self) -> bool:
        """SIGQUIT (immediate shutdown) to this node's postmaster; False when none runs."""

    def postmaster_alive(self) -> bool: ...

    def confirm_stopped(self) -> Stopped:
        """Kill whatever is left of PostgreSQL (orphaned backends too) and confirm it through /proc."""

    def election_alive(self) -> bool: ...

    def tell_election_stopped(self, stopped: Stopped) -> None:
        """PostgreSQL is confirmed gone: election may release the leader key."""

    def lock_released(self) -> bool:
        """Since tell_election_stopped, election said it does not hold the leader key (or finished)."""

    def disarm(self, reason: str) -> None:
        """Magic-close the watchdog device: only ever after PostgreSQL is confirmed stopped."""


class GiveUp:
    """The node stopping after a crash loop: PostgreSQL, then the lock, then the workers.

    Immediate, not fast: a checkpoint could outlast the lease of an election that is gone.  The
    lock is released only once /proc confirms PostgreSQL gone; unconfirmed, the key is left to
    expire (and an armed watchdog resets the node), as after a fence that is not confirmed.
    Driven by the supervisor's loop through step(), which never waits.
    """

    def __init__(self, ops: GiveUpOps, kind: str, now: float, release_grace: float) -> None:
        self.ops = ops
        self.kind = kind
        self.release_grace = release_grace
        self.done = False
        self.phase = "stopping"
        ops.stop_election()
        found = ops.quit_postmaster()
        log.critical("giving up after the %s worker's crash loop: %s", kind,
                     "stopping PostgreSQL (immediate)" if found else "PostgreSQL is not running")
        self.deadline = now + STOP_GRACE

    def step(self, now: float) -> bool:
        """Advance; True once the workers may be terminated."""
        if self.done:
            return True
        if self.phase == "stopping":
            if self.ops.postmaster_alive() and now < self.deadline:
                return False
            stopped = self.ops.confirm_stopped()
            if not stopped.confirmed:
                log.critical("PostgreSQL could not be confirmed stopped (%s): keeping the leader key; it expires "
                             "after ttl and the watchdog, if armed, resets this node", stopped.reason)
                return self.finish()
            log.info("PostgreSQL is stopped (%s)", stopped.reason)
            if not self.ops.election_alive():
                self.ops.disarm("PostgreSQL stopped: giving up")
                return self.finish()  # nobody to release the key: it expires after ttl
            self.ops.tell_election_stopped(stopped)
            self.phase, self.deadline = "releasing", now + self.release_grace
            return False
        if self.ops.election_alive() and not self.ops.lock_released() and now < self.deadline:
            return False
        if not self.ops.lock_released():
            log.error("election did not confirm releasing the leader key: it expires after ttl")
        self.ops.disarm("PostgreSQL stopped: giving up")
        return self.finish()

    def finish(self) -> bool:
        self.done = True
        self.phase = "done"
        return True
