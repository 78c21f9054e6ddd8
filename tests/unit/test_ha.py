"""Table tests of the pure HA policy."""

from dataclasses import replace

import pytest

from hasup.dcs.model import Cluster, Leader, Member
from hasup.election import phases as ph
from hasup.election import policy as ha
from hasup.election.phases import Idle, SittingOut
from hasup.ipc import PgState

ME = ha.Node("n1")
SETTINGS = ha.Settings(ttl=10, loop_wait=2, retry_timeout=4, maximum_lag_on_failover=1000)
SYSID = "7300000000000000001"


def member(name, state="running", role="replica", wal=5000, tl=1):
    return Member(name, {"conn_url": f"postgres://127.0.0.1:5{name[-1]}/postgres",
                         "api_url": f"http://127.0.0.1:8{name[-1]}/patroni", "state": state, "role": role,
                         "xlog_location": wal, "timeline": tl})


def cluster(leader=None, initialize=SYSID, members=("n1", "n2", "n3"), optime=5000, history=None, config=None):
    return Cluster(initialize=initialize, config=config if config is not None else {"ttl": 10}, config_index=1,
                   leader=Leader(leader, 10) if leader else None,
                   members={m: member(m, role="primary" if m == leader else "replica") for m in members},
                   history=history or [], failover=None, sync=None, optime=optime)


def pg(state="running", role="replica", wal=5000, tl=1, empty=False, busy="", upstream=None, sysid=SYSID,
       history=()):
    return PgState(state=state, role=role, data_dir_empty=empty, probe_ok=state == "running", probe_at=0.0,
                   busy=busy, sysid=None if empty else sysid, timeline=tl, wal_position=wal,
                   upstream=upstream, timeline_history=history)


def peer(name, role="replica", state="running", wal=5000, **kw):
    return ha.PeerStatus(name, role, state, wal, **kw)


def local(p, fresh=True, busy="", peers=None):
    return ha.Local(p, fresh, busy, peers or {})


def kinds(decision):
    return [type(a).__name__ for a in decision.actions]


