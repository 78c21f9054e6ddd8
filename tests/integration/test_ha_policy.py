"""HA policy on a live cluster: tags, primary_start_timeout, maintenance mode, lag on failover.

node3 carries tags noloadbalance, replicatefrom: node2 and failover_priority 2; node1 bootstraps.
Tests share the cluster and find the current leader themselves; each leaves every node streaming.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest

from hasup.postgresql.probe import LEADER_TIMELINES_SQL
from tests.harness import Node, TestCluster, kill_pids, wait_for

DCS = {"ttl": 10, "loop_wait": 2, "retry_timeout": 3, "maximum_lag_on_failover": 1048576,
       "postgresql": {"use_pg_rewind": True, "use_slots": False}}
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def patch_config(node: Node, body: dict) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{node.api_port}/config", data=json.dumps(body).encode(),
                                 method="PATCH", headers={"Content-Type": "application/json"})
    with _opener.open(req, timeout=10) as resp:
        assert resp.status == 200


def patch_config_and_wait(leader: Node, body: dict) -> None:
    """PATCH /config, then wait until the leader has read etcd since (it applies what it reads)."""
    patched_at = time.time()
    patch_config(leader, body)
    wait_for(lambda: leader.status().get("dcs_last_seen", 0) > patched_at + 1, 10, "the leader to read the change")


def current_timeline(primary: Node) -> int:
    return int(primary.sql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")[0][0], 16)


def streaming_from(node: Node) -> set[str]:
    return {r[0] for r in node.sql("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")}


def heal(tc: TestCluster) -> Node:
    """Every node up and streaming (node3 from node2 while node2 is a replica); returns the leader."""
    for node in tc.nodes:
        if node.pid is None or not node.processes():
            node.start()
    leader = tc.wait_leader(120)

    def healed() -> bool:
        others = {n.name for n in tc.nodes if n is not leader}
        if leader.name in ("node2", "node3"):  # no cascade: node3 leads, or its upstream does
            return others <= streaming_from(leader)
        return "node2" in streaming_from(leader) and "node3" in streaming_from(tc.node("node2"))
    wait_for(healed, 120, "every node streaming")
    return leader


@pytest.fixture(scope="module")
def tc():
    c = TestCluster(3, dcs=DCS)
    node1, node2, node3 = c.nodes
    node3.extra.update({"tags.noloadbalance": True, "tags.replicatefrom": "node2", "tags.failover_priority": 2})
    c.etcd.start()
    try:
        node1.start()
        assert c.wait_leader(120) is node1
        node2.start()
        node3.start()
        heal(c)
        node1.sql("CREATE TABLE filler (v text)")
        yield c
    finally:
        c.destroy()


def test_noloadbalance_and_replicatefrom(tc):
    leader = heal(tc)
    node2, node3 = tc.node("node2"), tc.node("node3")
    assert leader.name == "node1"
    assert node3.api("/replica")[0] == 503  # noloadbalance: never in the read pool
    assert node2.api("/replica")[0] == 200
    assert "node3" in streaming_from(node2) and "node3" not in streaming_from(leader)  # cascading


def test_failover_priority_decides_between_equal_replicas(tc):
    leader = heal(tc)
    assert leader.name == "node1"
    node2, node3 = tc.node("node2"), tc.node("node3")

    def replayed(node: Node) -> int:
        return int(node.sql("SELECT pg_last_wal_replay_lsn() - '0/0'")[0][0])
    wait_for(lambda: replayed(node2) == replayed(node3) == int(leader.sql("SELECT pg_current_wal_lsn() - '0/0'")[0][0]),
             30, "both replicas caught up")
    leader.kill_tree()
    new = tc.wait_leader(60, exclude="node1")
    assert new is node3, "equal WAL positions: the higher failover_priority must win"
    heal(tc)


def test_a_nofailover_replica_never_takes_over(tc):
    leader = heal(tc)
    barred, other = [n for n in tc.nodes if n is not leader]
    barred.extra["tags.nofailover"] = True
    barred.prepare()
    barred.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: tc.member(barred.name).get("tags", {}).get("nofailover") is True, 20, "the tag published")
    leader.kill_tree()
    assert tc.wait_leader(60, exclude=leader.name) is other
    barred.extra["tags.nofailover"] = False
    barred.prepare()
    barred.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: not tc.member(barred.name).get("tags", {}).get("nofailover"), 20, "the tag withdrawn")
    heal(tc)


def test_primary_start_timeout_zero_fails_over_and_larger_restarts_in_place(tc):
    leader = heal(tc)
    patch_config_and_wait(leader, {"primary_start_timeout": 0})
    crashed_at = time.monotonic()
    os.kill(leader.postmaster_pid(), signal.SIGKILL)
    new = tc.wait_leader(30, exclude=leader.name)
    assert time.monotonic() - crashed_at < 15
    assert new is not leader
    leader = heal(tc)

    patch_config_and_wait(leader, {"primary_start_timeout": 300})
    timeline = current_timeline(leader)
    old_pid = leader.postmaster_pid()
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:  # restarted in place: the lock never leaves it
        assert tc.leader_name() == leader.name
        pid = leader.postmaster_pid()
        if pid not in (None, old_pid):
            try:
                if leader.sql("SELECT NOT pg_is_in_recovery()") == [(True,)]:
                    break
            except Exception:
                pass
        assert time.monotonic() < deadline, "the primary was not restarted in place"
        time.sleep(0.2)
    assert current_timeline(leader) == timeline  # no promotion anywhere
    heal(tc)


def test_pause_leaves_postgresql_alone_and_resume_heals(tc):
    leader = heal(tc)
    replica = next(n for n in tc.nodes if n is not leader)
    patch_config(leader, {"pause": True})
    wait_for(lambda: all(n.status().get("pause") for n in tc.nodes), 20, "every node paused")
    os.kill(leader.postmaster_pid(), signal.SIGINT)  # an operator stops the leader's PostgreSQL
    wait_for(lambda: leader.postmaster_pid() is None, 30, "PostgreSQL stopped")
    # The key naming a leader without PostgreSQL goes (as in Patroni: tests/integration/test_hooks_and_pause.py
    # times it), and nobody takes it while paused.
    wait_for(lambda: tc.leader_name() is None, 20, "the leader key removed")
    watched_until = time.monotonic() + 3 * DCS["loop_wait"]
    while time.monotonic() < watched_until:
        assert tc.leader_name() is None  # no failover while paused
        assert leader.postmaster_pid() is None  # and hasup does not start it either
        time.sleep(0.2)
    assert "PAUSE: " in leader.log_text()
    # hasup stopped on a paused node: its PostgreSQL keeps running.
    replica_pm = replica.postmaster_pid()
    replica.proc.send_signal(signal.SIGTERM)
    replica.proc.wait(60)
    assert replica.postmaster_pid() == replica_pm
    replica.start()
    patch_config(leader, {"pause": None})
    wait_for(lambda: not any(n.status().get("pause") for n in tc.nodes), 20, "every node resumed")
    healed = heal(tc)
    assert healed.sql("SELECT NOT pg_is_in_recovery()") == [(True,)]


def lag_leader(tc: TestCluster, leader: Node, lagging: list[Node]) -> list[int]:
    """Write ~2.6 MB on the leader while `lagging` replicas receive nothing, and publish the optime.

    Their walsenders (on whichever node they stream from) are stopped: a replay paused by hand would be
    resumed within a loop_wait (hasup.election.policy, as in Patroni).  Returns the walsenders' pids
    for SIGCONT."""
    names = [n.name for n in lagging]
    walsenders = [int(pid) for node in tc.nodes if node not in lagging for (pid,) in node.sql(
        "SELECT pid FROM pg_stat_replication WHERE application_name = ANY(%s)", names)]
    assert len(walsenders) == len(lagging), walsenders
    kill_pids(walsenders, signal.SIGSTOP)
    leader.sql("INSERT INTO filler SELECT repeat('x', 100) FROM generate_series(1, 20000)")
    lsn = int(leader.sql("SELECT pg_current_wal_lsn() - '0/0'")[0][0])
    wait_for(lambda: json.loads(tc.etcd.value(tc.key("status")) or "{}").get("optime", 0) >= lsn, 20,
             "the leader to publish its optime")
    return walsenders


def test_a_lagging_replica_is_passed_over(tc):
    leader = heal(tc)
    replicas = [n for n in tc.nodes if n is not leader]
    laggard = next(n for n in replicas if not streaming_from(n))  # not the upstream of a cascade
    fresh = next(n for n in replicas if n is not laggard)
    stopped = lag_leader(tc, leader, [laggard])
    lsn = int(leader.sql("SELECT pg_current_wal_lsn() - '0/0'")[0][0])
    wait_for(lambda: int(fresh.sql("SELECT pg_last_wal_replay_lsn() - '0/0'")[0][0]) >= lsn, 30, "the other replica")
    leader.kill_tree()
    assert tc.wait_leader(60, exclude=leader.name) is fresh
    kill_pids(stopped, signal.SIGCONT)  # a walsender of a surviving replica (cascading) streams on
    heal(tc)


def test_with_every_replica_too_far_behind_nobody_is_promoted(tc):
    leader = heal(tc)
    replicas = [n for n in tc.nodes if n is not leader]
    stopped = lag_leader(tc, leader, replicas)
    leader.kill_tree()
    wait_for(lambda: tc.leader_name() is None, 30, "the dead leader's key to expire")
    for node in replicas:
        wait_for(lambda n=node: "maximum replication lag" in (n.status().get("last_decision") or ""), 20,
                 f"{node.name} to say why it does not take over")
    waited_until = time.monotonic() + 3 * DCS["loop_wait"]
    while time.monotonic() < waited_until:
        assert tc.leader_name() is None
        time.sleep(0.2)
    kill_pids(stopped, signal.SIGCONT)
    heal(tc)


def test_a_diverged_old_leader_rejoins_through_pg_rewind(tc):
    leader = heal(tc)
    walsenders = [int(r[0]) for r in leader.sql("SELECT pid FROM pg_stat_replication")]
    assert walsenders
    kill_pids(walsenders, signal.SIGSTOP)  # the replicas stop receiving: what follows exists only here
    leader.sql("INSERT INTO filler SELECT 'only on the old leader' FROM generate_series(1, 1000)")
    leader.sql("CHECKPOINT")
    leader.kill_tree()
    new = tc.wait_leader(60, exclude=leader.name)
    assert new.sql("SELECT count(*) FROM filler WHERE v = 'only on the old leader'") == [(0,)]
    # What a node asks the leader before it starts as a replica (hasup.postgresql.lifecycle.maybe_rewind).
    new.sql("CHECKPOINT")
    [(running, checkpointed)] = new.sql(LEADER_TIMELINES_SQL)
    assert running == checkpointed == current_timeline(new) > 1
    bystander = next(n for n in tc.nodes if n not in (leader, new))
    assert bystander.sql(LEADER_TIMELINES_SQL)[0][0] is None  # in recovery
    logged_before = len(leader.log_text())  # the log holds this node's earlier lives in this module too
    leader.start()
    wait_for(lambda: leader.name in streaming_from(new) or leader.name in streaming_from(tc.node("node2")),
             120, "the old leader streaming again")
    rejoin = leader.log_text()[logged_before:]
    assert "pg_rewind from " + new.name in rejoin
    assert "could not ask" not in rejoin  # it asked the new leader its timelines before the rewind
    assert leader.sql("SELECT count(*) FROM filler WHERE v = 'only on the old leader'") == [(0,)]
    heal(tc)
