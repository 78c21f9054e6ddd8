"""The HA policy: one pure function from what election sees to what should happen.

decide() does no I/O.  The election worker gathers its inputs (the etcd
cluster, the postgres worker's latest PgState, peers' /patroni answers when
the leader is gone, the phase of the protocol it is in) and executes the
actions it returns, in order (hasup.election.actions); an answer to one of
its requests is an input too, handed to decide() as the event
(hasup.election.protocol).  An action that fails stops the list (unless
it is best-effort); the next cycle then starts at once and sees the new
truth.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field, replace

from hasup.dcs.model import Cluster, Member
from hasup.election import protocol, quorum, standby, sync
from hasup.election.actions import (
    AcquireLock,
    Action,
    ClaimInitialize,
    ClearFailover,
    ClearSync,
    Decision,
    DeleteInitialize,
    Disarm,
    Fatal,
    FencePostgres,
    PublishInitialize,
    RecordHandOver,
    RefreshLock,
    ReleaseLock,
    ReportShutdown,
    RepublishConfig,
    RunBootstrap,
    RunCreateReplica,
    RunDemote,
    RunFollow,
    RunPromote,
    RunResumeReplay,
    RunStart,
    RunStop,
    SetSyncStandbys,
    TakeLock,
    WriteFailsafe,
    WriteHistory,
    WriteInitialConfig,
    WriteStatus,
    WriteSync,
    YieldLock,
)
from hasup.election.phases import (
    Bootstrapping,
    Demoting,
    Event,
    FenceUnconfirmed,
    Fencing,
    Idle,
    Phase,
    Promoting,
    ShuttingDown,
    SittingOut,
)
from hasup.ipc import PgState
from hasup.peers import PeerStatus
from hasup.postgresql.state import NOT_RUNNING

__all__ = [
    "Action",
    "AcquireLock",
    "RefreshLock",
    "TakeLock",
    "ReleaseLock",
    "YieldLock",
    "ClaimInitialize",
    "PublishInitialize",
    "DeleteInitialize",
    "WriteInitialConfig",
    "ClearFailover",
    "RepublishConfig",
    "RecordHandOver",
    "WriteHistory",
    "WriteStatus",
    "WriteSync",
    "ClearSync",
    "WriteFailsafe",
    "RunBootstrap",
    "RunCreateReplica",
    "RunStart",
    "RunPromote",
    "RunFollow",
    "RunStop",
    "RunDemote",
    "SetSyncStandbys",
    "FencePostgres",
    "Disarm",
    "ReportShutdown",
    "RunResumeReplay",
    "Fatal",
    "Decision",
    "Local", "Node", "PeerStatus", "Settings", "decide",
]


# -- inputs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """This node's fixed facts."""

    name: str
    nofailover: bool = False
    failover_priority: int = 1
    replicatefrom: str | None = None  # cascade: stream from this member instead of the leader
    clone_without_leader: bool = False  # a create_replica_method marked no_leader (restores from a backup)
    nostream: bool = False  # never streams: a replica that replays only what restore_command brings


@dataclass(frozen=True)
class Settings:
    ttl: int
    loop_wait: int
    retry_timeout: int
    maximum_lag_on_failover: int
    check_timeline: bool = False
    use_pg_rewind: bool = False
    health_deadline: float = 3.0  # seconds a live postgres worker may fail to reach our primary before a fence
    primary_start_timeout: int = 300  # seconds a crashed primary is restarted in place before it yields the lock
    synchronous_mode: bool = False
    synchronous_mode_strict: bool = False
    synchronous_node_count: int = 1
    failsafe_mode: bool = False
    standby_cluster: bool = False  # the dynamic configuration makes this a standby cluster (hasup.election.standby)
    quorum_commit: bool = False  # synchronous_mode: quorum (hasup.election.quorum)
    maximum_lag_on_syncnode: int = -1  # bytes; 0 or less: no limit