CASES = [
    # (description, cluster, local, expected actions, [the phase entered,] reason fragment)
    ("etcd down, primary demotes", None, local(pg(role="primary")), (ha.RunStop("immediate"),),
     "DCS is not accessible"),
    ("etcd down, replica waits", None, local(pg()), (), "DCS is not accessible"),
    ("fresh cluster bootstraps", cluster(initialize=None, members=()),
     local(pg(state="stopped", empty=True, role="uninitialized")),
     (ha.ClaimInitialize(), ha.RunBootstrap()), ph.Bootstrapping(), "bootstrapping"),
    ("bootstrap in progress elsewhere", cluster(initialize=""), local(pg(state="stopped", empty=True)), (),
     "waiting for leader to bootstrap"),
    ("empty replica clones from leader", cluster(leader="n2"), local(pg(state="stopped", empty=True)),
     (ha.RunCreateReplica("n2"),), "trying to bootstrap from leader 'n2'"),
    ("empty node holding lock lets go", cluster(leader="n1"), local(pg(state="stopped", empty=True)),
     (ha.ReleaseLock(),), "data dir empty"),
    ("stale pg state: leader only keeps lock", cluster(leader="n1"), local(pg(role="primary"), fresh=False),
     (ha.RefreshLock(),), "waiting for a fresh"),
    ("stale pg state: replica does nothing", cluster(leader="n2"), local(pg(), fresh=False), (), "waiting"),
    ("busy leader keeps its lock", cluster(leader="n1"), local(pg(role="primary"), busy="promote"),
     (ha.RefreshLock(),), "updated leader lock during promote"),
    ("leader with the lock", cluster(leader="n1"), local(pg(role="primary")), (ha.RefreshLock(), ha.WriteStatus()),
     "the leader with the lock"),
    ("lock holder still replica promotes", cluster(leader="n1"), local(pg()), (ha.RefreshLock(), ha.RunPromote()),
     ph.Promoting(), "promoted self"),
    ("follower following", cluster(leader="n2"), local(pg(upstream="n2")), (), "following a leader (n2)"),
    ("follower re-points to new leader", cluster(leader="n3"), local(pg(upstream="n2")), (ha.RunFollow("n3"),),
     "following new leader n3"),
    ("primary without lock demotes", cluster(leader="n2"), local(pg(role="primary")), (ha.RunFollow("n2"),),
     "demoting self"),
    ("crashed leader restarts in place", cluster(leader="n1"), local(pg(state="crashed", role="primary")),
     (ha.RefreshLock(), ha.RunStart(as_primary=True)), "starting primary after failure"),
    ("stopped replica starts following", cluster(leader="n2"), local(pg(state="stopped")), (ha.RunFollow("n2"),),
     "starting as a secondary"),
    ("sysid mismatch is fatal", cluster(leader="n2", initialize="1"), local(pg()),
     (ha.Fatal(f"system ID mismatch, node n1 belongs to a different cluster: {SYSID} != 1"),), "system ID mismatch"),
    ("healthiest replica takes over", cluster(), local(pg(), peers={"n2": peer("n2", wal=4000), "n3": None}),
     (ha.AcquireLock(), ha.RunPromote()), ph.Promoting(), "promoted self to leader by acquiring session lock"),
    ("a peer ahead wins instead", cluster(), local(pg(), peers={"n2": peer("n2", wal=6000)}), (),
     "n2 has a higher wal position"),
    ("a live primary blocks the race", cluster(), local(pg(), peers={"n2": peer("n2", role="primary")}), (),
     "primary (n2) is still alive"),
    ("a stopped old primary does not block", cluster(),
     local(pg(), peers={"n2": peer("n2", role="primary", state="stopped", wal=9000)}),
     (ha.AcquireLock(), ha.RunPromote()), ph.Promoting(), "promoted"),
    ("lagging replica stays out", cluster(optime=10000), local(pg(wal=5000)), (), "maximum replication lag"),
    ("equal wal, higher priority peer wins", cluster(),
     local(pg(), peers={"n2": peer("n2", failover_priority=2)}), (), "higher failover priority"),
    ("nofailover peer ahead does not block", cluster(),
     local(pg(), peers={"n2": peer("n2", wal=9000, nofailover=True)}), (ha.AcquireLock(), ha.RunPromote()),
     ph.Promoting(), "promoted"),
    ("primary without any leader retakes lock", cluster(), local(pg(role="primary")),
     (ha.AcquireLock(), ha.WriteStatus()), "acquired session lock"),
    ("primary behind cluster timeline steps down", cluster(history=[[1, 100, "r"]]), local(pg(role="primary", tl=1)),
     (ha.RunFollow(None),), "newer timeline"),
    ("paused cluster never fails over", cluster(config={"pause": True}), local(pg()), (), "paused"),
    ("promoted leader records history", cluster(leader="n1"),
     local(pg(role="primary", tl=2, history=((1, 100, "no recovery target specified"),))),
     (ha.RefreshLock(), ha.WriteStatus(), ha.WriteHistory()), "the leader with the lock"),
    ("adopt running primary without initialize", cluster(initialize=None), local(pg(role="primary")),
     (ha.PublishInitialize(SYSID),), "adopting"),
]


ROWS = [(*row[:4], row[4] if len(row) == 6 else None, row[-1]) for row in CASES]


@pytest.mark.parametrize("desc,c,loc,actions,phase,reason", ROWS, ids=[row[0] for row in ROWS])
def test_decide_table(desc, c, loc, actions, phase, reason):
    d = ha.decide(c, loc, ME, SETTINGS)
    assert (d.actions, d.phase) == (actions, phase), d
    assert reason in d.reason


def test_nofailover_node_never_races():
    d = ha.decide(cluster(), local(pg(wal=9999)), replace(ME, nofailover=True), SETTINGS)
    assert kinds(d) == [] and "not allowed to promote" in d.reason


def test_nofailover_node_does_not_bootstrap():
    d = ha.decide(cluster(initialize=None, members=()), local(pg(state="stopped", empty=True)),
                  replace(ME, nofailover=True), SETTINGS)
    assert kinds(d) == []


def test_history_needed_only_for_unrecorded_timelines():
    assert ha.needs_history(cluster(), pg(role="primary", tl=2))
    assert not ha.needs_history(cluster(history=[[1, 100, "r", "t", "n1"]]), pg(role="primary", tl=2))
    assert not ha.needs_history(cluster(), pg(role="primary", tl=1))


def test_never_two_leaders_from_one_view():
    """Whatever the peers say, a node that sees a leader other than itself never takes the lock."""
    for p in (pg(), pg(role="primary"), pg(state="stopped"), pg(wal=10**9)):
        d = ha.decide(cluster(leader="n2"), local(p), ME, SETTINGS)
        assert not any(isinstance(a, ha.AcquireLock | ha.RunPromote) for a in d.actions), (p, d)


