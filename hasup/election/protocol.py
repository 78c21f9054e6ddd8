"""The answers in the election worker's protocols, as a table: (phase, answer) -> decision.

Every answer election can receive (a reply to each protocol request, the
supervisor's fence result, the order to shut down, the supervisor giving up) is named in every
phase's row, even where it changes nothing: a new phase or a new kind of
request must say what it does with each of them (tests/unit/test_protocol.py
walks the table).  Replies to the ordinary cycle's requests move nothing
on.  `moved_on` is the other way a phase ends: what a cycle sees (the
request was lost with a replaced worker, the sit-out is over).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hasup.dcs.model import Cluster
from hasup.election.actions import (
    ORDINARY_REQUESTS,
    REQUESTS,
    Action,
    ClearFailover,
    Decision,
    DeleteInitialize,
    Disarm,
    Fatal,
    FencePostgres,
    PublishInitialize,
    RecordHandOver,
    ReleaseLock,
    ReportShutdown,
    RunBootstrap,
    RunDemote,
    RunPromote,
    RunStop,
    TakeLock,
    WriteInitialConfig,
    YieldLock,
)
from hasup.election.phases import (
    PHASES,
    PRE_PROMOTE_FAILED,
    Bootstrapping,
    Demoting,
    Event,
    Fenced,
    FenceUnconfirmed,
    Fencing,
    GaveUp,
    Idle,
    Phase,
    Promoting,
    Replied,
    ShutdownAsked,
    ShuttingDown,
    SittingOut,
)
from hasup.ipc import PgState
from hasup.postgresql.state import PRE_PROMOTE, REFUSED_BY


@dataclass(frozen=True)
class Facts:
    """What an answer is weighed with."""

    holds_lock: bool
    paused: bool
    now: float  # monotonic
    ttl: float


Handler = Callable[[Any, Any, Facts], Decision]
EventKind = type[Action] | type[Fenced] | type[ShutdownAsked] | type[GaveUp]
EVENT_KINDS: tuple[EventKind, ...] = (*REQUESTS, Fenced, ShutdownAsked, GaveUp)


def kind_of(event: Event) -> EventKind:
    return type(event.action) if isinstance(event, Replied) else type(event)


def react(phase: Phase, event: Event, facts: Facts) -> Decision:
    return TABLE[type(phase)][kind_of(event)](phase, event, facts)


# -- the answers -------------------------------------------------------------------------------------


def _nothing(phase: Phase, event: Event, facts: Facts) -> Decision:
    """Not part of this phase's protocol: a request of the ordinary cycle, or one a phase change outran."""
    return Decision((), "")


def _release(facts: Facts) -> tuple[Action, ...]:
    return (ReleaseLock(),) if facts.holds_lock else ()


def _demoted(phase: Demoting, event: Replied, facts: Facts) -> Decision:
    if not event.ok:
        # PostgreSQL is restarted as primary by the next cycle: we still hold the lock.
        return Decision((ClearFailover(),), f"switchover aborted: {event.message}", phase=Idle())
    lsn = _lsn(event.result.get("checkpoint_lsn"))
    record: tuple[Action, ...] = (RecordHandOver(lsn),) if lsn is not None else ()
    to = phase.candidate or "the healthiest replica"
    return Decision((*record, *_release(facts)), f"switchover: released the leader lock at LSN {lsn} for {to}",
                    phase=Idle())