@dataclass(frozen=True)
class Local:
    pg: PgState | None
    pg_fresh: bool  # the PgState is recent enough to act on
    busy: str = ""  # a request to the postgres worker is in flight
    peers: dict[str, PeerStatus | None] = field(default_factory=dict)
    not_streaming_for: float = 0.0  # seconds this running replica has not streamed from its leader
    now_wall: float = 0.0  # wall clock, for scheduled switchovers (etcd holds wall-clock times)
    watchdog_usable: bool = True  # False only with watchdog.mode: required and a device that cannot be used
    failover_age: float = 0.0  # seconds since this node first saw the current failover request
    # Seconds since PostgreSQL last answered a probe, as reported by a live postgres worker after
    # enough consecutive failures (hasup.timing); 0 when it answers or nobody can vouch for the failures.
    unhealthy_for: float = 0.0
    down_for: float = 0.0  # seconds our PostgreSQL has not been running while we held the lock
    failsafe_confirmed: bool = False  # etcd unreachable, and every member confirmed it is not leading
    failsafe_leader: str | None = None  # a primary cut off from etcd pinged us within ttl: do not race it
    phase: Phase = field(default_factory=Idle)  # where we stand in a multi-step protocol (hasup.election.phases)
    now: float = 0.0  # monotonic, for the phases' deadlines
    # Quorum commit: the primary's WAL position where its synchronous_standby_names took effect (None:
    # not known yet), and seconds it has run as a primary (as far as this process knows).
    sync_since: int | None = None
    primary_for: float = 0.0



def decide(cluster: Cluster | None, local: Local, me: Node, settings: Settings, event: Event | None = None) \
        -> Decision:
    """What to do this cycle, or in answer to `event`.  cluster is None when etcd could not be read."""
    holds_lock = cluster is not None and cluster.leader is not None and cluster.leader.name == me.name
    if event is not None:
        paused = cluster is not None and cluster.paused
        return protocol.react(local.phase, event, protocol.Facts(holds_lock, paused, local.now, settings.ttl))
    moved = protocol.moved_on(local.phase, cluster, local.pg, local.pg_fresh, local.busy, local.now, me.name)
    if moved is not None:
        local = replace(local, phase=moved)
    decision = _in_phase(cluster, local, me, settings, holds_lock)
    if moved is not None and decision.phase is None:
        decision = replace(decision, phase=moved)
    return decision


def _in_phase(cluster: Cluster | None, local: Local, me: Node, settings: Settings, holds_lock: bool) -> Decision:
    phase = local.phase
    keep = (RefreshLock(),) if holds_lock else ()
    if isinstance(phase, ShuttingDown):
        return Decision(keep if phase.lock_writes else (), "shutting down")
    if isinstance(phase, FenceUnconfirmed):
        # A process of the hung PostgreSQL may still commit: the lease must run out (the watchdog resets us).
        return Decision((), "the fence was not confirmed: no leader-key writes until PostgreSQL is gone")
    if isinstance(phase, Fencing):
        return Decision(keep, "updated leader lock during fence" if holds_lock else "fence in progress")
    if isinstance(phase, SittingOut):
        # We let go because our PostgreSQL was hung or down: in the next race we may not lead, as if tagged so.
        me = replace(me, nofailover=True)
    decision = _decide(cluster, local, me, settings)
    if isinstance(phase, SittingOut) and phase.why:
        decision = replace(decision, reason=f"{decision.reason} ({phase.why}: sitting out leader races for ttl)")
    if cluster is not None and not cluster.paused:
        decision = _resume_replay(decision, local)
    if settings.standby_cluster:
        decision = standby.never_promote(decision)
    if cluster is not None and cluster.paused:
        decision = _paused(decision, local, holds_lock)
    return decision


def _resume_replay(decision: Decision, local: Local) -> Decision:
    """A running replica whose WAL replay is paused (by hand, or by PostgreSQL 14+ itself when a hot standby
    parameter is below the primary's) resumes it, as Patroni does on every cycle outside maintenance mode:
    a replica that replays nothing serves stale reads and would be passed over in a failover."""
    pg = local.pg
    if pg is None or not local.pg_fresh or local.busy or pg.busy or not pg.replay_paused:
        return decision
    if pg.state != "running" or pg.role != "replica" or (pg.server_version or 0) < 140000:
        return decision
    if any(isinstance(a, RunPromote | RunStop | RunDemote | RunFollow | YieldLock | FencePostgres)
           for a in decision.actions):
        return decision  # PostgreSQL is about to change: the next cycle looks again
    return replace(decision, actions=(*decision.actions, RunResumeReplay()),
                   reason=f"{decision.reason}; resuming paused WAL replay")


def _filtered(decision: Decision, kept: tuple[Action, ...], note: str) -> Decision:
    """The decision without what a filter dropped; a phase whose starting action was dropped is not entered."""
    if kept == decision.actions:
        return decision
    phase = decision.phase
    if phase is not None:
        starter = protocol.STARTED_BY.get(type(phase))
        if starter is not None and not any(isinstance(a, starter) for a in kept):
            phase = None
    return Decision(kept, f"{decision.reason} (not done: {note})", decision.recheck_in, phase)