# -- properties -----------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

names = st.sampled_from(["n1", "n2", "n3"])
pg_states = st.builds(
    pg,
    state=st.sampled_from(["running", "stopped", "crashed", "starting", "unknown"]),
    role=st.sampled_from(["primary", "replica", "uninitialized"]),
    wal=st.integers(0, 20000), tl=st.integers(1, 4), empty=st.booleans(),
    busy=st.sampled_from(["", "", "promote"]), upstream=st.none() | names,
)
peer_maps = st.dictionaries(st.sampled_from(["n2", "n3"]), st.none() | st.builds(
    peer, names, role=st.sampled_from(["primary", "replica"]), state=st.sampled_from(["running", "stopped"]),
    wal=st.integers(0, 20000), nofailover=st.booleans()))
clusters = st.builds(
    cluster, leader=st.none() | names, initialize=st.sampled_from([None, "", SYSID]),
    optime=st.none() | st.integers(0, 20000),
    history=st.sampled_from([None, [[1, 10, "r"]], [[1, 10, "r"], [2, 20, "r"]]]),
    config=st.sampled_from([{}, {"pause": True}]),
)


@settings(max_examples=400, deadline=None)
@given(c=clusters, p=pg_states, fresh=st.booleans(), busy=st.sampled_from(["", "follow"]), peers=peer_maps,
       nofailover=st.booleans())
def test_policy_invariants(c, p, fresh, busy, peers, nofailover):
    me = replace(ME, nofailover=nofailover)
    d = ha.decide(c, ha.Local(p, fresh, busy, peers), me, SETTINGS)
    acts = {type(a) for a in d.actions}
    other_leader = c.leader is not None and c.leader.name != me.name
    if other_leader:  # never two leaders
        assert not acts & {ha.AcquireLock, ha.RunPromote, ha.ClaimInitialize, ha.RefreshLock}, d
    if ha.RunPromote in acts:
        assert not nofailover or c.leader is not None and c.leader.name == me.name, d
        assert fresh and not busy and not p.busy, d
        if c.leader is None:  # a race win: never a stale node, never against a live primary
            assert c.optime is None or c.optime - (p.wal_position or 0) <= SETTINGS.maximum_lag_on_failover
            assert not any(x and x.role == "primary" and x.state == "running" for x in peers.values())
            assert not c.paused
    if ha.AcquireLock in acts:
        assert c.leader is None, d
        # Paused, only the operator's running primary takes a free lock, and it is not promoted.
        assert not c.paused or p.role == "primary" and p.state == "running" and ha.RunPromote not in acts, d
    if not fresh or busy or p.busy:  # nothing but keeping the lock while the picture is unclear
        assert acts <= {ha.RefreshLock}, d
    assert d.reason


def test_a_replica_stuck_on_a_forked_timeline_is_rewound():
    c = replace(cluster(leader="n2"), members={"n2": member("n2", role="primary", tl=3)})
    stuck = ha.Local(pg(upstream="n2", tl=2), True, "", {}, not_streaming_for=45.0)
    rewinding = replace(SETTINGS, use_pg_rewind=True)
    d = ha.decide(c, stuck, ME, rewinding)
    assert d.actions == (ha.RunFollow("n2", rewind=True),) and "rewinding" in d.reason
    # Not yet long enough, same timeline, or rewind not allowed: leave it alone.
    for loc, s in ((replace(stuck, not_streaming_for=10.0), rewinding),
                   (replace(stuck, pg=pg(upstream="n2", tl=3)), rewinding),
                   (stuck, SETTINGS)):
        assert ha.decide(c, loc, ME, s).actions == ()


# -- switchover ---------------------------------------------------------------------------

STREAMING = tuple({"application_name": n, "state": "streaming"} for n in ("n2", "n3"))


def leader_pg(**kw):
    return replace(pg(role="primary", **kw), replication=STREAMING)


def with_failover(c, **fo):
    return replace(c, failover=fo, failover_index=7)


def test_leader_hands_over_to_a_healthy_streaming_candidate():
    c = with_failover(cluster(leader="n1"), leader="n1", member="n2")
    d = ha.decide(c, local(leader_pg(), peers={"n2": peer("n2"), "n3": peer("n3")}), ME, SETTINGS)
    assert ha.RunDemote("n2") in d.actions and ha.RefreshLock() in d.actions and "switchover" in d.reason


