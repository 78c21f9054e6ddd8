"""Election's side of the postgres worker: its latest PgState, and the requests sent to it in flight.

A reply is matched to the action that sent its request, so the policy
can weigh the answer (hasup.election.protocol).  A request lost with a
replaced worker, or older than its deadline, is forgotten: it is never
answered, and the phase waiting for it ends on the next cycle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from hasup import ipc
from hasup.election import actions as act
from hasup.election.sync import sync_now
from hasup.timing import STALE_PGSTATE

log = logging.getLogger("hasup.election")

# Seconds between the first probe that shows a new synchronous_standby_names and the one whose WAL
# position is taken as where it took effect: the walsenders, which release waiting commits, apply a
# reload a moment after the probe's own backend does.
SYNC_SETTLE_DELAY = 0.5

# Seconds a request may run before its outcome counts as unknown; others get pg_ctl_timeout + 120 s.
REQUEST_DEADLINES = {"Bootstrap": 3600.0, "CreateReplica": 86400.0, "Reinitialize": 86400.0}


class PostgresLink:
    def __init__(self, send: Callable[[ipc.Message], object], pg_ctl_timeout: float, hook_time: float = 0.0) -> None:
        self.send = send
        self.pg_ctl_timeout = pg_ctl_timeout
        self.hook_time = hook_time  # what pre_promote and before_stop may add to a request (hasup.postgresql.hooks)
        self.pg: ipc.PgState | None = None
        self.received_at = 0.0
        # After a reply, the PgState we hold predates the action's effect; the worker sends a new one
        # right behind the reply.  Acting on the old one could, say, clone over a data directory just filled.
        self.outdated = False
        self.pending: dict[int, tuple[ipc.Request, int | None, act.Action | None]] = {}  # id -> (req, pid, action)
        self.next_id = 1
        # Where the primary's current synchronous_standby_names took effect (hasup.election.quorum.settled):
        # the value, when a probe first showed it, and the WAL position recorded a moment later.
        self.sync_names: str | None = None
        self.sync_names_at = 0.0
        self.sync_since: int | None = None
        self.primary_since: float | None = None  # monotonic: when PostgreSQL was first seen as a primary

    def request(self, cls: type[ipc.Request], action: act.Action | None = None, **kwargs: Any) -> int:
        rid = self.next_id
        self.next_id += 1
        deadline = time.monotonic() + REQUEST_DEADLINES.get(cls.__name__, self.pg_ctl_timeout + 120.0) \
            + float(kwargs.get("timeout") or 0) + self.hook_time
        req = cls(id=rid, deadline=deadline, **kwargs)
        self.pending[rid] = (req, self.pg.worker_pid if self.pg else None, action)
        self.send(req)
        return rid

    def in_flight(self) -> list[str]:
        """The requests still waiting for their replies, by name ("promote", "stop", ...)."""
        now = time.monotonic()
        for rid, (req, _pid, _action) in list(self.pending.items()):
            if now > req.deadline:
                log.warning("%s request %d passed its deadline: outcome unknown", type(req).__name__, rid)
                del self.pending[rid]
        return sorted({type(req).__name__.lower() for req, _pid, _action in self.pending.values()})

    def fresh(self, now: float) -> bool:
        return self.pg is not None and now - self.received_at < STALE_PGSTATE and not self.outdated

    def on_reply(self, reply: ipc.Reply) -> tuple[bool, act.Action | None]:
        """(whether we were waiting for it, the action that sent its request)."""
        entry = self.pending.pop(reply.id, None)
        if entry is None:
            return False, None
        self.outdated = True
        log.log(logging.INFO if reply.ok else logging.ERROR, "%s %s%s", reply.request,
                "succeeded" if reply.ok else "failed", f": {reply.message}" if reply.message else "")
        return True, entry[2]

    def track_sync_names(self, state: ipc.PgState) -> None:
        if state.role != "primary" or not state.probe_ok:
            if state.role != "primary":
                self.primary_since = None
            self.sync_names, self.sync_since = None, None
            return
        if self.primary_since is None:
            self.primary_since = self.received_at
        if state.sync_standby_names != self.sync_names or self.sync_names is None:
            self.sync_names, self.sync_names_at, self.sync_since = state.sync_standby_names, state.probe_at, None
        elif self.sync_since is None and state.probe_at - self.sync_names_at >= SYNC_SETTLE_DELAY:
            self.sync_since = state.wal_position

    def on_pgstate(self, state: ipc.PgState, synchronous_mode: bool) -> bool:
        """Take a new PgState; True when it changed enough for a cycle to run at once."""
        prev = self.pg
        self.pg, self.received_at, self.outdated = state, time.monotonic(), False
        self.track_sync_names(state)
        for rid, (_req, pid, _action) in list(self.pending.items()):
            if pid is not None and state.worker_pid != pid:
                del self.pending[rid]  # a restarted postgres worker lost whatever it was doing for us
        if prev is None or (prev.state, prev.role, prev.busy, prev.probe_ok, prev.failed_probes) != \
                (state.state, state.role, state.busy, state.probe_ok, state.failed_probes):
            return True
        # In synchronous mode, the next step of a standby change can be taken now.
        return synchronous_mode and (prev.sync_standby_names, sync_now(prev.replication)) != \
            (state.sync_standby_names, sync_now(state.replication))