# Actions that start, stop or change the role of PostgreSQL: a paused cluster leaves it to the operator.
_HANDS_ON = (RunStart, RunStop, RunPromote, RunDemote, RunCreateReplica, RunBootstrap, FencePostgres, YieldLock,
             RunResumeReplay)


def _paused(decision: Decision, local: Local, holds_lock: bool) -> Decision:
    """Maintenance mode: touch PostgreSQL only to re-point a running replica; the leader keeps the lock while
    its PostgreSQL runs, and lets go of it once it does not (nobody else takes it while paused)."""
    pg = local.pg
    if holds_lock and pg is not None and local.pg_fresh and not (local.busy or pg.busy) and pg.state in NOT_RUNNING:
        # As Patroni: the key would name a leader with no PostgreSQL behind it.  The replicas do not race while
        # paused; the operator's PostgreSQL, started as a primary again, retakes the free lock (_leader_race).
        return Decision((ReleaseLock(),), "PAUSE: removed leader lock because postgres is not running")

    def allowed(action: Action) -> bool:
        if isinstance(action, RunFollow):
            return pg is not None and pg.state == "running" and pg.role == "replica" and not action.rewind
        return not isinstance(action, _HANDS_ON)
    kept = tuple(a for a in decision.actions if allowed(a))
    if holds_lock and not any(isinstance(a, RefreshLock | ReleaseLock) for a in kept):
        kept = (RefreshLock(), *kept)  # whatever PostgreSQL does, the leader stays the leader
    decision = _filtered(decision, kept, "paused")
    return replace(decision, reason=f"PAUSE: {decision.reason}")


def _decide(cluster: Cluster | None, local: Local, me: Node, settings: Settings) -> Decision:
    pg = local.pg
    if cluster is None:
        if pg is not None and pg.role == "primary" and pg.state == "running":
            if settings.failsafe_mode and local.failsafe_confirmed:
                return Decision((), "continue to run as a leader because failsafe mode is enabled and all members "
                                    "are accessible")
            return Decision((RunStop("immediate"),), "demoted self because DCS is not accessible and I was a leader")
        return Decision((), "DCS is not accessible")

    holds_lock = cluster.leader is not None and cluster.leader.name == me.name
    keep = (RefreshLock(),) if holds_lock else ()

    if pg is None or not local.pg_fresh:
        return Decision(keep, "waiting for a fresh PostgreSQL state")
    if local.busy or pg.busy:
        action = local.busy or pg.busy
        return Decision(keep, f"updated leader lock during {action}" if holds_lock else f"{action} in progress")
    if holds_lock and pg.role == "primary" and local.unhealthy_for >= settings.health_deadline \
            and not cluster.paused:
        # Hung, not dead: it may still commit what it has in flight.  Kill it before letting go.
        return Decision((RefreshLock(), FencePostgres()),
                        f"PostgreSQL has not answered for {local.unhealthy_for:.1f}s: fencing it", phase=Fencing())

    if not local.watchdog_usable:
        if holds_lock and pg.role == "primary" and pg.state == "running":
            return Decision((RefreshLock(), RunFollow(None)),
                            "demoting self because the watchdog could not be activated")
        if holds_lock:
            return Decision((ReleaseLock(),), "Not promoting self because watchdog could not be activated")
        if pg.data_dir_empty and cluster.initialize is None:
            return Decision((), "not bootstrapping: Watchdog device is not usable")

    if pg.data_dir_empty:
        return _empty_data_dir(cluster, me, holds_lock)

    if cluster.initialize and pg.sysid and cluster.initialize != pg.sysid:
        return Decision((Fatal(f"system ID mismatch, node {me.name} belongs to a different cluster: "
                               f"{pg.sysid} != {cluster.initialize}"),), "system ID mismatch")
    if cluster.initialize is None and cluster.leader is None and pg.role == "primary" and pg.sysid:
        return Decision((PublishInitialize(pg.sysid),), "adopting a running primary as the cluster")

    if pg.state in NOT_RUNNING:
        if isinstance(local.phase, SittingOut) and cluster.leader is None and not holds_lock:
            # Started now, even as a standby, our (freshest) WAL would make the replicas defer to us.
            return Decision((), "fenced: waiting for another node to take the lock before rejoining")
        return _not_running(cluster, local, me, settings, holds_lock)
    if pg.state != "running":
        return Decision(keep, f"postgres is {pg.state}")

    if cluster.leader is None:
        return _leader_race(cluster, local, me, settings)
    if holds_lock:
        return _as_leader(cluster, local, me, settings)
    return _as_follower(cluster, local, me, settings)