@pytest.mark.parametrize("fo,peers,why", [
    ({"leader": "n1", "member": "nobody"}, {"n2": peer("n2")}, "no healthy candidate nobody"),
    ({"leader": "n1", "member": "n2"}, {"n2": None}, "no healthy candidate n2"),
    ({"leader": "n1", "member": "n2"}, {"n2": peer("n2", wal=0)}, "no healthy candidate n2"),  # lagging
    ({"leader": "n1", "member": "n2"}, {"n2": peer("n2", nofailover=True)}, "no healthy candidate n2"),
    ({"leader": "n3", "member": "n2"}, {"n2": peer("n2")}, "names n3 as the leader"),
    ({"leader": "n1", "member": "n1"}, {}, "already the leader"),
])
def test_leader_refuses_and_clears_bad_requests(fo, peers, why):
    late = replace(local(leader_pg(), peers=peers), failover_age=ha.streaming_grace(SETTINGS) + 1)
    d = ha.decide(with_failover(cluster(leader="n1"), **fo), late, ME, SETTINGS)
    assert ha.ClearFailover() in d.actions and not any(isinstance(a, ha.RunDemote) for a in d.actions)
    assert why in d.reason


def test_unhealthy_member_candidate_is_waited_for_and_rechecked_soon():
    # Its /patroni trails its WAL by up to a probe (a segment switch looks like 16 MB of lag), or it is restarting.
    c = with_failover(cluster(leader="n1"), leader="n1", member="n2")
    d = ha.decide(c, local(leader_pg(), peers={"n2": peer("n2", wal=0)}), ME, SETTINGS)
    assert not any(isinstance(a, ha.ClearFailover | ha.RunDemote) for a in d.actions)
    assert "waiting for a healthy candidate n2" in d.reason and d.recheck_in == ha.SWITCHOVER_RECHECK
    unknown = with_failover(cluster(leader="n1"), leader="n1", member="nobody")
    assert ha.ClearFailover() in ha.decide(unknown, local(leader_pg(), peers={}), ME, SETTINGS).actions


def test_candidate_not_streaming_from_the_leader_is_waited_for_then_refused():
    c = with_failover(cluster(leader="n1"), leader="n1", member="n2")
    p = replace(pg(role="primary"), replication=({"application_name": "n3", "state": "streaming"},))
    fresh = ha.Local(p, True, "", {"n2": peer("n2")}, failover_age=1.0)
    d = ha.decide(c, fresh, ME, SETTINGS)  # our rows may trail a replica that just connected
    assert not any(isinstance(a, ha.ClearFailover | ha.RunDemote) for a in d.actions) and "waiting" in d.reason
    d = ha.decide(c, replace(fresh, failover_age=ha.streaming_grace(SETTINGS) + 1), ME, SETTINGS)
    assert ha.ClearFailover() in d.actions and "not streaming" in d.reason


def test_scheduled_switchover_waits_and_stale_ones_are_dropped():
    c = with_failover(cluster(leader="n1"), leader="n1", member="n2", scheduled_at="2026-01-01T00:01:00+00:00")
    at = 1767225660.0  # 2026-01-01T00:01:00Z
    early = ha.decide(c, ha.Local(leader_pg(), True, "", {"n2": peer("n2")}, now_wall=at - 60), ME, SETTINGS)
    assert "Awaiting switchover" in early.reason and not any(isinstance(a, ha.RunDemote) for a in early.actions)
    due = ha.decide(c, ha.Local(leader_pg(), True, "", {"n2": peer("n2")}, now_wall=at + 1), ME, SETTINGS)
    assert ha.RunDemote("n2") in due.actions
    stale = ha.decide(c, ha.Local(leader_pg(), True, "", {"n2": peer("n2")}, now_wall=at + 60), ME, SETTINGS)
    assert ha.ClearFailover() in stale.actions and "stale" in stale.reason


def test_named_candidate_takes_over_and_others_defer_to_it():
    c = with_failover(cluster(optime=4242), member="n1")
    d = ha.decide(c, local(pg(wal=100)), ME, SETTINGS)  # the lag check is the worker's require_lsn instead
    assert d.actions == (ha.AcquireLock(), ha.ClearFailover(), ha.RunPromote(require_lsn=4242))
    other = with_failover(cluster(), member="n2")
    d = ha.decide(other, local(pg(wal=9999), peers={"n2": peer("n2", wal=1)}), ME, SETTINGS)
    assert d.actions == () and "n2 is the failover candidate" in d.reason
    # An unreachable candidate does not block the normal race.
    d = ha.decide(other, local(pg(wal=5000), peers={"n2": None}), ME, SETTINGS)
    assert ha.AcquireLock() in d.actions


