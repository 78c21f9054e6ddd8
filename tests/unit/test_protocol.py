"""The election protocols as data: every (phase, answer) pair, and the phases a cycle enters and leaves.

Whole decisions are compared, payloads included: a hand-over that forgot
its LSN or a shutdown that reports a release it did not do must fail here.
"""

from dataclasses import replace

import pytest

from hasup.dcs.model import Cluster, Leader, Member
from hasup.election import actions as act
from hasup.election import policy as ha
from hasup.election import protocol
from hasup.election.actions import Decision
from hasup.election.phases import (
    PHASES,
    PRE_PROMOTE_FAILED,
    Bootstrapping,
    Demoting,
    Fenced,
    FenceUnconfirmed,
    Fencing,
    GaveUp,
    Idle,
    Promoting,
    Replied,
    ShutdownAsked,
    ShuttingDown,
    SittingOut,
)
from hasup.ipc import PgState

ME = ha.Node("n1")
SETTINGS = ha.Settings(ttl=10, loop_wait=2, retry_timeout=4, maximum_lag_on_failover=1000)
SYSID = "7300000000000000001"
NOW = 1000.0


def cluster(leader: str | None = "n1", paused: bool = False, failover: dict | None = None) -> Cluster:
    members = {n: Member(n, {"conn_url": f"postgres://127.0.0.1:5{n[-1]}/postgres", "api_url":
                             f"http://127.0.0.1:8{n[-1]}/patroni", "state": "running",
                             "role": "primary" if n == leader else "replica", "xlog_location": 5000})
               for n in ("n1", "n2", "n3")}
    config = {"ttl": 10, "pause": True} if paused else {"ttl": 10}
    return Cluster(initialize=SYSID, config=config, config_index=1, leader=Leader(leader, 10) if leader else None,
                   members=members, history=[], failover=failover, sync=None, optime=5000)


def pg(role: str = "primary", state: str = "running", **kw) -> PgState:
    return PgState(state=state, role=role, data_dir_empty=False, probe_ok=state == "running", probe_at=0.0,
                   sysid=SYSID, timeline=1, wal_position=5000, **kw)


def answer(phase, event, c: Cluster | None = None) -> Decision:
    local = ha.Local(pg(), False, phase=phase, now=NOW)
    return ha.decide(cluster() if c is None else c, local, ME, SETTINGS, event)


# -- completeness ---------------------------------------------------------------------------------------


def test_every_phase_names_what_every_answer_does():
    for phase in PHASES:
        row = protocol.TABLE[phase]
        missing = [kind.__name__ for kind in protocol.EVENT_KINDS if kind not in row]
        assert not missing, f"{phase.__name__} does not say what it does with {missing}"


def test_every_request_the_executor_can_send_is_an_answer_kind():
    sent = {cls for cls in vars(act).values() if isinstance(cls, type) and issubclass(cls, act.Action)
            and (cls.__name__.startswith("Run") or cls is act.SetSyncStandbys)}
    assert sent == set(act.REQUESTS)
    assert not set(act.ORDINARY_REQUESTS) & set(act.PROTOCOL_REQUESTS)


def test_a_phase_without_a_row_is_caught():
    incomplete = dict(protocol.TABLE)
    del incomplete[Fencing]
    assert set(incomplete) != set(PHASES)  # what the module asserts at import


# -- answers ---------------------------------------------------------------------------------------------

DEMOTED = Replied(act.RunDemote("n2"), True, result={"checkpoint_lsn": 83886080})
PROMOTE_FAILED = Replied(act.RunPromote(5000), False, "not caught up")
BOOTSTRAPPED = Replied(act.RunBootstrap(), True, result={"sysid": SYSID})
SHUTDOWN_STOP = act.RunStop("fast", for_shutdown=True)
VETOED = Replied(act.RunPromote(), False, "the pre_promote script exited with status 1: not promoting",
                 result={"refused_by": "pre_promote"})