def _empty_data_dir(cluster: Cluster, me: Node, holds_lock: bool) -> Decision:
    if holds_lock:
        return Decision((ReleaseLock(),), "released leader key voluntarily as data dir empty")
    if cluster.initialize is None and cluster.leader is None:
        if me.nofailover:
            return Decision((), "waiting for leader to bootstrap (I am not allowed to bootstrap)")
        return Decision((ClaimInitialize(), RunBootstrap()), "bootstrapping a new cluster", phase=Bootstrapping())
    leader = cluster.leader_member()
    if leader is not None and leader.conn_url and leader.state == "running":
        # A running replica tagged clonefrom spares the leader the basebackup.
        donor = next((m for n, m in sorted(cluster.members.items()) if n not in (me.name, leader.name)
                      and m.tags.get("clonefrom") and m.state == "running" and m.conn_url), None)
        if donor is not None:
            return Decision((RunCreateReplica(donor.name),), f"trying to bootstrap from replica '{donor.name}'")
        return Decision((RunCreateReplica(leader.name),), f"trying to bootstrap from leader '{leader.name}'")
    if me.clone_without_leader and cluster.initialize != "":
        # A cluster that exists (or will: nobody is bootstrapping it now) can be restored from its backups.
        return Decision((RunCreateReplica(None),), "trying to bootstrap (without leader)")
    return Decision((), "waiting for leader to bootstrap")


def _not_running(cluster: Cluster, local: Local, me: Node, settings: Settings, holds_lock: bool) -> Decision:
    pg = local.pg
    assert pg is not None
    if holds_lock and settings.standby_cluster:
        return standby.start_leader()
    if holds_lock:
        # A crashed primary restarts in place while the lock is ours, for up to
        # primary_start_timeout; replicas wait for it rather than lose the writes it had.
        if pg.role in ("primary", "demoted", "promoted") and pg.controldata_state != "in archive recovery":
            if local.down_for >= settings.primary_start_timeout and failover_possible(cluster, me):
                return Decision((YieldLock(),), f"primary has been down for {local.down_for:.0f}s "
                                f"(primary_start_timeout {settings.primary_start_timeout}s): releasing the lock",
                                phase=SittingOut(local.now + settings.ttl))
            return Decision((RefreshLock(), RunStart(as_primary=True)), "starting primary after failure")
        return Decision((RefreshLock(), RunStart(as_primary=False)),
                        "starting as readonly because i had the session lock")
    if cluster.leader is None and settings.standby_cluster:
        return standby.start_unled()
    leader = cluster.leader.name if cluster.leader else None
    return Decision((RunFollow(None if me.nostream else leader),), "starting as a secondary")


def _as_leader(cluster: Cluster, local: Local, me: Node, settings: Settings) -> Decision:
    pg = local.pg
    assert pg is not None
    if settings.standby_cluster:
        asked = _manual_failover(cluster, local, me, settings) if cluster.failover is not None else None
        decision = standby.as_leader(pg, me.name, asked)
        if config_missing(cluster):
            # The standby_cluster section in force (the last one read) goes back too: without it the
            # next node to start would bootstrap or lead a second primary of the remote's database.
            decision = replace(decision, actions=(*decision.actions, RepublishConfig()))
        return decision
    if pg.role != "primary":
        if isinstance(local.phase, SittingOut) and local.phase.why:
            # The veto's release did not get through (etcd): promoting now would overrule it.
            return Decision((YieldLock(),), f"not promoting: {local.phase.why}")
        return Decision((RefreshLock(), RunPromote()), "promoted self to leader because I had the session lock",
                        phase=Promoting())
    actions: list[Action] = [RefreshLock(), WriteStatus()]
    if config_missing(cluster):
        actions.append(RepublishConfig())
    if needs_history(cluster, pg):
        actions.append(WriteHistory())
    sync_steps = _sync_actions(cluster, pg, me, settings, local)
    actions.extend(sync_steps)
    if settings.failsafe_mode:
        wanted = failsafe_members(cluster)
        if cluster.failsafe != dict(wanted):
            actions.append(WriteFailsafe(wanted))
    # A synchronous standby is added in steps (PostgreSQL, then the key): take the next one soon.
    recheck = SWITCHOVER_RECHECK if sync_steps else None
    if cluster.failover is not None:
        more, reason = _manual_failover(cluster, local, me, settings)
        demote = next((a for a in more if isinstance(a, RunDemote)), None)
        return Decision(tuple(actions + more), reason, SWITCHOVER_RECHECK if not more else recheck,
                        Demoting(demote.candidate) if demote is not None else None)
    return Decision(tuple(actions), f"no action. I am ({me.name}), the leader with the lock", recheck)