def test_history_keeps_recorded_entries_and_stamps_the_newest_switch():
    from hasup.election.member import recorded_history
    old = [[1, 100, "no recovery target specified", "2026-01-01T00:00:00+00:00", "n2"]]
    got = recorded_history(old, ((1, 100, "no recovery target specified"), (2, 200, "x")), "NOW", "n1")
    assert got == [old[0], [2, 200, "x", "NOW", "n1"]]


# -- watchdog.mode: required ------------------------------------------------------------------


def no_watchdog(p, **kw):
    return ha.Local(p, True, "", kw.get("peers", {}), watchdog_usable=False)


def test_required_watchdog_that_cannot_work_keeps_the_node_from_leading():
    d = ha.decide(cluster(), no_watchdog(pg(), peers={"n2": peer("n2", wal=1)}), ME, SETTINGS)
    assert d.actions == () and "Watchdog device is not usable" in d.reason
    d = ha.decide(cluster(initialize=None, members=()), no_watchdog(pg(state="stopped", empty=True)), ME, SETTINGS)
    assert d.actions == () and "not bootstrapping" in d.reason
    d = ha.decide(cluster(), no_watchdog(pg(role="primary")), ME, SETTINGS)  # no retaking a lost lock either
    assert ha.AcquireLock() not in d.actions
    d = ha.decide(with_failover(cluster(), member="n1"), no_watchdog(pg()), ME, SETTINGS)
    assert ha.AcquireLock() not in d.actions


def test_a_leader_whose_watchdog_fails_demotes_then_lets_go():
    d = ha.decide(cluster(leader="n1"), no_watchdog(pg(role="primary")), ME, SETTINGS)
    assert d.actions == (ha.RefreshLock(), ha.RunFollow(None)) and "watchdog" in d.reason
    d = ha.decide(cluster(leader="n1"), no_watchdog(pg()), ME, SETTINGS)
    assert d.actions == (ha.ReleaseLock(),)


# -- fencing a hung primary ------------------------------------------------------------------


def hung(unhealthy_for, **kw):
    p = replace(pg(role="primary"), probe_ok=False, failed_probes=2, postmaster_pid=4242)
    return ha.Local(p, True, "", {}, unhealthy_for=unhealthy_for, **kw)


def test_a_hung_primary_is_fenced_at_the_health_deadline_not_before():
    c = cluster(leader="n1")
    deadline = SETTINGS.health_deadline
    assert ha.decide(c, hung(deadline - 0.1), ME, SETTINGS).actions == (ha.RefreshLock(), ha.WriteStatus())
    d = ha.decide(c, hung(deadline), ME, SETTINGS)
    assert d.actions == (ha.RefreshLock(), ha.FencePostgres()) and "fencing" in d.reason
    # Never while paused, never while the postgres worker is busy, never without the lock.
    assert ha.FencePostgres() not in ha.decide(replace(c, config={"ttl": 10, "pause": True}), hung(60), ME,
                                               SETTINGS).actions
    assert ha.FencePostgres() not in ha.decide(c, replace(hung(60), busy="restart"), ME, SETTINGS).actions
    assert ha.FencePostgres() not in ha.decide(cluster(leader="n2"), hung(60), ME, SETTINGS).actions


def test_an_unanswering_or_fenced_primary_never_retakes_a_free_lock():
    free = cluster(leader=None)
    assert ha.AcquireLock() not in ha.decide(free, hung(0.5), ME, SETTINGS).actions
    answering = local(pg(role="primary"))
    assert ha.AcquireLock() in ha.decide(free, answering, ME, SETTINGS).actions
    sitting_out = ha.Node(ME.name, nofailover=True)
    assert ha.AcquireLock() not in ha.decide(free, answering, sitting_out, SETTINGS).actions


