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
        self.received: int | None = None  # the replica's received position at the last look

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
        """Seconds this running replica, following the leader, has not been streaming from it.

        Streaming on a timeline older than the leader's without receiving anything new counts as not
        streaming: a replica whose WAL went past the leader's fork point reconnects every few seconds, is
        sent what it already has and is cut off again, and a probe may catch it in between."""
        now = self.clock()
        following = cluster is not None and cluster.leader is not None and pg is not None \
            and pg.state == "running" and pg.role == "replica" and pg.upstream == cluster.leader.name
        received_before = self.received
        self.received = pg.received_location if following and pg is not None else None
        if not following or (pg is not None and cluster is not None and streams(pg, cluster, received_before)):
            self.stuck_since = None
            return 0.0
        if self.stuck_since is None:
            self.stuck_since = now
        return now - self.stuck_since


def streams(pg: ipc.PgState, cluster: Cluster, received_before: int | None) -> bool:
    """The replica streams from the leader: on the leader's timeline, or catching up to it (what it has
    received grows: a lagging replica reaches the switch to the new timeline only at the fork point)."""
    if pg.replication_state != "streaming":
        return False
    leader = cluster.leader_member()
    leader_tl = leader.timeline if leader is not None else None
    if pg.timeline is None or leader_tl is None or pg.timeline >= leader_tl:
        return True
    return pg.received_location is not None and (received_before is None or pg.received_location > received_before)