ANSWERS = [
    # (phase, answer, cluster or None for "n1 leads", expected actions, expected phase, reason fragment)
    (Demoting("n2"), DEMOTED, None, (act.RecordHandOver(83886080), act.ReleaseLock()), Idle(), "LSN 83886080 for n2"),
    (Demoting(None), Replied(act.RunDemote(None), True, result={"checkpoint_lsn": "junk"}), None,
     (act.ReleaseLock(),), Idle(), "the healthiest replica"),
    (Demoting("n2"), Replied(act.RunDemote("n2"), False, "checkpoint timed out"), None, (act.ClearFailover(),),
     Idle(), "switchover aborted: checkpoint timed out"),
    (Promoting(5000), PROMOTE_FAILED, None, (act.ReleaseLock(),), Idle(), "giving the leader lock back"),
    (Promoting(5000), PROMOTE_FAILED, cluster("n2"), (), Idle(), "giving the leader lock back"),
    (Promoting(), Replied(act.RunPromote(), True), None, (), Idle(), ""),
    # The pre_promote script vetoed the promotion: let go and sit out the races for ttl (as Patroni backs off).
    (Promoting(), VETOED, None, (act.YieldLock(),), SittingOut(NOW + 10, PRE_PROMOTE_FAILED),
     "Promotion cancelled because the pre-promote script failed (the pre_promote script exited with status 1"),
    (Promoting(5000), VETOED, cluster("n2"), (), SittingOut(NOW + 10, PRE_PROMOTE_FAILED), "pre-promote"),
    (Promoting(), Replied(act.RunPromote(), False, "x", result={"refused_by": "someone else"}), None,
     (act.ReleaseLock(),), Idle(), "giving the leader lock back"),
    (Idle(), VETOED, None, (), None, ""),  # a promote whose phase a shutdown outran
    (Bootstrapping(), BOOTSTRAPPED, cluster(None), (act.PublishInitialize(SYSID), act.WriteInitialConfig(),
                                                    act.TakeLock()), Idle(), "initialized"),
    (Bootstrapping(), Replied(act.RunBootstrap(), False, "initdb: disk full"), cluster(None),
     (act.DeleteInitialize(), act.Fatal("bootstrap failed: initdb: disk full")), None, "bootstrap failed"),
    (Fencing(), Fenced(True, "3 processes killed"), None, (act.ReleaseLock(),), SittingOut(NOW + 10),
     "fenced PostgreSQL"),
    (Fencing(), Fenced(False, "pid 42 survived"), None, (), FenceUnconfirmed(), "could not be confirmed"),
    (Idle(), Fenced(False, "pid 42 survived"), None, (), FenceUnconfirmed(), "could not be confirmed"),
    (Idle(), Fenced(True, "late"), None, (), None, ""),
    (Idle(), DEMOTED, None, (), None, ""),  # a demote whose phase a shutdown outran: no hand-over
    (Idle(), ShutdownAsked(), None, (SHUTDOWN_STOP,), ShuttingDown(True), "stopping PostgreSQL"),
    (Demoting("n2"), ShutdownAsked(), None, (SHUTDOWN_STOP,), ShuttingDown(True), "stopping PostgreSQL"),
    (Idle(), ShutdownAsked(), cluster(paused=True), (act.ReportShutdown(False, False, left_running=True),),
     ShuttingDown(False), "leaving PostgreSQL running"),
    (FenceUnconfirmed(), ShutdownAsked(), None, (SHUTDOWN_STOP,), ShuttingDown(True, lock_writes=False), ""),
    (ShuttingDown(True), ShutdownAsked(), None, (), None, ""),
    (ShuttingDown(True), Replied(SHUTDOWN_STOP, True), None,
     (act.ReleaseLock(), act.Disarm("PostgreSQL stopped for shutdown"), act.ReportShutdown(True, True)),
     ShuttingDown(False), "released the leader key"),
    (ShuttingDown(True), Replied(SHUTDOWN_STOP, True), cluster("n2"),
     (act.Disarm("PostgreSQL stopped for shutdown"), act.ReportShutdown(True, False)), ShuttingDown(False),
     "PostgreSQL stopped"),
    (ShuttingDown(True), Replied(SHUTDOWN_STOP, False, "timed out"), None, (act.ReportShutdown(False, False),),
     ShuttingDown(False), "keeping the leader key"),
    (ShuttingDown(True), Replied(act.RunStop("immediate"), True), None, (), None, ""),
    (ShuttingDown(True), Fenced(False, "pid 42 survived"), None, (), ShuttingDown(True, lock_writes=False), ""),
    (SittingOut(NOW + 5), Replied(act.RunFollow("n2"), True), None, (), None, ""),
    (Idle(), GaveUp("api crash loop"), None, (act.ReleaseLock(),), ShuttingDown(False, lock_writes=False),
     "releasing the leader key"),
    (Fencing(), GaveUp("api crash loop"), cluster("n2"), (), ShuttingDown(False, lock_writes=False), "gives up"),
]


