"""The order in which an orderly stop ends the node: PostgreSQL first, then the workers.

1. PostgreSQL stops before anything that could stop it is terminated:
   - election, when it runs, gets Shutdown: it asks the postgres worker to stop
     PostgreSQL (fast), and releases the leader key only once that stop is
     confirmed (or, in a paused cluster, leaves both running on purpose);
   - without election (dead at the stop, or dying during it) the supervisor asks
     the postgres worker itself (Stop, fast) and waits for its reply; the leader
     key then expires after ttl, since only election may delete it.
   A postgres worker terminated before its stop finished would leave a running
   primary behind (the supervisor's last resort, SIGQUIT, is an immediate stop).
2. Then every worker gets SIGTERM at once: PostgreSQL is stopped or left on
   purpose, and none of the others depends on another still running.
3. `term_grace` later, SIGKILL to any still there, and again every term_grace.

The first phase is bounded by `budget` (pg_ctl_timeout and some): a stop that
hangs ends in phase 2 all the same.  Pure: the supervisor reports which workers
run and what they answered; step() returns what to send.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Collection
from dataclasses import dataclass

TERM_GRACE = 10.0  # seconds from SIGTERM to SIGKILL: gunicorn's graceful stop (5 s) and the vip's release fit
# The order SIGTERMs are sent in (all in the same turn of the loop): fixed, so logs and tests read the same.
TERM_ORDER = ("election", "postgres", "vip", "api", "watchdog")


class Phase(enum.Enum):
    ELECTION = "election stops PostgreSQL, then releases the leader key"
    POSTGRES = "the postgres worker stops PostgreSQL"
    TERMINATE = "the workers are terminated"


@dataclass(frozen=True)
class Tell:
    """A message for a worker: "shutdown" for election, "stop" (fast) for the postgres worker."""

    role: str
    what: str


@dataclass(frozen=True)
class Signal:
    role: str
    sig: int


Command = Tell | Signal


class ShutdownOrder:
    def __init__(self, now: float, budget: float, term_grace: float = TERM_GRACE,
                 postgres_settled: bool = False) -> None:
        """postgres_settled: PostgreSQL is already stopped or left on purpose (a give-up finished it)."""
        self.started = now
        self.budget = budget
        self.term_grace = term_grace
        self.phase: Phase | None = Phase.TERMINATE if postgres_settled else None
        self.term_at: float | None = None
        self.termed: set[str] = set()
        self.why = "PostgreSQL is stopped" if postgres_settled else ""  # why the workers are being terminated

    def step(self, now: float, running: Collection[str], election_done: bool, postgres_done: bool) -> list[Command]:
        """What to send now.  election_done: election reported ShutdownDone; postgres_done: the postgres
        worker answered the supervisor's own Stop."""
        out: list[Command] = []
        if self.phase is None:
            if "election" in running:
                out.append(Tell("election", "shutdown"))
                self.phase = Phase.ELECTION
            else:
                self._without_election(running, out)
        if self.phase is Phase.ELECTION:
            if election_done:
                self._terminate("election finished its shutdown")
            elif "election" not in running:
                self._without_election(running, out)
        if self.phase is Phase.POSTGRES and (postgres_done or "postgres" not in running):
            self._terminate("the postgres worker " + ("answered the stop" if postgres_done else "is gone"))
        if self.phase is not Phase.TERMINATE and now - self.started >= self.budget:
            self._terminate(f"stopping PostgreSQL took over {self.budget:g} s")
        if self.phase is Phase.TERMINATE:
            out += self._signals(now, running)
        return out

    def _without_election(self, running: Collection[str], out: list[Command]) -> None:
        if "postgres" in running:
            out.append(Tell("postgres", "stop"))
            self.phase = Phase.POSTGRES
        else:
            self._terminate("no worker is left to stop PostgreSQL")

    def _terminate(self, why: str) -> None:
        if self.phase is not Phase.TERMINATE:
            self.phase = Phase.TERMINATE
            self.why = why

    def _signals(self, now: float, running: Collection[str]) -> list[Command]:
        order = sorted(running, key=lambda r: TERM_ORDER.index(r) if r in TERM_ORDER else len(TERM_ORDER))
        if self.term_at is None:
            self.term_at = now
        out: list[Command] = [Signal(r, signal.SIGTERM) for r in order if r not in self.termed]
        self.termed.update(order)
        if now - self.term_at >= self.term_grace:
            out += [Signal(r, signal.SIGKILL) for r in order]
            self.term_at = now  # again a grace later, for one that was in uninterruptible sleep
        return out

    def finished(self, running: Collection[str]) -> bool:
        return self.phase is Phase.TERMINATE and not running

    def next_due(self) -> float:
        """When step() next has something to do by the clock alone (inf: only on news from a worker)."""
        if self.phase is Phase.TERMINATE:
            return self.term_at + self.term_grace if self.term_at is not None else self.started
        return self.started + self.budget