def _lsn(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 64 else None


def _promoted(phase: Promoting, event: Replied, facts: Facts) -> Decision:
    if event.ok:
        return Decision((), "", phase=Idle())
    if event.result.get(REFUSED_BY) == PRE_PROMOTE:
        # The operator's script said no: this node must not lead now.  Another member takes over, and we
        # stay out of the leader race for ttl, or we would win it again at once (as Patroni backs off).
        yielded: tuple[Action, ...] = (YieldLock(),) if facts.holds_lock else ()
        return Decision(yielded, f"Promotion cancelled because the pre-promote script failed ({event.message})",
                        phase=SittingOut(facts.now + facts.ttl, PRE_PROMOTE_FAILED))
    # Not caught up with the old leader (or the promote failed): let a better node lead.
    return Decision(_release(facts), f"giving the leader lock back: {event.message}", phase=Idle())


def _bootstrapped(phase: Bootstrapping, event: Replied, facts: Facts) -> Decision:
    if not event.ok:
        return Decision((DeleteInitialize(), Fatal(f"bootstrap failed: {event.message}")), "bootstrap failed")
    sysid = event.result.get("sysid")
    publish: tuple[Action, ...] = (PublishInitialize(sysid),) if isinstance(sysid, str) and sysid else ()
    return Decision((*publish, WriteInitialConfig(), TakeLock()), "initialized a new cluster", phase=Idle())


def _fenced(phase: Phase, event: Fenced, facts: Facts) -> Decision:
    if event.confirmed:
        # Nothing of ours can commit now: a replica can take over at once, and we leave it the race.
        return Decision(_release(facts), f"fenced PostgreSQL: {event.reason}",
                        phase=SittingOut(facts.now + facts.ttl))
    return Decision((), f"fencing PostgreSQL could not be confirmed ({event.reason}): no more leader-key writes, "
                        "the lease runs out and the watchdog (if armed) resets this node", phase=FenceUnconfirmed())


def _late_fence(phase: Phase, event: Fenced, facts: Facts) -> Decision:
    """A fence result outside Fencing: an unconfirmed one still forbids lock writes."""
    return _nothing(phase, event, facts) if event.confirmed else _fenced(phase, event, facts)


def _fenced_while_stopping(phase: ShuttingDown, event: Fenced, facts: Facts) -> Decision:
    if event.confirmed:
        return _nothing(phase, event, facts)  # the stop's answer releases the lock
    return Decision((), f"fencing PostgreSQL could not be confirmed ({event.reason}): no more leader-key writes",
                    phase=ShuttingDown(phase.stopping, lock_writes=False))


def _shutdown(phase: Phase, event: ShutdownAsked, facts: Facts) -> Decision:
    lock_writes = not isinstance(phase, FenceUnconfirmed)
    if facts.paused:
        # Maintenance mode: the operator owns PostgreSQL; it keeps running and keeps the key.
        return Decision((ReportShutdown(False, False, left_running=True),),
                        "shutting down while paused: leaving PostgreSQL running and the leader key in place",
                        phase=ShuttingDown(False, lock_writes))
    return Decision((RunStop("fast", for_shutdown=True),), "shutting down: stopping PostgreSQL",
                    phase=ShuttingDown(True, lock_writes))


def _stopped_for_shutdown(phase: ShuttingDown, event: Replied, facts: Facts) -> Decision:
    if not (isinstance(event.action, RunStop) and event.action.for_shutdown and phase.stopping):
        return _nothing(phase, event, facts)
    done = ShuttingDown(False, phase.lock_writes)
    if not event.ok:
        return Decision((ReportShutdown(False, False),), "PostgreSQL did not stop: keeping the leader key "
                        "(it expires after ttl)", phase=done)
    released = facts.holds_lock
    return Decision((*_release(facts), Disarm("PostgreSQL stopped for shutdown"), ReportShutdown(True, released)),
                    "released the leader key after stopping PostgreSQL" if released else "PostgreSQL stopped",
                    phase=done)


def _gave_up(phase: Phase, event: GaveUp, facts: Facts) -> Decision:
    """Whatever we were doing: nothing of ours runs any more, a replica may lead at once, and the supervisor
    waits for the released key before it ends the node.  No lock write after this."""
    return Decision(_release(facts), f"PostgreSQL was stopped because the node gives up ({event.reason}): "
                    "releasing the leader key", phase=ShuttingDown(False, lock_writes=False))


def _row(**answers: Handler) -> dict[EventKind, Handler]:
    """A phase's row: nothing for the ordinary requests, and the answers named for everything else."""
    row: dict[EventKind, Handler] = {kind: _nothing for kind in ORDINARY_REQUESTS}
    kinds = {kind.__name__: kind for kind in EVENT_KINDS}
    row.update({kinds[name]: handler for name, handler in answers.items()})
    return row


_ = _nothing
TABLE: dict[type[Phase], dict[EventKind, Handler]] = {
    Idle: _row(RunBootstrap=_, RunPromote=_, RunDemote=_, RunStop=_, Fenced=_late_fence, ShutdownAsked=_shutdown,
               GaveUp=_gave_up),
    Bootstrapping: _row(RunBootstrap=_bootstrapped, RunPromote=_, RunDemote=_, RunStop=_, Fenced=_late_fence,
                        ShutdownAsked=_shutdown, GaveUp=_gave_up),
    Promoting: _row(RunBootstrap=_, RunPromote=_promoted, RunDemote=_, RunStop=_, Fenced=_late_fence,
                    ShutdownAsked=_shutdown, GaveUp=_gave_up),
    Demoting: _row(RunBootstrap=_, RunPromote=_, RunDemote=_demoted, RunStop=_, Fenced=_late_fence,
                   ShutdownAsked=_shutdown, GaveUp=_gave_up),
    Fencing: _row(RunBootstrap=_, RunPromote=_, RunDemote=_, RunStop=_, Fenced=_fenced, ShutdownAsked=_shutdown,
                  GaveUp=_gave_up),
    FenceUnconfirmed: _row(RunBootstrap=_, RunPromote=_, RunDemote=_, RunStop=_, Fenced=_late_fence,
                           ShutdownAsked=_shutdown, GaveUp=_gave_up),
    SittingOut: _row(RunBootstrap=_, RunPromote=_, RunDemote=_, RunStop=_, Fenced=_late_fence,
                     ShutdownAsked=_shutdown, GaveUp=_gave_up),
    ShuttingDown: _row(RunBootstrap=_, RunPromote=_, RunDemote=_, RunStop=_stopped_for_shutdown,
                       Fenced=_fenced_while_stopping, ShutdownAsked=_, GaveUp=_gave_up),
}
assert set(TABLE) == set(PHASES)


# -- phases a cycle ends -------------------------------------------------------------------------------

_REQUEST_OF: dict[type[Phase], str] = {Demoting: "demote", Promoting: "promote", Bootstrapping: "bootstrap"}


def moved_on(phase: Phase, cluster: Cluster | None, pg: PgState | None, pg_fresh: bool, busy: str, now: float,
             me: str) -> Phase | None:
    """The phase this cycle finds us in when what it sees has ended the current one; None: unchanged."""
    request = _REQUEST_OF.get(type(phase))
    if request is not None and request not in busy.split(", "):
        return Idle()  # its request was lost with a replaced postgres worker, or passed its deadline
    if isinstance(phase, SittingOut):
        # Sitting out after a fence ends once another node leads: ours may then rejoin as its replica.  After
        # a vetoed promotion it lasts its whole ttl, whoever leads, so the next race cannot bring it back at once.
        someone_else = cluster is not None and cluster.leader is not None and cluster.leader.name != me
        return Idle() if now >= phase.until or someone_else and not phase.why else None
    if isinstance(phase, FenceUnconfirmed) and pg is not None and pg_fresh and pg.postmaster_pid is None:
        return Idle()  # the hung PostgreSQL has gone after all
    return None


# What starts each phase that a cycle's decision enters: filters that drop the action drop the phase too.
STARTED_BY: dict[type[Phase], type[Action]] = {Demoting: RunDemote, Promoting: RunPromote, Bootstrapping: RunBootstrap,
                                               Fencing: FencePostgres, SittingOut: YieldLock}
