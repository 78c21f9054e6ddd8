"""Quorum commit in the HA policy: the leader's steps, the race, the switchover (hasup.election.policy)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hasup.dcs.model import Cluster, Leader, Member
from hasup.election import policy as ha
from hasup.ipc import PgState

SYSID = "7300000000000000001"
QUORUM = ha.Settings(ttl=10, loop_wait=2, retry_timeout=4, maximum_lag_on_failover=1 << 20, synchronous_mode=True,
                     synchronous_node_count=2, quorum_commit=True)


def member(name: str, role: str = "replica", wal: int = 5000, **tags: Any) -> Member:
    return Member(name, {"conn_url": f"postgres://127.0.0.1:5{name[-1]}/postgres", "state": "running",
                         "api_url": f"http://127.0.0.1:8{name[-1]}/patroni", "role": role, "xlog_location": wal,
                         "timeline": 1, "tags": tags})


def cluster(leader: str | None, sync: dict[str, Any] | None, members: dict[str, Member] | None = None,
            failover: dict[str, Any] | None = None) -> Cluster:
    members = members or {n: member(n, "primary" if n == leader else "replica") for n in ("n1", "n2", "n3")}
    return Cluster(SYSID, {"synchronous_mode": "quorum"}, 1, Leader(leader, 10) if leader else None, members, [],
                   failover, sync, 5000)


def pg(role: str = "replica", wal: int = 5000, names: str = "", rows: tuple[str, ...] = ()) -> PgState:
    return PgState(state="running", role=role, data_dir_empty=False, probe_ok=True, probe_at=0.0, sysid=SYSID,
                   timeline=1, wal_position=wal, upstream=None if role == "primary" else "n1",
                   sync_standby_names=names,
                   replication=tuple({"application_name": n, "state": "streaming", "sync_state": "quorum"}
                                     for n in rows))


def local(p: PgState, **kw: Any) -> ha.Local:
    return replace(ha.Local(p, True), **kw)


def of(decision: ha.Decision, kind: type) -> list[Any]:
    return [a for a in decision.actions if isinstance(a, kind)]


def test_leader_builds_the_quorum_step_by_step() -> None:
    me = ha.Node("n1")
    # Nothing recorded: the key first names us.
    d = ha.decide(cluster("n1", None), local(pg("primary", rows=("n2", "n3")), primary_for=60), me, QUORUM)
    assert of(d, ha.WriteSync) == [ha.WriteSync((), 0)]
    # Then PostgreSQL waits for both standbys before the key lets either promote on its own.
    d = ha.decide(cluster("n1", {"leader": "n1", "sync_standby": None, "quorum": 0}),
                  local(pg("primary", rows=("n2", "n3")), primary_for=60), me, QUORUM)
    assert of(d, ha.SetSyncStandbys) == [ha.SetSyncStandbys('ANY 2 ("n2", "n3")')] and not of(d, ha.WriteSync)
    # Not settled yet (where the setting took effect is unknown): the key waits.
    running = pg("primary", names='ANY 2 ("n2", "n3")', rows=("n2", "n3"))
    d = ha.decide(cluster("n1", {"leader": "n1", "sync_standby": None, "quorum": 0}),
                  local(running, primary_for=60), me, QUORUM)
    assert d.actions == (ha.RefreshLock(), ha.WriteStatus())
    d = ha.decide(cluster("n1", {"leader": "n1", "sync_standby": None, "quorum": 0}),
                  local(running, primary_for=60, sync_since=5000), me, QUORUM)
    assert of(d, ha.WriteSync) == [ha.WriteSync(("n2", "n3"), 0)]


def test_new_leader_takes_the_key_over_at_once_and_waits_for_the_rest() -> None:
    me = ha.Node("n2")
    c = cluster("n2", {"leader": "n1", "sync_standby": "n2,n3", "quorum": 0})
    d = ha.decide(c, local(pg("primary", names='ANY 2 ("n1", "n3")'), primary_for=0.5), me, QUORUM)
    assert of(d, ha.WriteSync) == [ha.WriteSync(("n1", "n3"), 0)] and not of(d, ha.SetSyncStandbys)
    # Right after promoting, a member whose key still says running may be reconnecting: it stays.
    c = cluster("n2", {"leader": "n2", "sync_standby": "n1,n3", "quorum": 0})
    d = ha.decide(c, local(pg("primary", names='ANY 2 ("n1", "n3")', rows=("n3",)), primary_for=0.5), me, QUORUM)
    assert not of(d, ha.WriteSync) and not of(d, ha.SetSyncStandbys)
    # One whose member key is gone (the killed old leader's expired with its lock) leaves at once.
    gone = cluster("n2", {"leader": "n2", "sync_standby": "n1,n3", "quorum": 0},
                   {"n2": member("n2", "primary"), "n3": member("n3")})
    d = ha.decide(gone, local(pg("primary", names='ANY 2 ("n1", "n3")', rows=("n3",)), primary_for=0.5), me,
                  QUORUM)
    assert of(d, ha.WriteSync) == [ha.WriteSync(("n3",), 0)]
    assert of(d, ha.SetSyncStandbys) == [ha.SetSyncStandbys('ANY 1 ("n3")')]
    # Once the standbys had time to reconnect, the dead old leader leaves the key, then PostgreSQL.
    c = cluster("n2", {"leader": "n2", "sync_standby": "n1,n3", "quorum": 0})
    d = ha.decide(c, local(pg("primary", names='ANY 2 ("n1", "n3")', rows=("n3",)), primary_for=5), me, QUORUM)
    assert of(d, ha.WriteSync) == [ha.WriteSync(("n3",), 0)]
    assert of(d, ha.SetSyncStandbys) == [ha.SetSyncStandbys('ANY 1 ("n3")')]


def test_a_voter_prepares_its_setting_then_promotes() -> None:
    me = ha.Node("n2")
    c = cluster(None, {"leader": "n1", "sync_standby": "n2,n3", "quorum": 0})
    d = ha.decide(c, local(pg(), peers={"n1": None, "n3": ha.PeerStatus("n3", "replica", "running", 4000)}), me,
                  QUORUM)
    assert d.actions == (ha.SetSyncStandbys('ANY 2 ("n1", "n3")'),)
    d = ha.decide(c, local(pg(names='ANY 2 ("n1", "n3")'), peers={"n1": None, "n3": None}), me, QUORUM)
    assert of(d, ha.RunPromote) and of(d, ha.AcquireLock)


def test_the_race_needs_quorum_plus_one_members() -> None:
    settings = replace(QUORUM, synchronous_node_count=1)
    c = cluster(None, {"leader": "n1", "sync_standby": "n2,n3", "quorum": 1})
    ready = pg(names='ANY 1 ("n1", "n3")')
    d = ha.decide(c, local(ready, peers={"n1": None, "n3": None}), ha.Node("n2"), settings)
    assert not of(d, ha.RunPromote) and "quorum not reached" in d.reason
    d = ha.decide(c, local(ready, peers={"n1": None, "n3": ha.PeerStatus("n3", "replica", "running", 4000)}),
                  ha.Node("n2"), settings)
    assert of(d, ha.RunPromote)
    d = ha.decide(c, local(ready, peers={"n1": None, "n3": ha.PeerStatus("n3", "replica", "running", 6000)}),
                  ha.Node("n2"), settings)
    assert not of(d, ha.RunPromote) and "n3 has a higher wal position" in d.reason


def test_a_follower_keeps_its_promotion_setting_ready() -> None:
    c = cluster("n1", {"leader": "n1", "sync_standby": "n2,n3", "quorum": 0})
    d = ha.decide(c, local(pg()), ha.Node("n2"), QUORUM)
    assert d.actions == (ha.SetSyncStandbys('ANY 2 ("n1", "n3")'),)
    assert ha.decide(c, local(pg(names='ANY 2 ("n1", "n3")')), ha.Node("n2"), QUORUM).actions == ()
    assert ha.decide(c, local(pg()), ha.Node("n2", nofailover=True), QUORUM).actions == ()


def test_switchover_goes_to_a_voter() -> None:
    members = {"n1": member("n1", "primary"), "n2": member("n2"), "n3": member("n3")}
    c = cluster("n1", {"leader": "n1", "sync_standby": "n2", "quorum": 0}, members,
                failover={"leader": "n1", "member": "n3"})
    running = pg("primary", names='ANY 1 ("n2")', rows=("n2", "n3"))
    peers = {n: ha.PeerStatus(n, "replica", "running", 5000) for n in ("n2", "n3")}
    d = ha.decide(c, local(running, peers=peers, failover_age=60, primary_for=60, sync_since=0), ha.Node("n1"),
                  replace(QUORUM, synchronous_node_count=1))
    assert not of(d, ha.RunDemote) and "no healthy candidate n3" in d.reason
    c = replace(c, failover={"leader": "n1", "member": "n2"})
    d = ha.decide(c, local(running, peers=peers, failover_age=60, primary_for=60, sync_since=0), ha.Node("n1"),
                  replace(QUORUM, synchronous_node_count=1))
    assert of(d, ha.RunDemote) == [ha.RunDemote("n2")]
    c = replace(c, failover={"member": "n3"})  # a failover (no leader named) may go to a non-voter
    d = ha.decide(c, local(running, peers=peers, failover_age=60, primary_for=60, sync_since=0), ha.Node("n1"),
                  replace(QUORUM, synchronous_node_count=1))
    assert of(d, ha.RunDemote) == [ha.RunDemote("n3")]


def test_sync_priority_nosync_and_lag_choose_the_synchronous_standbys() -> None:
    from hasup.election import sync
    members = {"n1": member("n1", "primary"), "n2": member("n2", wal=4000, sync_priority=5),
               "n3": member("n3", wal=5000), "n4": member("n4", sync_priority=0), "n5": member("n5", wal=100)}
    c = cluster("n1", None, members)
    rows = [{"application_name": n, "state": "streaming"} for n in ("n2", "n3", "n4", "n5")]
    assert sync.candidates(rows, c, "n1") == ["n2", "n3", "n5"]
    assert sync.candidates(rows, c, "n1", 5000, max_lag=1000) == ["n2", "n3"]
    assert sync.nosync(member("x", nosync=False, sync_priority=0)) is False  # the nosync tag wins
    assert sync.sync_priority(member("x", nosync=True, sync_priority=3)) == 0


def test_a_nostream_member_never_streams() -> None:
    c = cluster("n1", None)
    plain = replace(QUORUM, synchronous_mode=False, quorum_commit=False)
    me = ha.Node("n2", nostream=True)
    d = ha.decide(c, local(pg()), me, plain)  # pg() streams from n1
    assert d.actions == (ha.RunFollow(None),) and "nostream" in d.reason
    assert ha.decide(c, local(replace(pg(), upstream=None)), me, plain).actions == ()
    stopped = replace(pg(), state="stopped", probe_ok=False, upstream=None)
    assert ha.decide(c, local(stopped), me, plain).actions == (ha.RunFollow(None),)
