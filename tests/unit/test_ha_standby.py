"""Table tests of the standby cluster's policy (hasup.election.standby through policy.decide)."""

from dataclasses import replace

import pytest

from hasup.config.standby import REMOTE
from hasup.election import phases as ph
from hasup.election import policy as ha
from hasup.election import standby
from tests.unit.test_ha import ME, SETTINGS, STREAMING, cluster, local, peer, pg, with_failover

STANDBY = replace(SETTINGS, standby_cluster=True)
CONFIG = {"ttl": 10, "standby_cluster": {"host": "10.0.0.9", "port": 5432}}


def standby_cluster(leader=None, **kw):
    c = cluster(leader=leader, config=CONFIG, **kw)
    if leader:  # the standby leader publishes role standby_leader, not primary
        c = replace(c, members={n: replace(m, data={**m.data, "role": "standby_leader" if n == leader
                                                    else "replica"}) for n, m in c.members.items()})
    return c


CASES = [
    # (description, cluster, local, expected actions, reason fragment)
    ("the race winner takes the lock and re-points to the remote, no promotion", standby_cluster(),
     local(pg(upstream="n2")), (ha.AcquireLock(), ha.RunFollow(REMOTE)), "standby leader"),
    ("the standby leader streaming from the remote stays", standby_cluster("n1"), local(pg(upstream=REMOTE)),
     (ha.RefreshLock(), ha.WriteStatus()), "the standby leader with the lock"),
    ("a lock holder following a member re-points to the remote", standby_cluster("n1"),
     local(pg(upstream="n2")), (ha.RefreshLock(), ha.WriteStatus(), ha.RunFollow(REMOTE)), "remote primary"),
    ("a primary leading a standby cluster demotes and keeps the lock", standby_cluster("n1"),
     local(pg(role="primary")), (ha.RefreshLock(), ha.RunFollow(REMOTE)), "demoting self to a standby leader"),
    ("a stopped lock holder starts as the standby leader", standby_cluster("n1"), local(pg(state="stopped")),
     (ha.RefreshLock(), ha.RunStart(as_primary=False, leader=REMOTE)), "standby leader"),
    ("a crashed primary holding the lock starts as the standby leader", standby_cluster("n1"),
     local(pg(state="crashed", role="primary")), (ha.RefreshLock(), ha.RunStart(as_primary=False, leader=REMOTE)),
     "standby leader"),
    ("a stopped member of a leaderless standby cluster starts from the remote", standby_cluster(),
     local(pg(state="stopped")), (ha.RunFollow(REMOTE),), "standby cluster is unhealthy"),
    ("the other members cascade from the standby leader", standby_cluster("n2"), local(pg(upstream=REMOTE)),
     (ha.RunFollow("n2"),), "following new leader n2"),
    ("a member following the standby leader stays", standby_cluster("n2"), local(pg(upstream="n2")), (),
     "following a leader (n2)"),
    ("a fresh standby cluster bootstraps (the postgres side clones the remote)",
     standby_cluster(initialize=None, members=()), local(pg(state="stopped", empty=True, role="uninitialized")),
     (ha.ClaimInitialize(), ha.RunBootstrap()), "bootstrapping"),
    ("an empty member clones from the standby leader", standby_cluster("n2"), local(pg(state="stopped", empty=True)),
     (ha.RunCreateReplica("n2"),), "from leader 'n2'"),
    ("a lagging member does not take over", standby_cluster(), local(pg(wal=4500), peers={"n2": peer("n2", wal=5000)}),
     (), "n2 has a higher wal position"),
]


@pytest.mark.parametrize("what,c,loc,actions,reason", CASES, ids=[c[0] for c in CASES])
def test_standby_policy(what, c, loc, actions, reason):
    d = ha.decide(c, loc, ME, STANDBY)
    assert d.actions == actions, d.reason
    assert reason in d.reason
    assert not any(isinstance(a, ha.RunPromote) for a in d.actions)


def test_the_same_situations_in_a_primary_cluster_promote():
    """What makes the difference is the setting: without it the race winner and the lock holder promote."""
    assert ha.RunPromote() in ha.decide(cluster(), local(pg()), ME, SETTINGS).actions
    assert ha.RunPromote() in ha.decide(cluster("n1"), local(pg()), ME, SETTINGS).actions


