"""One worker's heartbeat: when to ping it, and how a silent one is ended.

The supervisor pings every worker; an answer proves the worker's loop turns,
not merely that a thread is alive.  A worker that has not answered for its
heartbeat deadline is escalated against, in this order:

1. SIGABRT, so its faulthandler writes every thread's stack to the log;
2. SIGKILL once `grace` has passed and it is still there: a worker that
   ignores or blocks SIGABRT, or hangs while dumping, is killed all the same
   (and again every `grace` while it lingers: a process in uninterruptible
   sleep dies only when it wakes);
3. a stopped worker (SIGSTOP, a debugger) cannot act on SIGABRT until it is
   continued, so it gets SIGKILL at once: every second counts while the
   watchdog's lease runs out.

A late answer after SIGABRT changes nothing: the signal is on its way, and
a worker that answers only after missing its deadline is not to be trusted
to keep it next time.  Pure: the caller gives the clock readings and says
whether the process is stopped; step() says what to do.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class Escalate(enum.Enum):
    ABORT = "abort"  # SIGABRT: missed its deadline
    KILL = "kill"  # SIGKILL: still there `grace` after SIGABRT (or after the last SIGKILL)
    KILL_STOPPED = "kill stopped"  # SIGKILL: missed its deadline while stopped


@dataclass
class Heartbeat:
    """Created when the worker starts: a new worker has its whole deadline to answer its first ping."""

    last_pong: float
    next_ping: float = 0.0  # at once: the first ping measures the new worker
    n: int = 0
    aborted_at: float | None = None
    killed_at: float | None = None
    kills: int = 0  # SIGKILLs asked for so far

    def ping(self, now: float, interval: float, early: float = 0.0) -> int | None:
        """The number of the ping to send now, or None when none is due (or due within `early`)."""
        if now + early < self.next_ping:
            return None
        self.next_ping = now + interval
        self.n += 1
        return self.n

    def pong(self, now: float) -> None:
        self.last_pong = max(self.last_pong, now)

    def step(self, now: float, deadline: float, grace: float, stopped: Callable[[], bool]) -> Escalate | None:
        """What to do to the worker now; stopped() (a /proc read) is asked only once the deadline passed."""
        if self.killed_at is not None or self.aborted_at is not None:
            since = self.killed_at if self.killed_at is not None else self.aborted_at
            assert since is not None
            if now - since < grace:
                return None
            self.killed_at = now
            self.kills += 1
            return Escalate.KILL
        if now - self.last_pong < deadline:
            return None
        if stopped():
            self.killed_at = now
            self.kills += 1
            return Escalate.KILL_STOPPED
        self.aborted_at = now
        return Escalate.ABORT

    def next_due(self, deadline: float, grace: float, pinging: bool = True) -> float:
        """When ping() or step() next has something to do (monotonic)."""
        if self.killed_at is not None:
            due = self.killed_at + grace
        elif self.aborted_at is not None:
            due = self.aborted_at + grace
        else:
            due = self.last_pong + deadline
        return min(due, self.next_ping) if pinging else due