def config_missing(cluster: Cluster) -> bool:
    """etcd's config key is absent or empty.  A value that was there but failed its parser is not missing:
    the last good one stays in force (hasup.dcs.model.with_last_good) and an operator's edit is not overwritten."""
    return not cluster.config and "config" not in cluster.rejected


def _sync_actions(cluster: Cluster, pg: PgState, me: Node, settings: Settings, local: Local) -> list[Action]:
    """The next safe step of synchronous replication on the leader (hasup.election.sync), key first."""
    recorded = (cluster.sync or {}).get("leader")
    if not settings.synchronous_mode:
        return [ClearSync()] if recorded else []
    if settings.quorum_commit:
        return _quorum_actions(cluster, pg, me, settings, local)
    key = sync.key_standbys(cluster, me.name)
    configured = sync.parse_setting(pg.sync_standby_names)
    step = sync.next_step(key, configured, sync.sync_now(pg.replication), sync.candidates(
        pg.replication, cluster, me.name, pg.wal_position or 0, settings.maximum_lag_on_syncnode),
        settings.synchronous_node_count, settings.synchronous_mode_strict)
    actions: list[Action] = []
    if recorded != me.name or step.key != key:
        actions.append(WriteSync(step.key))
    if step.names != configured:
        actions.append(SetSyncStandbys(sync.standby_names_setting(step.names)))
    return actions


def _quorum_actions(cluster: Cluster, pg: PgState, me: Node, settings: Settings, local: Local) -> list[Action]:
    """The next safe step of quorum commit on the leader (hasup.election.quorum): the key, then PostgreSQL."""
    key = quorum.read_key(cluster)
    commit = quorum.parse_commit(pg.sync_standby_names)
    strict = settings.synchronous_mode_strict
    if key is not None and key.leader != me.name:
        # Just promoted: take the key over first; that changes no promise (hasup.election.quorum).
        return [WriteSync(tuple(sorted(key.members() - {me.name})), key.quorum)]
    positions = {n: m.wal_position for n, m in cluster.members.items()}
    settled = quorum.settled(commit, local.sync_since, positions)
    wanted = settings.synchronous_node_count
    active = sync.quorum_candidates(pg.replication, cluster, me.name, pg.wal_position or 0,
                                    settings.maximum_lag_on_syncnode, wanted)
    if key is not None and local.primary_for < settings.loop_wait:
        # Just promoted: the standbys are still reconnecting.  Dropping them now would only churn the
        # key, so only those whose member key is gone (or says they are not running) leave it yet.
        def may_return(name: str) -> bool:
            m = cluster.members.get(name)
            return m is not None and m.state == "running" and not sync.nosync(m)
        active += sorted(n for n in (key.voters | commit.names) - set(active) if may_return(n))
    step = quorum.next_step(me.name, key, commit, settled, active, wanted)
    actions: list[Action] = []
    if step.key is not None:
        actions.append(WriteSync(tuple(sorted(step.key.voters)), step.key.quorum))
        # The key is written before PostgreSQL is asked (the executor stops at a failed write), so a
        # PostgreSQL step that the new key allows can follow in the same cycle.
        then = quorum.next_step(me.name, step.key, commit, settled, active, wanted)
        if then.key is None and then.commit is not None:
            step = quorum.Step(step.key, then.commit)
    setting = quorum.render(step.commit if step.commit is not None else commit, strict)
    if setting != (pg.sync_standby_names or ""):
        actions.append(SetSyncStandbys(setting))
    return actions


def _prepare_promotion(cluster: Cluster, pg: PgState, me: Node, settings: Settings) -> Decision | None:
    """Quorum commit: before promoting, run with the setting that keeps the key's promise (None: ready)."""
    if not (settings.synchronous_mode and settings.quorum_commit):
        return None
    key = quorum.read_key(cluster)
    if key is None or key.leader == me.name:
        return None
    wanted = quorum.promotion_commit(me.name, key)
    if quorum.parse_commit(pg.sync_standby_names) == wanted:
        return None
    return Decision((SetSyncStandbys(quorum.render(wanted, settings.synchronous_mode_strict)),),
                    "setting synchronous_standby_names for the quorum before promoting", SWITCHOVER_RECHECK)