@pytest.mark.parametrize("phase, event, c, actions, next_phase, reason", ANSWERS,
                         ids=[f"{type(a[0]).__name__}-{type(a[1]).__name__}-{i}" for i, a in enumerate(ANSWERS)])
def test_answers(phase, event, c, actions, next_phase, reason):
    d = answer(phase, event, c)
    assert (d.actions, d.phase) == (actions, next_phase)
    assert reason in d.reason


@pytest.mark.parametrize("phase", [kind() if kind not in (Promoting, Demoting, SittingOut, ShuttingDown) else
                                   {Promoting: Promoting(), Demoting: Demoting("n2"), SittingOut: SittingOut(NOW),
                                    ShuttingDown: ShuttingDown(True)}[kind] for kind in PHASES])
def test_ordinary_replies_move_no_phase(phase):
    for kind in act.ORDINARY_REQUESTS:
        action = {act.RunCreateReplica: act.RunCreateReplica("n2"), act.RunStart: act.RunStart(True),
                  act.RunFollow: act.RunFollow("n2"), act.SetSyncStandbys: act.SetSyncStandbys("n2"),
                  act.RunResumeReplay: act.RunResumeReplay()}[kind]
        assert answer(phase, Replied(action, False, "x")) == Decision((), "")


# -- phases entered and left by the cycle ------------------------------------------------------------------


def cycle(c: Cluster | None, phase, p: PgState | None = None, busy: str = "", **kw) -> Decision:
    local = ha.Local(pg() if p is None else p, True, busy, phase=phase, now=NOW, **kw)
    return ha.decide(c, local, ME, SETTINGS)


def test_the_cycle_enters_each_protocol_with_its_action():
    hung = replace(pg(), probe_ok=False, failed_probes=2, postmaster_pid=42)
    assert cycle(cluster(), Idle(), hung, unhealthy_for=5.0) == Decision(
        (act.RefreshLock(), act.FencePostgres()), "PostgreSQL has not answered for 5.0s: fencing it", phase=Fencing())
    assert cycle(cluster(), Idle(), pg(role="replica")).phase == Promoting()
    handed = cluster(None, failover={"leader": "n2", "member": "n1"})
    d = cycle(handed, Idle(), pg(role="replica"))
    assert d.actions == (act.AcquireLock(), act.ClearFailover(), act.RunPromote(require_lsn=5000))
    assert d.phase == Promoting(5000)
    crashed = replace(pg(state="crashed"), probe_ok=False)
    d = cycle(cluster(), Idle(), crashed, down_for=400.0)
    assert d.actions == (act.YieldLock(),) and d.phase == SittingOut(NOW + SETTINGS.ttl)


def test_a_switchover_enters_demoting_for_its_candidate():
    c = cluster(failover={"leader": "n1", "member": "n2"})
    streaming = pg(replication=({"application_name": "n2", "state": "streaming"},))
    local = ha.Local(streaming, True, "", {"n2": ha.PeerStatus("n2", "replica", "running", 5000)}, phase=Idle(),
                     now=NOW)
    d = ha.decide(c, local, ME, SETTINGS)
    assert act.RunDemote("n2") in d.actions and d.phase == Demoting("n2")