def test_promote_cluster_promotes_the_standby_leader_with_the_ordinary_policy():
    # standby_cluster removed from the configuration: the lock holder, still a replica, promotes.
    d = ha.decide(cluster("n1"), local(pg(upstream=REMOTE)), ME, SETTINGS)
    assert d.actions == (ha.RefreshLock(), ha.RunPromote()) and d.phase == ph.Promoting()


def test_a_switchover_hands_the_key_over_without_stopping_anyone():
    c = with_failover(standby_cluster("n1"), leader="n1", member="n2")
    me = replace(pg(upstream=REMOTE), replication=STREAMING)
    d = ha.decide(c, local(me, peers={"n2": peer("n2"), "n3": peer("n3")}), ME, STANDBY)
    assert d.actions == (ha.WriteStatus(), ha.ReleaseLock()) and "handing the standby leader role" in d.reason
    assert d.phase is None
    # The candidate takes the free lock and re-points; the failover key is cleared only by it.
    candidate = ha.Node("n2")
    free = with_failover(standby_cluster(), leader="n1", member="n2")
    took = ha.decide(free, local(pg(upstream="n1"), peers={"n1": peer("n1"), "n3": peer("n3")}), candidate, STANDBY)
    assert took.actions == (ha.AcquireLock(), ha.ClearFailover(), ha.RunFollow(REMOTE))
    # Everyone else waits for the candidate.
    other = ha.decide(free, local(pg(upstream="n1"), peers={"n2": peer("n2")}), ha.Node("n3"), STANDBY)
    assert other.actions == () and "failover candidate" in other.reason


def test_a_switchover_waits_for_a_streaming_candidate():
    c = with_failover(standby_cluster("n1"), leader="n1", member="n2")
    d = ha.decide(c, local(pg(upstream=REMOTE), peers={"n2": peer("n2")}), ME, STANDBY)
    assert ha.ReleaseLock() not in d.actions and ha.RefreshLock() in d.actions and "waiting" in d.reason


def test_never_promote_drops_a_promotion_and_its_phase():
    d = ha.Decision((ha.AcquireLock(), ha.RunPromote()), "race", phase=ph.Promoting())
    kept = standby.never_promote(d)
    assert kept.actions == (ha.AcquireLock(),) and kept.phase is None and standby.NEVER_PROMOTED in kept.reason
    same = ha.Decision((ha.RefreshLock(),), "x")
    assert standby.never_promote(same) is same


def test_a_standby_cluster_never_promotes_whatever_it_sees():
    """Property over the table's situations and more: no decision in a standby cluster promotes."""
    situations = [standby_cluster(leader) for leader in (None, "n1", "n2")]
    states = [pg(), pg(role="primary"), pg(state="stopped"), pg(upstream=REMOTE), pg(state="crashed", role="primary"),
              pg(empty=True, state="stopped")]
    for c in situations:
        for p in states:
            for fo in (None, {"member": "n1"}, {"leader": "n2", "member": "n1"}):
                seen = replace(c, failover=fo) if fo else c
                d = ha.decide(seen, local(p, peers={"n2": peer("n2"), "n3": peer("n3")}), ME, STANDBY)
                assert not any(isinstance(a, ha.RunPromote | ha.RunDemote) for a in d.actions), (c, p, d)


def test_a_standby_cluster_runs_without_synchronous_mode():
    from hasup.config import DynamicConfig
    from hasup.election.inputs import settings_of
    from tests.unit.test_api_worker import make_config
    sync = DynamicConfig(synchronous_mode=True, synchronous_mode_strict=True)
    assert settings_of(sync, make_config(1)).synchronous_mode
    both = settings_of(replace(sync, standby_cluster={"host": "h"}), make_config(1))
    assert both.standby_cluster and not both.synchronous_mode and not both.synchronous_mode_strict
    # A leftover sync key naming others does not keep this member out of the race.
    c = replace(standby_cluster(), sync={"leader": "n2", "sync_standby": "n3"})
    assert ha.decide(c, local(pg()), ME, both).actions == (ha.AcquireLock(), ha.RunFollow(REMOTE))


def test_the_standby_leader_writes_back_a_wiped_config_key():
    wiped = replace(standby_cluster("n1"), config={})
    d = ha.decide(wiped, local(pg(upstream=REMOTE)), ME, STANDBY)
    assert ha.RepublishConfig() in d.actions and ha.RunPromote() not in d.actions
    assert ha.RepublishConfig() not in ha.decide(standby_cluster("n1"), local(pg(upstream=REMOTE)), ME,
                                                 STANDBY).actions