def failsafe_members(cluster: Cluster) -> tuple[tuple[str, str], ...]:
    """Every member with a REST address, the leader included, as the failsafe key lists them."""
    return tuple(sorted((name, m.api_url) for name, m in cluster.members.items() if m.api_url))


def scheduled_at(failover: dict[str, object]) -> float | None:
    """The switchover time as epoch seconds; None when unscheduled (or unreadable: treated as now)."""
    value = failover.get("scheduled_at")
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _manual_failover(cluster: Cluster, local: Local, me: Node, settings: Settings) -> tuple[list[Action], str]:
    """The leader's side of a switchover requested through the failover key (the API's half: hasup.api.switchover)."""
    fo = cluster.failover or {}
    when = scheduled_at(fo)
    if when is not None:
        if when - local.now_wall > settings.loop_wait:
            return [], f"Awaiting switchover at {fo.get('scheduled_at')} (in {when - local.now_wall:.0f} seconds)"
        if local.now_wall - when > 1.5 * settings.loop_wait:
            return [ClearFailover()], "Cleaning up failover key: the scheduled switchover is stale"
        if when > local.now_wall:
            return [], f"Awaiting switchover at {fo.get('scheduled_at')}"
    leader, candidate = fo.get("leader"), fo.get("member")
    if leader and leader != me.name:
        return [ClearFailover()], f"Cleaning up failover key: it names {leader} as the leader, not me"
    if candidate == me.name:
        return [ClearFailover()], "Cleaning up failover key: I am already the leader"
    if cluster.paused and not candidate:
        return [], "switchover in a paused cluster needs a candidate"
    ok = [n for n in switchover_candidates(cluster, local, me, settings) if not candidate or n == candidate]
    key = quorum.read_key(cluster) if settings.synchronous_mode and settings.quorum_commit else None
    if key is not None and key.leader == me.name:
        # As in Patroni: a switchover (it names the leader; a failover does not) goes to a voter, and
        # without a named candidate only when enough are healthy to reach the quorum in the race.
        if leader:
            ok = [n for n in ok if n in key.voters]
        if not candidate and len(ok) < key.quorum + 1:
            ok = []
    if not ok:
        who = f"candidate {candidate}" if candidate else "members"
        # A candidate's /patroni trails its WAL by up to a probe, and it may be mid-restart:
        # give it the same grace as for streaming before refusing the request.
        if local.failover_age < streaming_grace(settings) and (not candidate or candidate in cluster.members):
            return [], f"switchover: waiting for a healthy {who}"
        return [ClearFailover()], f"manual failover: no healthy {who} found, failover is not possible"
    # A fast shutdown waits until connected standbys have flushed everything;
    # the target must be one of them, or writes acknowledged to clients could be lost.
    streaming = {r.get("application_name") for r in local.pg.replication if r.get("state") == "streaming"} \
        if local.pg else set()
    if not streaming & set(ok):
        # Our replication rows can trail a replica that just connected by a probe or two.
        if local.failover_age < streaming_grace(settings) and (not candidate or candidate in cluster.members):
            return [], f"switchover: waiting for {candidate or 'a candidate'} to stream from me"
        return [ClearFailover()], f"manual failover: {candidate or 'no candidate'} is not streaming from me"
    return [RunDemote(candidate if isinstance(candidate, str) else None)], "switchover: demoting myself"


SWITCHOVER_RECHECK = 0.5  # seconds between looks while a switchover waits for its candidate


def streaming_grace(settings: Settings) -> float:
    """How long a switchover waits for its candidate to show up as streaming before giving up."""
    return max(5.0, 2.0 * settings.loop_wait)


def switchover_candidates(cluster: Cluster, local: Local, me: Node, settings: Settings) -> list[str]:
    """Members that could take over now: reachable, running replicas, allowed to fail over, not lagging."""
    my_wal = local.pg.wal_position or 0 if local.pg else 0
    out = []
    for name, peer in sorted(local.peers.items()):
        if name == me.name or peer is None or peer.state != "running" or peer.role == "primary":
            continue
        if peer.nofailover or peer.watchdog_failed:
            continue
        if my_wal - peer.wal_position > settings.maximum_lag_on_failover:
            continue
        out.append(name)
    return out


def stuck_limit(settings: Settings) -> float:
    """How long a replica may fail to stream before we conclude its history diverged."""
    return max(30.0, 3.0 * settings.loop_wait)


def failover_possible(cluster: Cluster, me: Node) -> bool:
    """Some other member runs as a replica and may take over (by what the members published)."""
    return any(m.state == "running" and m.data.get("role") == "replica" and not (m.tags or {}).get("nofailover")
               for name, m in cluster.members.items() if name != me.name)