def test_a_filter_that_drops_the_starting_action_drops_the_phase():
    paused = cluster(paused=True)
    d = cycle(paused, Idle(), pg(role="replica"))
    assert not any(isinstance(a, act.RunPromote) for a in d.actions) and d.phase is None


def test_shutting_down_keeps_the_lock_unless_a_fence_forbids_it():
    assert cycle(cluster(), ShuttingDown(True)) == Decision((act.RefreshLock(),), "shutting down")
    assert cycle(cluster(), ShuttingDown(True, lock_writes=False)) == Decision((), "shutting down")
    assert cycle(cluster("n2"), ShuttingDown(True)) == Decision((), "shutting down")


def test_an_unconfirmed_fence_writes_no_lock_until_postgres_is_gone():
    alive = replace(pg(), probe_ok=False, postmaster_pid=42)
    for c in (cluster(), cluster(paused=True), cluster(None)):
        d = cycle(c, FenceUnconfirmed(), alive)
        assert d.actions == () and d.phase is None and "not confirmed" in d.reason
    gone = replace(pg(state="crashed"), probe_ok=False, postmaster_pid=None)
    d = cycle(cluster(), FenceUnconfirmed(), gone)
    assert d.phase == Idle() and act.RunStart(as_primary=True) in d.actions


def test_fencing_keeps_the_lock_while_the_supervisor_kills():
    assert cycle(cluster(), Fencing(), busy="fence") == Decision((act.RefreshLock(),),
                                                                 "updated leader lock during fence")


def test_a_lost_request_ends_its_phase():
    assert cycle(cluster(), Demoting("n2"), busy="demote").phase is None
    assert cycle(cluster(), Demoting("n2"), busy="").phase == Idle()
    assert cycle(cluster(), Promoting(), busy="promote, stop").phase is None
    assert cycle(cluster(None), Bootstrapping(), busy="").phase == Idle()


def test_sitting_out_ends_when_another_node_leads_or_the_time_is_up():
    replica = pg(role="replica")
    assert cycle(cluster(None), SittingOut(NOW + 1), replica, peers={}).phase is None
    assert cycle(cluster("n2"), SittingOut(NOW + 1), replica).phase == Idle()
    over = cycle(cluster(None), SittingOut(NOW), replica, peers={})  # ...and it may race again at once
    assert over.actions == (act.AcquireLock(), act.RunPromote()) and over.phase == Promoting()
    # While it lasts we do not race, as if tagged nofailover.
    d = cycle(cluster(None), SittingOut(NOW + 1), replica, peers={})
    assert act.AcquireLock() not in d.actions and "not allowed to promote" in d.reason


def test_a_vetoed_promotion_sits_out_the_races_for_ttl_whoever_leads():
    vetoed = SittingOut(NOW + 5, PRE_PROMOTE_FAILED)
    replica = pg(role="replica", upstream="n2")
    # No leader: no race for us, and the decision says why.
    d = cycle(cluster(None), vetoed, replica, peers={})
    assert act.AcquireLock() not in d.actions and d.phase is None and PRE_PROMOTE_FAILED in d.reason
    # Another node leads: we follow it, still sitting out (its lock may go again within ttl)...
    d = cycle(cluster("n2"), vetoed, replica)
    assert d.actions == () and d.phase is None and PRE_PROMOTE_FAILED in d.reason
    # ...until ttl has passed.
    d = cycle(cluster("n2"), SittingOut(NOW, PRE_PROMOTE_FAILED), replica)
    assert d.phase == Idle() and PRE_PROMOTE_FAILED not in d.reason
    # Still holding the lock (the release did not reach etcd): no second promotion, the lock goes again.
    d = cycle(cluster(), vetoed, pg(role="replica"))
    assert d.actions == (act.YieldLock(),) and "not promoting" in d.reason
    # A fenced node's sitting out still ends as soon as another node leads.
    assert cycle(cluster("n2"), SittingOut(NOW + 5), replica).phase == Idle()
