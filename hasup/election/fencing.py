"""When our primary counts as hung: the evidence the policy weighs before it fences (docs/design.md §3).

The policy returns FencePostgres once a live postgres worker has failed
to reach our primary for the health deadline; the supervisor kills and
confirms, since it is the subreaper that sees every process and never
blocks on PostgreSQL.  What follows its answer is in
hasup.election.protocol: only a confirmed fence lets election release the
leader key; an unconfirmed one stops every lock write, so the lease runs
out and the watchdog resets the node.
"""

from __future__ import annotations

import logging

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