def upstream_for(cluster: Cluster, me: Node) -> str:
    """Whom to stream from: the replicatefrom member when it runs as a replica, else the leader."""
    assert cluster.leader is not None
    source = cluster.members.get(me.replicatefrom) if me.replicatefrom and me.replicatefrom != me.name else None
    if source is not None and source.state == "running" and source.data.get("role") == "replica" \
            and source.conn_url:
        return source.name
    return cluster.leader.name


def _as_follower(cluster: Cluster, local: Local, me: Node, settings: Settings) -> Decision:
    assert cluster.leader is not None and local.pg is not None
    pg = local.pg
    leader = cluster.leader.name
    if pg.role == "primary":
        return Decision((RunFollow(leader),), "demoting self because I do not have the lock and I was a leader")
    if me.nostream:
        # As Patroni: no primary_conninfo, so no slot on the leader either (hasup.postgresql.slots).
        if pg.upstream is not None:
            return Decision((RunFollow(None),), f"not streaming from {pg.upstream}: this member is tagged nostream")
        return Decision((), f"no action. I am ({me.name}), a secondary, and not streaming (nostream), "
                            f"the leader is {leader}")
    upstream = upstream_for(cluster, me)
    if pg.upstream != upstream:
        target = cluster.members.get(upstream)
        if target is None or not target.conn_url:
            # Following a name without an address would leave PostgreSQL with no primary_conninfo,
            # and nothing re-follows once the address appears: wait for the member key instead
            # (after etcd lost every lease, the new leader's key comes a cycle after its lock).
            return Decision((), f"waiting for {upstream}'s member key (its address) before following it")
        return Decision((RunFollow(upstream),), f"following new leader {leader}" if upstream == leader
                        else f"following {upstream} (replicatefrom), the leader is {leader}")
    leader_member = cluster.leader_member()
    leader_tl = leader_member.timeline if leader_member else None
    if settings.use_pg_rewind and local.not_streaming_for > stuck_limit(settings) and pg.timeline and leader_tl \
            and pg.timeline < leader_tl:
        # Our WAL went past the point where the leader's timeline forked: streaming can never resume.
        return Decision((RunFollow(leader, rewind=True),),
                        f"not streaming for {local.not_streaming_for:.0f}s on timeline {pg.timeline} "
                        f"behind the leader's {leader_tl}: rewinding")
    if upstream != leader:
        return _ready_to_promote(Decision((), f"no action. I am ({me.name}), a secondary, and following {upstream} "
                                              f"(replicatefrom), the leader is {leader}"), cluster, pg, me, settings)
    return _ready_to_promote(Decision((), f"no action. I am ({me.name}), a secondary, and following a leader "
                                          f"({leader})"), cluster, pg, me, settings)


def _ready_to_promote(decision: Decision, cluster: Cluster, pg: PgState, me: Node, settings: Settings) -> Decision:
    """Quorum commit: a replica that may be promoted keeps the setting it would promote with in place
    (a reload), so a failover does not wait for it."""
    if me.nofailover or pg.state != "running":
        return decision
    prepare = _prepare_promotion(cluster, pg, me, settings)
    return decision if prepare is None else replace(decision, actions=(*decision.actions, *prepare.actions))


