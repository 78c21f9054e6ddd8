"""What the HA policy can ask for: the actions a Decision lists, in the order they must run.

The election worker carries them out one by one.  An action that fails
(an etcd write refused or unreachable) stops the rest of the list, since
later steps assume the earlier ones happened (the sync key before
PostgreSQL's setting; the lock before a promote), unless it is marked
`best_effort`: the release of a lock that expires anyway, a record a
later cycle rewrites.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from hasup.election.phases import Phase


@dataclass(frozen=True)
class Action:
    best_effort: ClassVar[bool] = False  # a failure is logged and the list goes on


# -- the leader lock and the keys beside it ----------------------------------------------------


@dataclass(frozen=True)
class AcquireLock(Action):
    pass


@dataclass(frozen=True)
class RefreshLock(Action):
    pass


@dataclass(frozen=True)
class TakeLock(Action):
    """Write the lock whatever it holds: the bootstrap that just won the initialize race owns the cluster."""

    best_effort: ClassVar[bool] = True  # not taken: the next cycle races for it as a running primary


@dataclass(frozen=True)
class ReleaseLock(Action):
    best_effort: ClassVar[bool] = True  # a lock we fail to delete expires after ttl


@dataclass(frozen=True)
class YieldLock(Action):
    """Release the lock and sit out the next leader race: our PostgreSQL is down, let a replica lead."""

    best_effort: ClassVar[bool] = True


@dataclass(frozen=True)
class ClaimInitialize(Action):
    """Win the bootstrap race (create-only `initialize` = "")."""


@dataclass(frozen=True)
class PublishInitialize(Action):
    sysid: str
    best_effort: ClassVar[bool] = True


@dataclass(frozen=True)
class DeleteInitialize(Action):
    """Give the bootstrap race back after a failed bootstrap, so another node may try."""

    best_effort: ClassVar[bool] = True


@dataclass(frozen=True)
class WriteInitialConfig(Action):
    """The dynamic configuration from bootstrap.dcs, written by the node that bootstrapped."""

    best_effort: ClassVar[bool] = True


@dataclass(frozen=True)
class RepublishConfig(Action):
    """The leader writes back the dynamic configuration it runs with when etcd's config key is gone:
    the last one read (or cached locally), else bootstrap.dcs."""

    best_effort: ClassVar[bool] = True  # the next cycle sees the key still missing and tries again


@dataclass(frozen=True)
class ClearFailover(Action):
    best_effort: ClassVar[bool] = True  # a stale failover key is cleared by the next cycle that sees it


@dataclass(frozen=True)
class RecordHandOver(Action):
    """The status key's optime set to where the switchover stopped: candidates promote only past it."""

    lsn: int
    best_effort: ClassVar[bool] = True  # the fast stop already waited for the streaming candidate


@dataclass(frozen=True)
class WriteHistory(Action):
    pass


@dataclass(frozen=True)
class WriteStatus(Action):
    pass


@dataclass(frozen=True)
class WriteSync(Action):
    """Record in the sync key which standbys are synchronous (hasup.election.sync: before PostgreSQL drops one)."""

    standbys: tuple[str, ...]
    quorum: int | None = None  # quorum commit: how many of them a candidate must see besides one (else unset)


@dataclass(frozen=True)
class ClearSync(Action):
    pass


@dataclass(frozen=True)
class WriteFailsafe(Action):
    """The members (name, api_url) that must confirm a leader cut off from etcd (failsafe_mode)."""

    members: tuple[tuple[str, str], ...]


# -- requests to the postgres worker (each answered by a reply, an input of the next decision) -----


@dataclass(frozen=True)
class RunBootstrap(Action):
    pass


@dataclass(frozen=True)
class RunCreateReplica(Action):
    source: str | None  # member name; None: restore by the replica methods that need no leader


@dataclass(frozen=True)
class RunStart(Action):
    as_primary: bool
    leader: str | None = None


@dataclass(frozen=True)
class RunPromote(Action):
    require_lsn: int | None = None  # a switchover target promotes only once it has received this


@dataclass(frozen=True)
class RunFollow(Action):
    leader: str | None  # None: stay/become a replica of nobody for now
    rewind: bool = False  # stop a running replica and rewind it: it cannot stream from this leader


@dataclass(frozen=True)
class RunStop(Action):
    mode: str
    for_shutdown: bool = False  # hasup is stopping: its reply ends the shutdown


@dataclass(frozen=True)
class RunDemote(Action):
    """Switchover: checkpoint, then a fast stop, which waits until connected standbys have flushed the
    shutdown checkpoint; the lock is kept.  Its reply hands over (RecordHandOver, ReleaseLock): the
    candidate, named in the failover key, promotes only past the recorded point."""

    candidate: str | None  # None: whichever healthy replica wins the race


@dataclass(frozen=True)
class SetSyncStandbys(Action):
    """synchronous_standby_names for PostgreSQL (hasup.election.sync: before the key names a new one)."""

    setting: str


@dataclass(frozen=True)
class RunResumeReplay(Action):
    """pg_wal_replay_resume() on this replica: its WAL replay was paused, and the cluster is not."""


# Requests of the ordinary cycle: their replies move no protocol on (the next cycle sees their effect).
ORDINARY_REQUESTS: tuple[type[Action], ...] = (RunCreateReplica, RunStart, RunFollow, SetSyncStandbys,
                                               RunResumeReplay)
# Requests whose replies are steps of a protocol (hasup.election.protocol).
PROTOCOL_REQUESTS: tuple[type[Action], ...] = (RunBootstrap, RunPromote, RunDemote, RunStop)
REQUESTS = ORDINARY_REQUESTS + PROTOCOL_REQUESTS


# -- the supervisor and this process -------------------------------------------------------------


@dataclass(frozen=True)
class FencePostgres(Action):
    """Ask the supervisor to kill every process of our hung PostgreSQL; its answer is an input too."""


@dataclass(frozen=True)
class Disarm(Action):
    """PostgreSQL is down for good: the watchdog need not reset the node when the lease runs out."""

    reason: str


@dataclass(frozen=True)
class ReportShutdown(Action):
    """Tell the supervisor how the shutdown ended."""

    stopped: bool
    released: bool
    left_running: bool = False


@dataclass(frozen=True)
class Fatal(Action):
    reason: str


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    reason: str
    recheck_in: float | None = None  # look again this soon, not a loop_wait later (a switchover in progress)
    phase: Phase | None = None  # the phase to be in once every action has run (None: unchanged)
