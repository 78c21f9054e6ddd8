"""Planned operations on a live cluster: switchover (under a write load), restart, reinitialize."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

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


def call(node, method: str, path: str, body: object = None, timeout: float = 120) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{node.api_port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_running(*nodes) -> None:
    """Until each node reports PostgreSQL running with no restart or reinitialize still finishing."""
    for node in nodes:
        wait_for(lambda n=node: n.status().get("state") == "running", 60, f"{node.name} running")


def test_restart_keeps_the_leader_and_the_replicas_streaming(tc):
    leader = tc.wait_leader(30)
    replica = next(n for n in tc.nodes if n is not leader)
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 60)
    wait_running(*tc.nodes)
    history_before = len(leader.api("/history")[1])
    before = {n.name: n.postmaster_pid() for n in tc.nodes}

    assert call(replica, "POST", "/restart", {"role": "primary"}) == (503, "restart conditions are not satisfied")
    assert call(replica, "POST", "/restart", {"postgres_version": "15.0"}) == \
        (503, "restart conditions are not satisfied")  # it runs 15.x already: nothing to upgrade
    assert call(leader, "POST", "/restart", {"role": "primary"}) == (200, "restarted successfully")
    assert leader.postmaster_pid() != before[leader.name]
    assert tc.leader_name() == leader.name  # the lock was held throughout: no failover
    assert call(replica, "POST", "/restart", {"role": "replica", "timeout": 60}) == (200, "restarted successfully")
    assert replica.postmaster_pid() != before[replica.name]
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 60)
    assert tc.leader_name() == leader.name
    assert len(leader.api("/history")[1]) == history_before
    assert "restarting PostgreSQL on request" in leader.log_text()


def test_scheduled_restart_is_published_runs_and_can_be_deleted(tc):
    leader = tc.wait_leader(30)
    replica = next(n for n in tc.nodes if n is not leader)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert call(replica, "POST", "/restart", {"schedule": later}) == (202, "Restart scheduled")
    assert call(replica, "POST", "/restart", {"schedule": later}) == (409, "Another restart is already scheduled")
    shown = wait_for(lambda: replica.status().get("scheduled_restart"), 20, "scheduled_restart in /patroni")
    assert datetime.fromisoformat(shown["schedule"]) == datetime.fromisoformat(later)
    wait_for(lambda: tc.member(replica.name).get("scheduled_restart"), 20, "scheduled_restart in the member key")
    assert call(replica, "DELETE", "/restart") == (200, "scheduled restart deleted")
    assert call(replica, "DELETE", "/restart") == (404, "no restarts are scheduled")
    wait_for(lambda: "scheduled_restart" not in tc.member(replica.name), 20, "the member key to forget it")

    wait_running(replica)
    pid = replica.postmaster_pid()
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    assert call(replica, "POST", "/restart", {"schedule": soon}) == (202, "Restart scheduled")
    wait_for(lambda: replica.postmaster_pid() not in (None, pid), 30, "the scheduled restart to run")
    tc.wait_streaming(leader, [replica], 60)
    wait_running(replica)
    wait_for(lambda: "scheduled_restart" not in replica.status(), 20, "/patroni to forget the restart")


def test_reinitialize_replaces_a_replicas_data_directory(tc):
    leader = tc.wait_leader(30)
    replica = next(n for n in tc.nodes if n is not leader)
    tc.wait_streaming(leader, [replica], 60)
    wait_running(replica)
    assert call(leader, "POST", "/reinitialize", {}) == (503, "I am the leader, can not reinitialize")
    marker = os.path.join(replica.data_dir, "marker-from-the-test")
    with open(marker, "w") as f:
        f.write("this file must not survive a reinitialize")
    sysid = replica.status()["database_system_identifier"]
    assert call(replica, "POST", "/reinitialize", {"force": False}) == (200, "reinitialize started")
    wait_for(lambda: not os.path.exists(marker), 60, "the data directory to be replaced")
    tc.wait_streaming(leader, [replica], 120)
    wait_running(replica)
    assert replica.status()["database_system_identifier"] == sysid
    assert tc.leader_name() == leader.name


def timed_get(port: int, path: str) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        code = conn.getresponse().status
    finally:
        conn.close()
    return code, time.perf_counter() - started


def test_health_checks_stay_fast_during_a_switchover_and_a_restart(tc):
    """Admin calls that take seconds never hold up /primary on the node serving them."""
    leader = tc.wait_leader(30)
    node, candidate = [n for n in tc.nodes if n is not leader]
    tc.wait_streaming(leader, [node, candidate], 60)
    wait_running(*tc.nodes)
    answers: dict[str, tuple[int, str]] = {}

    def ask(name: str, method: str, path: str, body: object) -> None:
        answers[name] = call(node, method, path, body)

    calls = [threading.Thread(target=ask, args=("restart", "POST", "/restart", {})),
             threading.Thread(target=ask, args=("switchover", "POST", "/switchover",
                                                {"leader": leader.name, "candidate": candidate.name}))]
    latencies: list[float] = []
    for t in calls:
        t.start()
    while any(t.is_alive() for t in calls):
        code, took = timed_get(node.api_port, "/primary")
        assert code == 503  # a replica, answering at once
        latencies.append(took)
        time.sleep(0.01)
    for t in calls:
        t.join()
    assert answers["restart"] == (200, "restarted successfully")
    assert answers["switchover"] == (200, f'Successfully switched over to "{candidate.name}"')
    assert len(latencies) > 10, latencies  # the window was long enough to mean something
    assert max(latencies) < 0.05, sorted(latencies)[-5:]
    tc.wait_streaming(candidate, [node, leader], 60)
