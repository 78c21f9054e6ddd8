"""Where the supervisor sends what it receives, and what a (re)started worker gets at once.

Every message names its destinations (`ROUTE` in hasup.ipc).  Snapshots (latest
value wins) are also kept here, so that a worker that starts -- after a crash,
usually -- gets the latest of each snapshot it serves from at once, instead of
acting on nothing until the next one is produced: without them a restarted api
answers 503 on /primary until election's next cycle, a restarted vip worker
does not know whether to keep the address, a restarted postgres worker renders
with the bootstrap configuration instead of the cluster's.

The table says, for every pair of a worker and a snapshot routed to it, whether
it is replayed and why (a test checks that no pair is left out).  A replayed
snapshot carries its own times (probe_at, read_at, lock_valid_until), so
receivers judge its age by its content; election is the exception, below.
"""

from __future__ import annotations

from typing import TypeVar

from hasup import ipc

SUPERVISOR = "supervisor"

# role -> the snapshot kinds it gets at start, newest first kept by the supervisor.
REPLAY: dict[str, tuple[type[ipc.Message], ...]] = {
    # Serves health checks from them alone; /primary needs the view (do we hold the lock, until when)
    # and PgState (is PostgreSQL a running primary); /metrics the supervisor's log-loss count.
    "api": (ipc.ClusterView, ipc.PgState, ipc.WatchdogState, ipc.LogLoss),
    # The address follows the lock and PostgreSQL's role: it must know at once whether we still lead.
    "vip": (ipc.ClusterView, ipc.PgState),
    # The cluster's dynamic configuration (parameters, slots) is in the view.
    "postgres": (ipc.ClusterView,),
    "election": (),
    "watchdog": (),  # gets only Lease, on its own pipe, which election re-sends on WorkerRestarted
}

# Pairs routed but deliberately not replayed, and why.
NOT_REPLAYED: dict[tuple[str, type[ipc.Message]], str] = {
    ("election", ipc.PgState): "election judges a PgState's freshness by when it arrives (STALE_PGSTATE): "
                               "a replayed copy would look fresh however old it is; the postgres worker "
                               "sends a new one every probe interval",
    ("election", ipc.WatchdogState): "a copy from a watchdog worker that has died since could let election "
                                     "lead on a device nobody holds (mode required); the watchdog worker "
                                     "reports when it starts and on every change",
}

# Snapshots the supervisor produces itself, and the workers it sends them to.
OWN: dict[type[ipc.Message], tuple[str, ...]] = {ipc.LogLoss: ("api",)}

M = TypeVar("M", bound=ipc.Message)


def receivers(kind: type[ipc.Message]) -> tuple[str, ...]:
    """Every worker a snapshot of this kind reaches, whoever produces it."""
    return tuple(r for r in kind.ROUTE + OWN.get(kind, ()) if r != SUPERVISOR)


def destinations(message: ipc.Message) -> tuple[str, ...]:
    """The workers a message from a worker goes on to (the supervisor itself is not one)."""
    return tuple(r for r in message.ROUTE if r != SUPERVISOR)


class Snapshots:
    """The latest of each snapshot kind that passed through the supervisor (or that it produced)."""

    def __init__(self) -> None:
        self._last: dict[type[ipc.Message], ipc.Message] = {}

    def keep(self, message: ipc.Message) -> None:
        if message.SNAPSHOT:
            self._last[type(message)] = message

    def last(self, kind: type[M]) -> M | None:
        found = self._last.get(kind)
        return found if isinstance(found, kind) else None

    def for_start(self, role: str) -> list[ipc.Message]:
        """What a worker of this role gets the moment it starts, in the table's order."""
        return [m for m in (self._last.get(kind) for kind in REPLAY.get(role, ())) if m is not None]