def test_unhealthy_for_needs_a_live_worker_and_enough_failures():
    from hasup.election.fencing import unhealthy_for
    from hasup.timing import Deadlines

    d = Deadlines.of(10, 2, 3, 3)
    failing = replace(pg(role="primary"), probe_ok=False, failed_probes=2, postmaster_pid=4242, probe_at=100.0)
    assert unhealthy_for(failing, received_at=103.5, now=104.0, deadlines=d) == 4.0
    assert unhealthy_for(replace(failing, failed_probes=1), 103.5, 104.0, d) == 0.0  # one slow probe
    assert unhealthy_for(failing, received_at=90.0, now=104.0, deadlines=d) == 0.0  # silent worker: no evidence
    assert unhealthy_for(replace(failing, busy="restart"), 103.5, 104.0, d) == 0.0
    assert unhealthy_for(replace(failing, postmaster_pid=None), 103.5, 104.0, d) == 0.0  # gone, not hung
    assert unhealthy_for(replace(failing, probe_ok=True), 103.5, 104.0, d) == 0.0


def test_a_fenced_node_stays_down_until_another_node_leads():
    crashed = replace(pg(state="crashed", role="primary"), probe_ok=False)
    sitting_out = ha.Local(crashed, True, phase=SittingOut(until=100.0), now=50.0)
    leaderless = ha.decide(cluster(leader=None), sitting_out, ME, SETTINGS)
    assert leaderless.actions == () and "fenced" in leaderless.reason and leaderless.phase is None
    led = ha.decide(cluster(leader="n2"), sitting_out, ME, SETTINGS)
    assert led.actions == (ha.RunFollow("n2"),) and led.phase == Idle()  # the race it sat out is over
    expired = ha.decide(cluster(leader=None), replace(sitting_out, now=100.0), ME, SETTINGS)
    assert expired.phase == Idle() and expired.actions == (ha.RunFollow(None),)


# -- primary_start_timeout, pause, replicatefrom -----------------------------------------------


def crashed_primary(**kw):
    return ha.Local(replace(pg(state="crashed", role="primary"), probe_ok=False), True, **kw)


def test_a_crashed_primary_restarts_in_place_until_primary_start_timeout():
    c = cluster(leader="n1")
    patient = replace(SETTINGS, primary_start_timeout=300)
    d = ha.decide(c, crashed_primary(down_for=10), ME, patient)
    assert ha.RunStart(as_primary=True) in d.actions and ha.RefreshLock() in d.actions
    d = ha.decide(c, crashed_primary(down_for=300), ME, patient)
    assert d.actions == (ha.YieldLock(),) and "primary_start_timeout" in d.reason
    hasty = replace(SETTINGS, primary_start_timeout=0)
    assert ha.decide(c, crashed_primary(down_for=0), ME, hasty).actions == (ha.YieldLock(),)
    # Nobody could take over: restarting in place beats an empty cluster.
    alone = replace(c, members={"n1": member("n1", role="primary")})
    assert ha.RunStart(as_primary=True) in ha.decide(alone, crashed_primary(down_for=0), ME, hasty).actions
    vetoed = replace(c, members={"n1": member("n1", role="primary"),
                                 "n2": replace(member("n2"), data={**member("n2").data, "tags": {"nofailover": True}})})
    assert ha.RunStart(as_primary=True) in ha.decide(vetoed, crashed_primary(down_for=0), ME, hasty).actions


def test_paused_cluster_keeps_the_lock_and_leaves_postgresql_alone():
    paused = replace(cluster(leader="n1"), config={"ttl": 10, "pause": True})
    # A leader whose PostgreSQL is down lets go of the key (as Patroni), without starting it...
    for state in ("crashed", "stopped"):
        down = ha.Local(replace(pg(state=state, role="primary"), probe_ok=False), True, down_for=1000)
        d = ha.decide(paused, down, ME, replace(SETTINGS, primary_start_timeout=0))
        assert d == ha.Decision((ha.ReleaseLock(),), "PAUSE: removed leader lock because postgres is not running")
    # ...but not on a stale report, nor while the postgres worker is busy (a restart the operator asked for).
    stale = ha.Local(replace(pg(state="stopped", role="primary"), probe_ok=False), False)
    assert ha.decide(paused, stale, ME, SETTINGS).actions == (ha.RefreshLock(),)
    restarting = ha.Local(replace(pg(state="stopped", role="primary"), probe_ok=False), True, busy="restart")
    assert ha.decide(paused, restarting, ME, SETTINGS).actions == (ha.RefreshLock(),)
    # A running one keeps it, whatever the policy would otherwise do.
    d = ha.decide(paused, local(pg(role="primary", state="starting")), ME, SETTINGS)
    assert d.actions == (ha.RefreshLock(),) and d.reason.startswith("PAUSE: ")
    # Nobody races for the key it left while paused, not even the replica furthest ahead.
    for me in ("n2", "n3"):
        d = ha.decide(replace(paused, leader=None), local(pg(upstream="n1", wal=9000)), ha.Node(me), SETTINGS)
        assert d.actions == () and "paused" in d.reason
    # A replica of a paused cluster is not started, a running primary without the lock is not demoted...
    follower = ha.decide(replace(paused, leader=Leader("n2", 3)), crashed_primary(), ME, SETTINGS)
    assert follower.actions == ()
    stray = ha.decide(replace(paused, leader=Leader("n2", 3)), local(pg(role="primary")), ME, SETTINGS)
    assert stray.actions == ()
    # ...but a running replica still follows the leader it is told to.
    repoint = ha.decide(replace(paused, leader=Leader("n2", 3)), local(pg(upstream="n3")), ME, SETTINGS)
    assert repoint.actions == (ha.RunFollow("n2"),)
    assert ha.decide(replace(paused, leader=None), local(pg()), ME, SETTINGS).actions == ()
    # With no leader at all, the running primary takes the lock (and nothing else), as Patroni's does.
    unlocked = ha.decide(replace(paused, leader=None), local(pg(role="primary")), ME, SETTINGS)
    assert unlocked.actions == (ha.AcquireLock(), ha.WriteStatus()) and unlocked.reason.startswith("PAUSE: ")


