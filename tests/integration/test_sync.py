"""Synchronous replication: no acknowledged write lost, strict mode blocks (docs/operations.md, "Synchronous
replication")."""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request

import psycopg2
import pytest

from tests.harness import SUPERUSER_PASSWORD, Node, TestCluster, wait_for
from tests.harness.prober import Prober, longest_gap, lost_writes, start_prober

DCS = {"ttl": 10, "loop_wait": 2, "retry_timeout": 3, "maximum_lag_on_failover": 1048576,
       "synchronous_mode": True, "postgresql": {"use_pg_rewind": True, "use_slots": False}}
GAPS: list[float] = []  # per failover, printed for the closing note


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


def sync_standby(tc: TestCluster, leader: Node) -> str | None:
    value = json.loads(tc.etcd.value(tc.key("sync")) or "{}")
    return value.get("sync_standby") if value.get("leader") == leader.name else None


def settled(tc: TestCluster) -> tuple[Node, str]:
    """Every node streaming, a synchronous standby recorded and PostgreSQL waiting for it."""
    leader = tc.wait_leader(120)
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 120)
    standby = wait_for(lambda: sync_standby(tc, leader), 30, "a synchronous standby in the sync key")
    wait_for(lambda: leader.sql("SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                                standby) == [("sync",)], 30, "PostgreSQL waiting for it")
    return leader, standby


def kill_the_leader_once(tc: TestCluster, prober: Prober) -> float:
    """SIGKILL the leader's tree; the recorded synchronous standby must take over. Returns the write gap."""
    leader, standby = settled(tc)
    wait_for(lambda: len(prober.acked) > 20 and prober.acked[-1][2] == leader.name, 30, "writes")
    killed_at = time.monotonic()
    leader.kill_tree()
    new = tc.wait_leader(60, exclude=leader.name)
    assert new.name == standby, "only the recorded synchronous standby may be promoted"
    wait_for(lambda: any(t > killed_at and n == new.name for _, t, n in prober.acked), 30, "writes on the new leader")
    gap = longest_gap(prober.acked, killed_at - 1, time.monotonic())
    leader.start()
    return gap


def test_sigkill_of_the_leader_loses_nothing_and_promotes_the_synchronous_standby(tc):
    leader, _ = settled(tc)
    prober, thread = start_prober(tc.nodes, 1)
    try:
        for _ in range(5):
            GAPS.append(kill_the_leader_once(tc, prober))
    finally:
        prober.stop.set()
        thread.join(10)
    final, _ = settled(tc)
    assert lost_writes(prober, final) == []
    print(f"\nsynchronous mode, 5 leader kills: write gap median {statistics.median(GAPS):.2f}s "
          f"max {max(GAPS):.2f}s, {len(prober.acked)} acknowledged, 0 lost")


def test_strict_mode_waits_for_a_standby_rather_than_lose_durability(tc):
    leader, _ = settled(tc)
    req = urllib.request.Request(f"http://127.0.0.1:{leader.api_port}/config", method="PATCH",
                                 data=json.dumps({"synchronous_mode_strict": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10) as resp:
        assert resp.status == 200
    replicas = [n for n in tc.nodes if n is not leader]
    for node in replicas:
        node.stop()
    wait_for(lambda: leader.sql("SHOW synchronous_standby_names") == [("*",)], 30, "strict: wait for anyone")
    done: list[str] = []

    def write() -> None:
        conn = psycopg2.connect(host="127.0.0.1", port=leader.pg_port, user="postgres", password=SUPERUSER_PASSWORD,
                                dbname="postgres", connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("INSERT INTO bench_writes VALUES (-42)")
            done.append("committed")
        finally:
            conn.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(5)
    assert writer.is_alive() and done == [], "a commit returned with no standby to confirm it"
    replicas[0].start()
    writer.join(120)
    assert done == ["committed"]
    wait_for(lambda: replicas[0].sql("SELECT count(*) FROM bench_writes WHERE v = -42") == [(1,)], 30,
             "the write on the standby")
    replicas[1].start()
    settled(tc)
