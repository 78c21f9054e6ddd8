"""A cycle that raises costs that cycle, not the worker: count it, log its traceback once per kind, and stop
a primary whose lease the failing cycles cannot renew."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable

from hasup import ipc
from hasup.config import DynamicConfig

log = logging.getLogger("hasup.election")

RELOG_AFTER = 300.0  # seconds before the same failure is logged with its traceback again


class CycleErrors:
    def __init__(self) -> None:
        self.count = 0
        self.logged_at: dict[tuple[str, str, int], float] = {}  # (exception, file, line) -> monotonic

    def record(self, exc: Exception, now: float) -> None:
        self.count += 1
        frames = traceback.extract_tb(exc.__traceback__)
        where = frames[-1] if frames else None
        kind = (type(exc).__name__, where.filename if where else "", (where.lineno or 0) if where else 0)
        if now - self.logged_at.get(kind, -RELOG_AFTER) >= RELOG_AFTER:
            self.logged_at[kind] = now
            log.error("election cycle failed (%d so far); carrying on", self.count, exc_info=exc)
        else:
            log.warning("election cycle failed again (%d so far): %s: %s", self.count, type(exc).__name__,
                        str(exc)[:200])


def lease_lapses(pg: ipc.PgState | None, paused: bool, shutting_down: bool, lease_left: float, d: DynamicConfig,
                 pending: Iterable[tuple[ipc.Request, object, object]]) -> bool:
    """Cycles keep failing and cannot renew the lock: must our running primary stop before its lease ends?

    As a leader cut off from etcd does, so no replica that takes over finds it still writable.  Not in
    maintenance mode (the operator owns PostgreSQL), not while a renewal may still come in time, and
    not twice.
    """
    if pg is None or pg.role != "primary" or pg.state != "running" or shutting_down or paused:
        return False
    if lease_left > d.loop_wait + d.retry_timeout:
        return False
    return not any(isinstance(req, ipc.Stop) and req.mode == "immediate" for req, _pid, _action in pending)
