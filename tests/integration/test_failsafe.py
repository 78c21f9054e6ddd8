"""etcd unreachable: without failsafe the leader demotes; with it, it keeps
leading while every member confirms, and demotes when one cannot."""

from __future__ import annotations

import contextlib
import json
import signal
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.harness import Node, TestCluster, descendants, kill_pids, wait_for

DCS = {"ttl": 10, "loop_wait": 2, "retry_timeout": 3, "maximum_lag_on_failover": 1048576, "failsafe_mode": True,
       "postgresql": {"use_pg_rewind": True, "use_slots": False}}
OUTAGE = DCS["ttl"] + DCS["loop_wait"] + DCS["retry_timeout"]  # longer than the key could live


@pytest.fixture(scope="module")
def tc():
    c = TestCluster(3, dcs=DCS)
    c.etcd.start()
    try:
        leader = c.start_all()
        leader.sql("CREATE TABLE marks (t text)")
        yield c
    finally:
        c.destroy()


@contextlib.contextmanager
def etcd_frozen(tc: TestCluster) -> Iterator[None]:
    assert tc.etcd.proc is not None
    kill_pids([tc.etcd.proc.pid], signal.SIGSTOP)
    try:
        yield
    finally:
        kill_pids([tc.etcd.proc.pid], signal.SIGCONT)


def writable(node: Node) -> bool:
    try:
        node.sql("INSERT INTO marks VALUES ('still writable')")
        return True
    except Exception:
        return False


def healed(tc: TestCluster) -> Node:
    for node in tc.nodes:
        if not node.processes():
            node.start()
    leader = tc.wait_leader(90)
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 120)
    wait_for(lambda: set(json.loads(tc.etcd.value(tc.key("failsafe")) or "{}")) == {n.name for n in tc.nodes},
             30, "the failsafe key listing every member")
    return leader


def set_failsafe(leader: Node, on: bool) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{leader.api_port}/config", method="PATCH",
                                 data=json.dumps({"failsafe_mode": on}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10) as resp:
        assert resp.status == 200
    patched_at = time.time()
    wait_for(lambda: leader.status().get("dcs_last_seen", 0) > patched_at + 1, 10, "the leader to read the change")


def test_with_every_member_confirming_the_leader_keeps_accepting_writes(tc):
    leader = healed(tc)
    active: set[str] = set()  # members whose /patroni said failsafe_mode_is_active during the outage
    with etcd_frozen(tc):
        frozen_at = time.monotonic()
        while time.monotonic() - frozen_at < OUTAGE:
            assert writable(leader), "the leader stopped accepting writes although every member confirmed"
            active |= {n.name for n in tc.nodes if n.status().get("failsafe_mode_is_active") is True}
            time.sleep(0.5)
        assert "failsafe mode is enabled and all members are accessible" in leader.log_text()
    assert active == {n.name for n in tc.nodes}
    wait_for(lambda: tc.leader_name() == leader.name, 30, "the same leader once etcd is back")
    assert healed(tc) is leader


def test_a_replica_answers_the_failsafe_ping_with_its_wal_position(tc):
    leader = healed(tc)
    replica = next(n for n in tc.nodes if n is not leader)
    req = urllib.request.Request(f"http://127.0.0.1:{replica.api_port}/failsafe", method="POST",
                                 data=json.dumps({"name": leader.name}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b"Accepted"
        lsn = int(resp.headers["lsn"])
    xlog = replica.status()["xlog"]
    assert 0 < lsn <= max(xlog["received_location"], xlog["replayed_location"])


def test_with_a_member_unable_to_confirm_the_leader_demotes(tc):
    leader = healed(tc)
    replica = next(n for n in tc.nodes if n is not leader)
    api = replica.worker_pid("api")
    assert api
    silent = [api, *descendants(api)]
    kill_pids(silent, signal.SIGSTOP)  # it cannot answer the failsafe ping
    try:
        with etcd_frozen(tc):
            wait_for(lambda: not writable(leader), DCS["loop_wait"] + 2 * DCS["retry_timeout"] + 10,
                     "the leader to demote")
    finally:
        kill_pids(silent, signal.SIGCONT)
    healed(tc)


def test_without_failsafe_the_leader_demotes(tc):
    leader = healed(tc)
    set_failsafe(leader, False)
    with etcd_frozen(tc):
        started = time.monotonic()
        wait_for(lambda: not writable(leader), DCS["loop_wait"] + DCS["retry_timeout"] + 10, "the leader to demote")
        assert time.monotonic() - started < DCS["ttl"], "the leader outlived the key it could no longer renew"
    leader = tc.wait_leader(90)
    set_failsafe(leader, True)
    healed(tc)
