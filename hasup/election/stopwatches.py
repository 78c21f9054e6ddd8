"""How long a condition the HA rules care about has held, measured across election cycles.

Each stopwatch starts when its condition is first seen and resets when it
ends; the rules in hasup.election.policy only ever see the elapsed seconds (ha.Local).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hasup import ipc
from hasup.dcs.model import Cluster
from hasup.election import policy as ha


class Stopwatches:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.down_since: float | None = None
        self.stuck_since: float | None = None
        self.failover_seen: tuple[int, float] = (0, 0.0)  # (failover key index, when first seen)

    def down_for(self, pg: ipc.PgState | None, holds_lock: bool) -> float:
        """Seconds our PostgreSQL has not been running while we hold the lock (primary_start_timeout).

        The clock starts when it is seen down and keeps running through restart attempts."""
        now = self.clock()
        if not holds_lock or pg is None or pg.state == "running":
            self.down_since = None
        elif self.down_since is None and pg.state in ha.NOT_RUNNING:
            self.down_since = now
        return 0.0 if self.down_since is None else now - self.down_since

    def failover_age(self, cluster: Cluster | None) -> float:
        """Seconds since we first saw the current failover request (by its etcd index)."""
        index = cluster.failover_index if cluster is not None and cluster.failover is not None else 0
        if index != self.failover_seen[0]:
            self.failover_seen = (index, self.clock())
        return self.clock() - self.failover_seen[1] if index else 0.0

    def not_streaming_for(self, pg: ipc.PgState | None, cluster: Cluster | None) -> float:
        """Seconds this running replica, following the leader, has not been streaming from it."""
        now = self.clock()
        following = cluster is not None and cluster.leader is not None and pg is not None \
            and pg.state == "running" and pg.role == "replica" and pg.upstream == cluster.leader.name
        if not following or (pg is not None and pg.replication_state == "streaming"):
            self.stuck_since = None
            return 0.0
        if self.stuck_since is None:
            self.stuck_since = now
        return now - self.stuck_since
