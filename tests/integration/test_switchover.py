"""Planned switchover through the failover key, under a write load (asynchronous replication)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from tests.harness import TestCluster, wait_for
from tests.harness.prober import longest_gap, lost_writes, start_prober


@pytest.fixture(scope="module")
def tc():
    c = TestCluster(3)
    c.etcd.start()
    try:
        leader = c.start_all()
        leader.sql("CREATE TABLE bench_writes (v bigint PRIMARY KEY)")
        yield c
    finally:
        c.destroy()


def failover_key(tc: TestCluster) -> dict:
    value = tc.etcd.value(tc.key("failover"))
    return json.loads(value) if value else {}


def test_switchover_to_a_named_replica_loses_no_acknowledged_write(tc):
    leader = tc.wait_leader(30)
    candidate = next(n for n in tc.nodes if n is not leader)
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 60)
    history_before = len(leader.api("/history")[1])
    prober, thread = start_prober(tc.nodes, 1)
    try:
        wait_for(lambda: len(prober.acked) > 50, 30, "the prober to write")
        asked_at = time.monotonic()
        tc.etcd.put(tc.key("failover"), json.dumps({"leader": leader.name, "member": candidate.name}))
        new = tc.wait_leader(30, exclude=leader.name)
        took = time.monotonic() - asked_at
        assert new.name == candidate.name
        wait_for(lambda: any(n == new.name and t > asked_at for _, t, n in prober.acked), 30,
                 "writes on the new leader")
    finally:
        prober.stop.set()
        thread.join(10)
    gap = longest_gap(prober.acked, asked_at, time.monotonic())
    assert lost_writes(prober, new) == []
    assert took < 10 and gap < 5, (took, gap)
    tc.wait_streaming(new, [n for n in tc.nodes if n is not new], 60)  # the old leader follows the new one
    history = wait_for(lambda: len(h := new.api("/history")[1]) > history_before and h, 30, "a /history entry")
    assert history[-1][-1] == new.name
    assert failover_key(tc) == {}


def test_switchover_to_an_unknown_member_is_refused_and_cleared(tc):
    leader = tc.wait_leader(30)
    tc.etcd.put(tc.key("failover"), json.dumps({"leader": leader.name, "member": "nobody"}))
    wait_for(lambda: failover_key(tc) == {}, 30, "the failover key to be cleared")
    assert tc.leader_name() == leader.name
    assert "no healthy candidate nobody found" in leader.log_text()


def test_rest_switchover_answers_with_the_outcome_and_loses_nothing(tc):
    leader = tc.wait_leader(30)
    candidate = next(n for n in tc.nodes if n is not leader)
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 60)
    prober, thread = start_prober(tc.nodes, 10_000_000)
    try:
        wait_for(lambda: len(prober.acked) > 50, 30, "the prober to write")
        body = json.dumps({"leader": leader.name, "candidate": candidate.name}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{leader.api_port}/switchover", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        asked_at = time.monotonic()
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=60) as resp:
            answer = (resp.status, resp.read().decode())
        took = time.monotonic() - asked_at
        assert answer == (200, f'Successfully switched over to "{candidate.name}"')
        assert tc.wait_leader(10).name == candidate.name
        wait_for(lambda: any(n == candidate.name and t > asked_at for _, t, n in prober.acked), 30,
                 "writes on the new leader")
    finally:
        prober.stop.set()
        thread.join(10)
    assert lost_writes(prober, candidate) == []
    assert took < 5, took
    tc.wait_streaming(candidate, [n for n in tc.nodes if n is not candidate], 60)