def test_replicatefrom_streams_from_a_running_replica_else_from_the_leader():
    c = cluster(leader="n2")
    cascade = ha.Node("n1", replicatefrom="n3")
    assert ha.decide(c, local(pg(upstream="n2")), cascade, SETTINGS).actions == (ha.RunFollow("n3"),)
    assert ha.decide(c, local(pg(upstream="n3")), cascade, SETTINGS).actions == ()
    down = replace(c, members={**c.members, "n3": member("n3", state="stopped")})
    assert ha.decide(down, local(pg(upstream="n3")), cascade, SETTINGS).actions == (ha.RunFollow("n2"),)
    itself = ha.Node("n1", replicatefrom="n1")
    assert ha.decide(c, local(pg(upstream="n2")), itself, SETTINGS).actions == ()


def test_a_replica_with_replay_paused_counts_only_what_it_replayed():
    c = cluster(leader=None, optime=10_000_000)
    paused = replace(pg(wal=10_000_000), replay_paused=True, replayed_location=1_000, received_location=10_000_000)
    d = ha.decide(c, local(paused), ME, SETTINGS)
    assert ha.AcquireLock() not in d.actions and "maximum replication lag" in d.reason
    assert ha.AcquireLock() in ha.decide(c, local(replace(paused, replay_paused=False)), ME, SETTINGS).actions
    from hasup.peers import parse_status
    body = {"role": "replica", "state": "running",
            "xlog": {"received_location": 9000, "replayed_location": 100, "paused": True}}
    assert parse_status("n2", body).wal_position == 100
    assert parse_status("n2", {**body, "xlog": {**body["xlog"], "paused": False}}).wal_position == 9000


def test_a_replica_whose_replay_was_paused_resumes_it_unless_the_cluster_is_paused():
    c = cluster(leader="n2")
    stuck = replace(pg(upstream="n2"), replay_paused=True, server_version=150004)
    d = ha.decide(c, local(stuck), ME, SETTINGS)
    assert d.actions == (ha.RunResumeReplay(),) and "resuming paused WAL replay" in d.reason
    # Maintenance mode: the operator paused it on purpose.
    paused = replace(c, config={"ttl": 10, "pause": True})
    assert ha.decide(paused, local(stuck), ME, SETTINGS).actions == ()
    # Not on a replay that runs, before PostgreSQL 14, on a stale report, while busy, or on a primary.
    assert ha.decide(c, local(replace(stuck, replay_paused=False)), ME, SETTINGS).actions == ()
    assert ha.decide(c, local(replace(stuck, server_version=130010)), ME, SETTINGS).actions == ()
    assert ha.decide(c, local(stuck, fresh=False), ME, SETTINGS).actions == ()
    assert ha.decide(c, local(stuck, busy="resumereplay"), ME, SETTINGS).actions == ()
    assert ha.RunResumeReplay() not in ha.decide(cluster(leader="n1"), local(replace(stuck, role="primary")), ME,
                                                 SETTINGS).actions
    # Re-pointed first (the follow reloads it); the next cycle resumes.
    moved = ha.decide(cluster(leader="n3"), local(stuck), ME, SETTINGS)
    assert moved.actions == (ha.RunFollow("n3"),)
    # No leader: it races with what it replayed (see above), and is resumed while it does not win.
    behind = replace(stuck, replayed_location=1_000)
    d = ha.decide(cluster(leader=None, optime=10_000_000), local(behind), ME, SETTINGS)
    assert d.actions == (ha.RunResumeReplay(),) and "maximum replication lag" in d.reason