def _leader_race(cluster: Cluster, local: Local, me: Node, settings: Settings) -> Decision:
    pg = local.pg
    assert pg is not None
    if pg.role == "primary":
        # A primary that lost its lock may retake it only if nobody promoted since, and only while
        # it answers: a hung (or just fenced) one must leave the lock to the replicas.  Paused too
        # (its system ID matched the cluster's above): the operator's primary leads, as in Patroni,
        # e.g. when its node comes back after a restart or a move to another etcd keyspace.
        if not (local.watchdog_usable and pg.probe_ok and not me.nofailover):
            return Decision((), "not taking the lock: this primary is not answering or may not lead")
        if pg.timeline is not None and pg.timeline < cluster.timeline:
            return Decision((RunFollow(None),), "demoting self: a newer timeline exists")
        return Decision((AcquireLock(), WriteStatus()), "acquired session lock as a leader")
    if cluster.paused:
        return Decision((), "cluster is paused: no automatic failover")
    candidate = (cluster.failover or {}).get("member")
    if candidate == me.name and not me.nofailover and local.watchdog_usable:
        if settings.standby_cluster:
            return standby.take_over(handed_over=True)
        # The old leader handed over to us: it checked we have everything it wrote.
        prepare = _prepare_promotion(cluster, pg, me, settings)
        if prepare is not None:
            return prepare
        return Decision((AcquireLock(), ClearFailover(), RunPromote(require_lsn=cluster.optime)),
                        "promoted self to leader by acquiring session lock (manual failover)",
                        phase=Promoting(cluster.optime))
    if isinstance(candidate, str) and candidate in cluster.members:
        peer = local.peers.get(candidate)
        if peer is not None and peer.state == "running":
            return Decision((), f"following a different leader because {candidate} is the failover candidate")
    if local.failsafe_leader and local.failsafe_leader != me.name:
        return Decision((), f"following a different leader because {local.failsafe_leader} still leads in "
                            "failsafe mode")
    if settings.synchronous_mode and not settings.quorum_commit and not sync.may_race(cluster, me.name):
        return Decision((), "following a different leader because I am not a synchronous standby")
    ok, why = is_healthiest(cluster, local, me, settings)
    if not ok:
        return Decision((), f"following a different leader because {why}")
    if settings.standby_cluster:
        return standby.take_over(handed_over=False)
    prepare = _prepare_promotion(cluster, pg, me, settings)
    if prepare is not None:
        return prepare
    return Decision((AcquireLock(), RunPromote()), "promoted self to leader by acquiring session lock",
                    phase=Promoting())


def is_healthiest(cluster: Cluster, local: Local, me: Node, settings: Settings) -> tuple[bool, str]:
    pg = local.pg
    assert pg is not None
    if me.nofailover:
        return False, "I am not allowed to promote"
    if not local.watchdog_usable:
        return False, "Watchdog device is not usable"
    my_wal = failover_position(pg)
    if cluster.optime is not None and cluster.optime - my_wal > settings.maximum_lag_on_failover:
        return False, "my wal position exceeds maximum replication lag"
    if settings.check_timeline and (pg.timeline is None or pg.timeline < cluster.timeline):
        return False, "my timeline is behind the cluster's"
    key = quorum.read_key(cluster) if settings.synchronous_mode and settings.quorum_commit else None
    if key is not None:
        return _quorum_healthiest(key, local, me, my_wal)
    for name, peer in sorted(local.peers.items()):
        if peer is None or name == me.name:
            continue
        if peer.role in ("primary", "master") and peer.state == "running":
            return False, f"primary ({name}) is still alive"
        if settings.synchronous_mode and not sync.may_race(cluster, name):
            continue  # it will not take over, so its WAL position must not hold us back
        if peer.nofailover or peer.watchdog_failed or peer.state != "running":
            continue
        if peer.wal_position > my_wal:
            return False, f"{name} has a higher wal position"
        if peer.wal_position == my_wal and peer.failover_priority > me.failover_priority:
            return False, f"{name} has the same wal position and a higher failover priority"
    return True, "I am the healthiest node"


def _quorum_healthiest(key: quorum.Key, local: Local, me: Node, my_wal: int) -> tuple[bool, str]:
    """Quorum commit: enough of the key's members seen at or behind us (hasup.election.quorum.may_promote)."""
    for name, peer in sorted(local.peers.items()):
        if peer is not None and name != me.name and peer.role in ("primary", "master") and peer.state == "running":
            return False, f"primary ({name}) is still alive"
    seen = [quorum.Witness(name, peer.wal_position, peer.state == "running",
                           not (peer.nofailover or peer.watchdog_failed), peer.failover_priority)
            for name, peer in sorted(local.peers.items()) if peer is not None]
    ok, why = quorum.may_promote(me.name, my_wal, me.failover_priority, key, seen)
    return ok, (f"I am the healthiest node: {why}" if ok else why)


def failover_position(pg: PgState) -> int:
    """How far this replica could serve if promoted now: with replay paused, only what it replayed."""
    if pg.replay_paused and pg.replayed_location is not None:
        return pg.replayed_location
    return pg.wal_position or 0


def needs_history(cluster: Cluster, pg: PgState) -> bool:
    """A promoted primary must record the timelines it switched from."""
    if not pg.timeline or pg.timeline <= 1:
        return False
    recorded = {int(e[0]) for e in cluster.history if isinstance(e, list) and e and isinstance(e[0], int)}
    return (pg.timeline - 1) not in recorded


def race_candidates(cluster: Cluster, me: str) -> list[Member]:
    """Members whose /patroni answer matters in the leader race."""
    return [m for n, m in sorted(cluster.members.items()) if n != me and m.api_url]
