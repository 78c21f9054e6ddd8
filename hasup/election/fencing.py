"""Election's side of fencing a hung primary (DESIGN §3): when, the supervisor's answer, and after.

Election decides (ha.decide returns FencePostgres once a live postgres
worker has failed to reach our primary for the health deadline); the
supervisor kills and confirms, since it is the subreaper that sees every
process and never blocks on PostgreSQL.  Only a confirmed fence lets
election release the leader key.  An unconfirmed one stops every lock
write, so the lease runs out and the watchdog resets the node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from hasup import ipc
from hasup.timing import FAILED_PROBES_TO_FENCE, Deadlines

log = logging.getLogger("hasup.election")


def unhealthy_for(pg: ipc.PgState | None, received_at: float, now: float, deadlines: Deadlines) -> float:
    """Seconds our PostgreSQL has not answered, vouched for by a live worker; else 0.

    A silent worker proves nothing about PostgreSQL (it is replaced by its
    heartbeat instead), so the report must be recent and carry enough
    consecutive failed probes.
    """
    if pg is None or pg.probe_ok or pg.busy or pg.postmaster_pid is None:
        return 0.0
    if pg.failed_probes < FAILED_PROBES_TO_FENCE or now - received_at > deadlines.pg_report_max_age:
        return 0.0
    return max(0.0, now - pg.probe_at)


class Fencing:
    def __init__(self, send: Callable[[ipc.Message], object]) -> None:
        self.send = send
        self.in_progress = False
        self.failed = False  # unconfirmed: no lock writes until the postmaster is gone
        self.sit_out_until = 0.0  # after a fence, leave the leader race to others for a while

    def start(self, pg: ipc.PgState | None, reason: str) -> None:
        self.in_progress = True
        self.send(ipc.Fence(pg.postmaster_pid if pg is not None else None, reason))

    def finished(self, done: ipc.FenceDone, ttl: float) -> bool:
        """Record the supervisor's answer; True when the leader key may be released."""
        self.in_progress = False
        if done.confirmed:
            log.warning("fenced PostgreSQL (%d processes killed): %s", len(done.killed), done.reason)
            self.sit_out(ttl)
            return True
        log.critical("fencing PostgreSQL could not be confirmed (%s): no more leader-key writes, the lease "
                     "runs out and the watchdog (if armed) resets this node", done.reason)
        self.failed = True
        return False

    def on_pgstate(self, pg: ipc.PgState) -> None:
        if self.failed and pg.postmaster_pid is None:
            log.warning("the unconfirmed fence is over: PostgreSQL has gone")
            self.failed = False

    def sitting_out(self) -> bool:
        return time.monotonic() < self.sit_out_until

    def sit_out(self, ttl: float) -> None:
        """We gave the lock up because our PostgreSQL is down: let a replica win the next race."""
        self.sit_out_until = time.monotonic() + ttl

    def someone_else_leads(self) -> None:
        """Another node holds the lock: the race we sat out is over, we are an ordinary replica again."""
        self.sit_out_until = 0.0
