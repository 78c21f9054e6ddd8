"""The HA policy of a standby cluster (pure): its leader streams from a remote primary and nobody is
ever promoted.

In a standby cluster (the dynamic configuration's `standby_cluster`, hasup.config.standby) the member
holding the leader key is the *standby leader*: a replica of `standby_cluster`'s host, followed by the
other members as a primary's replicas follow it.  When it dies a healthy member takes the key and
re-points to the remote; a switchover hands the key over without stopping anyone.  A primary that
finds itself leading a standby cluster (the section just appeared: `demote-cluster`) is stopped
cleanly and comes back as the standby leader; when the section goes away (`promote-cluster`) the
ordinary policy promotes the standby leader.  hasup.election.policy asks these functions at the few
points where a standby cluster differs; everything else (member keys, cascading, rewinds) is shared.
"""

from __future__ import annotations

from hasup.config.standby import REMOTE
from hasup.dcs.model import Cluster
from hasup.election.actions import (
    AcquireLock,
    Action,
    ClearFailover,
    Decision,
    RefreshLock,
    ReleaseLock,
    RunDemote,
    RunFollow,
    RunPromote,
    RunStart,
    WriteStatus,
)
from hasup.ipc import PgState

NEVER_PROMOTED = "a standby cluster promotes nobody"


def as_leader(pg: PgState, me: str, switchover: tuple[list[Action], str] | None) -> Decision:
    """The lock holder of a standby cluster, PostgreSQL running.  `switchover`: what the ordinary
    policy's switchover step would do (hasup.election.policy._manual_failover), when one is requested."""
    if pg.role == "primary":
        # PostgreSQL stops cleanly (hasup.postgresql.lifecycle: its walsenders send everything first)
        # and comes back streaming from the remote; the lock stays ours meanwhile.
        return Decision((RefreshLock(), RunFollow(REMOTE)),
                        "demoting self to a standby leader: standby_cluster is set in the cluster configuration")
    actions: list[Action] = [RefreshLock(), WriteStatus()]
    if pg.upstream != REMOTE:
        return Decision((*actions, RunFollow(REMOTE)),
                        f"following the remote primary: I am ({me}), the standby leader with the lock")
    if switchover is not None:
        steps, reason = switchover
        if any(isinstance(a, RunDemote) for a in steps):
            # Everyone replays the same remote WAL: nothing to hand over but the key.  The failover key
            # stays, so only the candidate takes it (hasup.election.policy._leader_race).
            return Decision((WriteStatus(), ReleaseLock()), "switchover: handing the standby leader role over")
        return Decision((*actions, *steps), reason)
    return Decision(tuple(actions), f"no action. I am ({me}), the standby leader with the lock")


def start_leader() -> Decision:
    """The lock holder's PostgreSQL is down: it starts as the standby leader, whatever it ran as before."""
    return Decision((RefreshLock(), RunStart(as_primary=False, leader=REMOTE)),
                    "starting as a standby leader because i had the session lock")


def start_unled() -> Decision:
    """A stopped member of a standby cluster without a leader starts streaming from the remote rather than
    from nobody; whoever takes the lock next, it re-points then."""
    return Decision((RunFollow(REMOTE),), "trying to follow a remote member because standby cluster is unhealthy")


def take_over(handed_over: bool) -> Decision:
    """This replica wins the race for a free lock (or is the switchover's candidate): it leads by
    re-pointing to the remote, never by a promotion."""
    if handed_over:
        return Decision((AcquireLock(), ClearFailover(), RunFollow(REMOTE)),
                        "took the leader lock as the standby leader (switchover)")
    return Decision((AcquireLock(), RunFollow(REMOTE)), "took the leader lock as the standby leader")


def never_promote(decision: Decision) -> Decision:
    """A promotion in a standby cluster would make a second writable copy of the remote's database:
    whatever asked for one, it is dropped (the policy's standby paths never do)."""
    kept = tuple(a for a in decision.actions if not isinstance(a, RunPromote))
    if kept == decision.actions:
        return decision
    return Decision(kept, f"{decision.reason} (not done: {NEVER_PROMOTED})", decision.recheck_in, None)


def is_standby_leader(cluster: Cluster | None, me: str, standby_cluster: bool) -> bool:
    """This node leads a standby cluster (its member key says role standby_leader)."""
    return bool(standby_cluster and cluster is not None and cluster.leader is not None
                and cluster.leader.name == me)