# -- failsafe_mode -------------------------------------------------------------------------------


def test_a_leader_cut_off_from_etcd_keeps_leading_only_when_every_member_confirmed():
    failsafe = replace(SETTINGS, failsafe_mode=True)
    primary = pg(role="primary")
    assert ha.decide(None, ha.Local(primary, True, failsafe_confirmed=True), ME, failsafe).actions == ()
    assert ha.decide(None, ha.Local(primary, True, failsafe_confirmed=False), ME, failsafe).actions == \
        (ha.RunStop("immediate"),)
    assert ha.decide(None, ha.Local(primary, True, failsafe_confirmed=True), ME, SETTINGS).actions == \
        (ha.RunStop("immediate"),)  # failsafe_mode off: confirmations count for nothing


def test_the_leader_keeps_the_failsafe_key_and_a_pinged_replica_does_not_race():
    failsafe = replace(SETTINGS, failsafe_mode=True)
    c = cluster(leader="n1")
    d = ha.decide(c, local(pg(role="primary")), ME, failsafe)
    listed = tuple(sorted((n, m.api_url) for n, m in c.members.items()))
    assert ha.WriteFailsafe(listed) in d.actions
    written = replace(c, failsafe=dict(listed))
    assert not any(isinstance(a, ha.WriteFailsafe) for a in ha.decide(written, local(pg(role="primary")), ME,
                                                                       failsafe).actions)
    race = ha.decide(cluster(leader=None), ha.Local(pg(), True, failsafe_leader="n2"), ME, failsafe)
    assert race.actions == () and "failsafe" in race.reason


def test_a_new_replica_clones_from_a_clonefrom_replica_rather_than_the_leader():
    c = cluster(leader="n2")
    empty = local(pg(empty=True))
    assert ha.decide(c, empty, ME, SETTINGS).actions == (ha.RunCreateReplica("n2"),)
    donor = replace(member("n3"), data={**member("n3").data, "tags": {"clonefrom": True}})
    c = replace(c, members={**c.members, "n3": donor})
    assert ha.decide(c, empty, ME, SETTINGS).actions == (ha.RunCreateReplica("n3"),)


def test_without_a_leader_an_empty_node_restores_by_a_no_leader_method_unless_a_bootstrap_runs():
    restorer = replace(ME, clone_without_leader=True)
    empty = local(pg(state="stopped", empty=True))
    leaderless = cluster(leader=None)
    d = ha.decide(leaderless, empty, restorer, SETTINGS)
    assert d.actions == (ha.RunCreateReplica(None),) and d.reason == "trying to bootstrap (without leader)"
    assert ha.decide(leaderless, empty, ME, SETTINGS).actions == ()
    bootstrapping = cluster(leader=None, initialize="")
    assert ha.decide(bootstrapping, empty, restorer, SETTINGS).actions == ()
    # With a running leader it clones from the leader as ever.
    assert ha.decide(cluster(leader="n2"), empty, restorer, SETTINGS).actions == (ha.RunCreateReplica("n2"),)


def test_a_replica_waits_for_the_new_leaders_address_before_following_it():
    # etcd lost every lease: the new leader's lock is back, its member key not yet.
    c = cluster(leader="n2", members=("n1", "n3"))
    waiting = ha.decide(c, local(pg(upstream="n3")), ME, SETTINGS)
    assert waiting.actions == () and "waiting for n2's member key" in waiting.reason
    blank = replace(c, members={**c.members, "n2": ha_member("n2", conn_url=None)})
    assert ha.decide(blank, local(pg(upstream="n3")), ME, SETTINGS).actions == ()
    # Once it is there, the replica follows at once.
    assert ha.decide(cluster(leader="n2"), local(pg(upstream="n3")), ME, SETTINGS).actions == (ha.RunFollow("n2"),)


def ha_member(name, conn_url):
    data = {"role": "primary", "state": "running", "api_url": f"http://{name}/patroni"}
    if conn_url:
        data["conn_url"] = conn_url
    return Member(name, data)
