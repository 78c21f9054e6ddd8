"""Quorum commit (`synchronous_mode: quorum`): no acknowledged write lost when the leader is killed, only
a member the quorum rule allows is promoted, and the health checks answer as Patroni's do
(hasup/election/quorum.py)."""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from typing import Any

import pytest

from hasup.election import quorum
from tests.harness import Node, TestCluster, wait_for
from tests.harness.prober import Prober, longest_gap, lost_writes, start_prober

# Three nodes, two synchronous confirmations: every commit is on both standbys (quorum 0), so either
# may take over alone -- the smallest cluster where the quorum key and ANY 2 (...) both matter.
DCS = {"ttl": 10, "loop_wait": 2, "retry_timeout": 3, "maximum_lag_on_failover": 1048576,
       "synchronous_mode": "quorum", "synchronous_node_count": 2,
       "postgresql": {"use_pg_rewind": True, "use_slots": False}}
GAPS: list[float] = []


@pytest.fixture(scope="module")
def tc():
    c = TestCluster(3, dcs=DCS)
    c.etcd.start()
    try:
        leader = c.start_all()
        leader.sql("CREATE TABLE bench_writes (v bigint PRIMARY KEY)")
        yield c
    finally:
        c.destroy()


def sync_key(tc: TestCluster) -> dict[str, Any]:
    return dict(json.loads(tc.etcd.value(tc.key("sync")) or "{}"))


def settled(tc: TestCluster) -> tuple[Node, quorum.Key]:
    """Every node streaming, the key naming both standbys with quorum 0, PostgreSQL waiting for both."""
    leader = tc.wait_leader(120)
    others = sorted(n.name for n in tc.nodes if n is not leader)
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 120)

    def full() -> bool:
        value = sync_key(tc)
        return value.get("leader") == leader.name and value.get("sync_standby") == ",".join(others) \
            and value.get("quorum") == 0
    wait_for(full, 60, f"the sync key naming {others} with quorum 0")
    setting = quorum.render(quorum.Commit(2, frozenset(others)), strict=False)
    wait_for(lambda: leader.sql("SHOW synchronous_standby_names") == [(setting,)], 30, setting)
    value = sync_key(tc)
    return leader, quorum.Key(value["leader"], frozenset(value["sync_standby"].split(",")), value["quorum"])


def kill_the_leader_once(tc: TestCluster, prober: Prober) -> float:
    """SIGKILL the leader's tree; a member the quorum rule allows must take over. Returns the write gap."""
    leader, key = settled(tc)
    wait_for(lambda: len(prober.acked) > 20 and prober.acked[-1][2] == leader.name, 30, "writes")
    before = sync_key(tc)  # read just before the kill
    killed_at = time.monotonic()
    leader.kill_tree()
    new = tc.wait_leader(60, exclude=leader.name)
    # Quorum 0 of the two standbys: each holds every acknowledged commit and may promote seeing only
    # itself; a member outside the key would need quorum + 1 of the members, which here is impossible
    # without the old leader.
    assert before["leader"] == leader.name and key.quorum == 0
    assert new.name in key.voters, f"{new.name} is not a voter of {before}"
    wait_for(lambda: any(t > killed_at and n == new.name for _, t, n in prober.acked), 60, "writes on the new leader")
    gap = longest_gap(prober.acked, killed_at - 1, time.monotonic())
    leader.start()
    return gap


def test_sigkill_of_the_leader_loses_nothing_and_promotes_a_member_the_quorum_allows(tc):
    settled(tc)
    prober, thread = start_prober(tc.nodes, 1)
    try:
        for _ in range(5):
            GAPS.append(kill_the_leader_once(tc, prober))
    finally:
        prober.stop.set()
        thread.join(10)
    final, _ = settled(tc)
    assert lost_writes(prober, final) == []
    print(f"\nquorum commit (3 nodes, synchronous_node_count 2), 5 leader kills: write gap median "
          f"{statistics.median(GAPS):.2f}s max {max(GAPS):.2f}s, {len(prober.acked)} acknowledged, 0 lost")


def codes(node: Node) -> tuple[int, int]:
    return node.api("/quorum")[0], node.api("/read-only-quorum")[0]


def test_health_checks_and_roles_answer_as_patroni(tc):
    leader, key = settled(tc)
    voter, other = sorted((n for n in tc.nodes if n is not leader), key=lambda n: n.name)
    # Patroni: /quorum 200 only on a running quorum standby; /read-only-quorum also on the primary.
    # (A replica answers from the sync key as of its last etcd read: up to a cycle behind the leader.)
    assert codes(leader) == (503, 200)
    wait_for(lambda: codes(voter) == (200, 200) and codes(other) == (200, 200), 30, "quorum standbys answering")
    assert voter.status().get("quorum_standby") is True and "sync_standby" not in voter.status()
    assert "quorum_standby" not in leader.status()
    roles = {m["name"]: m["role"] for m in leader.api("/cluster")[1]["members"]}
    assert roles == {leader.name: "leader", voter.name: "quorum_standby", other.name: "quorum_standby"}
    # A standby tagged nosync never votes: it leaves the key, and answers like any replica.
    other.stop()
    other.extra["tags.nosync"] = True
    try:
        other.start()
        wait_for(lambda: sync_key(tc).get("sync_standby") == voter.name and sync_key(tc).get("quorum") == 0,
                 60, f"the key naming only {voter.name}")
        wait_for(lambda: other.status().get("state") == "running", 60, f"{other.name} running")
        wait_for(lambda: codes(other) == (503, 503), 30, f"{other.name}: /quorum and /read-only-quorum 503")
        assert other.api("/replica")[0] == 200 and other.api("/async")[0] == 200
        wait_for(lambda: codes(voter) == (200, 200), 30, f"{voter.name} still a quorum standby")
        assert codes(leader) == (503, 200)
        setting = quorum.render(quorum.Commit(1, frozenset({voter.name})), strict=False)
        assert leader.sql("SHOW synchronous_standby_names") == [(setting,)]
        roles = {m["name"]: m["role"] for m in leader.api("/cluster")[1]["members"]}
        assert roles[other.name] == "replica" and roles[voter.name] == "quorum_standby"
    finally:
        other.stop()
        del other.extra["tags.nosync"]
        other.start()
    settled(tc)


def test_switchover_goes_to_the_voter_named_and_loses_nothing(tc):
    leader, key = settled(tc)
    candidate = sorted(key.voters)[0]
    prober, thread = start_prober(tc.nodes, 10_000_000)
    try:
        wait_for(lambda: len(prober.acked) > 50, 30, "the prober to write")
        body = json.dumps({"leader": leader.name, "candidate": candidate}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{leader.api_port}/switchover", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        asked_at = time.monotonic()
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=60) as resp:
            answer = (resp.status, resp.read().decode())
        assert answer == (200, f'Successfully switched over to "{candidate}"')
        new = tc.wait_leader(10)
        assert new.name == candidate
        wait_for(lambda: any(n == candidate and t > asked_at for _, t, n in prober.acked), 30,
                 "writes on the new leader")
    finally:
        prober.stop.set()
        thread.join(10)
    assert lost_writes(prober, new) == []
    settled(tc)
