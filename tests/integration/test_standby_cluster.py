"""A standby cluster of 3 hasup nodes following a primary cluster of 3, both scopes on one etcd.

The standby cluster is bootstrapped by cloning the primary cluster's leader (standby_cluster in
bootstrap.dcs); its leader key holder is the standby leader, the others cascade from it.  Tests run
in file order on one pair of clusters: replication into every standby member, a SIGKILLed standby
leader replaced by another that streams from the primary, a switchover inside the standby cluster,
then a planned DR switchover to the
standby cluster and back (demote-cluster, wait for the replay, promote-cluster) under a write
prober, with no acknowledged write lost and never two writable clusters.

Set HASUP_STANDBY_TIMINGS=<file> to append the measured figures (one JSON line per run).
ttl 10, loop_wait 2, retry_timeout 4.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import pytest

from tests.harness import Node, TestCluster, hasup_bin, wait_for
from tests.harness.prober import Prober, start_prober, writer_runs

HASUPCTL = os.path.join(os.path.dirname(hasup_bin()), "hasupctl")
TIMINGS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def pair():
    primary = TestCluster(3)
    standby: TestCluster | None = None
    primary.etcd.start()
    try:
        leader = primary.start_all()
        leader.sql("CREATE TABLE bench_writes (v bigint PRIMARY KEY)")
        leader.sql("CREATE TABLE marks (token text PRIMARY KEY)")
        dcs = {**primary.dcs, "standby_cluster": {"host": "127.0.0.1", "port": leader.pg_port}}
        standby = TestCluster(3, dcs=dcs, etcd=primary.etcd)
        for i, node in enumerate(standby.nodes):  # names apart from the primary cluster's (the prober's records)
            node.name = f"dr{i + 1}"
        for node in standby.nodes:
            node.start()
        settled(standby, 180)
        yield primary, standby
    finally:
        if standby is not None:
            standby.destroy(keep_etcd=True)  # the primary cluster's teardown stops the shared etcd
        primary.destroy()
        path = os.environ.get("HASUP_STANDBY_TIMINGS")
        if path and TIMINGS:
            with open(path, "a") as f:
                f.write(json.dumps(TIMINGS) + "\n")


def ctl(tc: TestCluster, *args: str, timeout: float = 150) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PATRONI", "HASUP_", "PG", "DCS_URL"))}
    r = subprocess.run([HASUPCTL, "-c", tc.nodes[0].config_path, *args], capture_output=True, text=True,
                       timeout=timeout, env=clean)
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout


def receiving_from(node: Node) -> int | None:
    """The port this node's walreceiver streams from, or None."""
    try:
        rows = node.sql("SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'")
    except Exception:
        return None
    return int(rows[0][0]) if rows and rows[0][0] is not None else None


def settled(tc: TestCluster, timeout: float, remote: int | None = None, exclude: str | None = None) -> Node:
    """The standby leader, streaming from the remote (port), the others streaming from it."""
    def standby_leader() -> Node | None:
        name = tc.leader_name()
        if not name or name == exclude:
            return None
        m = tc.member(name)
        if m.get("role") != "standby_leader" or m.get("state") != "running":
            return None
        node = tc.node(name)
        port = receiving_from(node)
        return node if port is not None and (remote is None or port == remote) else None
    leader = wait_for(standby_leader, timeout, f"a standby leader of {tc.scope} streaming from the remote")
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], timeout)
    return leader


def has_mark(node: Node, token: str) -> bool:
    try:
        return bool(node.sql("SELECT 1 FROM marks WHERE token = %s", token))
    except Exception:
        return False


def test_the_standby_cluster_replicates_the_primary_and_says_who_leads(pair: tuple[TestCluster, TestCluster]) -> None:
    primary, standby = pair
    leader = settled(standby, 60, remote=primary.leader().pg_port)  # type: ignore[union-attr]
    # Cloned, not initialised: the same system identifier, and no bootstrap of its own.
    assert standby.etcd.value(standby.key("initialize")) == primary.etcd.value(primary.key("initialize"))
    remote = f"127.0.0.1:{primary.leader().pg_port}"  # type: ignore[union-attr]
    assert f"bootstrapping a standby cluster from {remote} by basebackup" in leader.log_text()
    assert "post_bootstrap" not in leader.log_text()
    primary.leader().sql("INSERT INTO marks VALUES ('first')")  # type: ignore[union-attr]
    for node in standby.nodes:
        wait_for(lambda n=node: has_mark(n, "first"), 30, f"{node.name} to replay the primary's write")
        assert node.sql("SELECT pg_is_in_recovery()")[0][0]
    # REST: /standby-leader only on the standby leader, /primary nowhere, /cluster names the role.
    for node in standby.nodes:
        assert node.api("/standby-leader")[0] == (200 if node is leader else 503), node.name
        assert node.api("/primary")[0] == 503, node.name
    code, status = leader.api("/patroni")
    assert status["role"] == "standby_leader"
    assert leader.api("/replica")[0] == 503
    roles = {m["name"]: m["role"] for m in standby.nodes[1].api("/cluster")[1]["members"]}
    assert roles == {n.name: "standby_leader" if n is leader else "replica" for n in standby.nodes}
    listing = ctl(standby, "list")
    assert f"| {leader.name} " in listing and "Standby Leader" in listing


def test_a_killed_standby_leader_is_replaced_by_another_that_follows_the_primary(
        pair: tuple[TestCluster, TestCluster]) -> None:
    primary, standby = pair
    remote = primary.leader().pg_port  # type: ignore[union-attr]
    old = settled(standby, 60, remote=remote)
    started = time.monotonic()
    old.kill_tree()
    new = wait_for(lambda: _streaming_standby_leader(standby, remote, old.name), 60,
                   "a new standby leader streaming from the primary")
    TIMINGS["standby_leader_failover_s"] = round(time.monotonic() - started, 2)
    assert new is not old and standby.member(new.name)["role"] == "standby_leader"
    # The remaining member re-points to the new standby leader, and the killed node rejoins as a replica.
    old.start()
    settled(standby, 90, remote=remote)
    assert standby.leader_name() == new.name
    primary.leader().sql("INSERT INTO marks VALUES ('after-failover')")  # type: ignore[union-attr]
    for node in standby.nodes:
        wait_for(lambda n=node: has_mark(n, "after-failover"), 30, f"{node.name} to replay the primary's write")


def test_a_switchover_inside_the_standby_cluster_moves_the_standby_leader(
        pair: tuple[TestCluster, TestCluster]) -> None:
    primary, standby = pair
    remote = primary.leader().pg_port  # type: ignore[union-attr]
    old = settled(standby, 60, remote=remote)
    candidate = next(n for n in standby.nodes if n is not old)
    out = ctl(standby, "switchover", "--force", "--candidate", candidate.name)
    assert f'Successfully switched over to "{candidate.name}"' in out
    new = settled(standby, 60, remote=remote)
    assert new is candidate and standby.member(old.name)["role"] == "replica"
    assert all(n.sql("SELECT pg_is_in_recovery()")[0][0] for n in standby.nodes)  # nobody was promoted
    primary.leader().sql("INSERT INTO marks VALUES ('after-switchover')")  # type: ignore[union-attr]
    for node in standby.nodes:
        wait_for(lambda n=node: has_mark(n, "after-switchover"), 30, f"{node.name} to replay the primary's write")


def _streaming_standby_leader(tc: TestCluster, remote: int, exclude: str) -> Node | None:
    name = tc.leader_name()
    if not name or name == exclude or tc.member(name).get("role") != "standby_leader":
        return None
    node = tc.node(name)
    return node if receiving_from(node) == remote else None


def replay_lsn(node: Node) -> int:
    return int(node.sql("SELECT pg_last_wal_replay_lsn() - '0/0'")[0][0])


def switch(prober: Prober, old: TestCluster, new: TestCluster) -> float:
    """demote-cluster `old` (following `new`'s standby leader), wait until `new` replayed everything,
    promote-cluster `new`; the write gap (last write acknowledged by old, first by new) in seconds."""
    old_leader, new_leader = old.leader(), new.leader()
    assert old_leader is not None and new_leader is not None
    before = len(prober.acked)
    ctl(old, "demote-cluster", "--force", "--host", "127.0.0.1", "--port", str(new_leader.pg_port),
        "--timeout", "120")
    assert old.member(old_leader.name)["role"] == "standby_leader"
    assert old_leader.sql("SELECT pg_is_in_recovery()")[0][0]
    # The demoted leader stopped cleanly at its shutdown checkpoint: the other side must have it all.
    target = replay_lsn(old_leader)
    wait_for(lambda: replay_lsn(new_leader) >= target, 60, f"{new_leader.name} to replay up to the old primary's end")
    ctl(new, "promote-cluster", "--force", "--timeout", "120")
    assert new.member(new_leader.name)["role"] == "primary"
    wait_for(lambda: any(n == new_leader.name for _, _, n in prober.acked[before:]) and
             sum(1 for _, _, n in prober.acked[before:] if n == new_leader.name) >= 25, 60,
             f"writes acknowledged by {new_leader.name}")
    acked = prober.acked[before:]
    last_old = max(t for _, t, n in acked if n == old_leader.name) if any(n == old_leader.name for _, _, n in acked) \
        else max(t for _, t, n in prober.acked[:before])
    first_new = min(t for _, t, n in acked if n == new_leader.name)
    # The old side settles as a standby cluster of the new primary.
    settled(old, 90, remote=new_leader.pg_port)
    return first_new - last_old


def test_a_planned_dr_switchover_and_back_loses_no_acknowledged_write(
        pair: tuple[TestCluster, TestCluster]) -> None:
    a, b = pair
    a_leader = a.leader()
    assert a_leader is not None
    nodes = [a_leader] + [n for n in a.nodes + b.nodes if n is not a_leader]
    prober, thread = start_prober(nodes, first=1)
    try:
        wait_for(lambda: len(prober.acked) >= 25, 30, "the prober's first writes")
        gap_to_b = switch(prober, a, b)
        gap_to_a = switch(prober, b, a)
    finally:
        prober.stop.set()
        thread.join(10)
    TIMINGS["dr_write_gap_s"] = [round(gap_to_b, 2), round(gap_to_a, 2)]
    a_leader, b_leader = a.leader(), b.leader()
    assert a_leader is not None and b_leader is not None
    # Never two writable clusters: the writes went A, then B, then A, each run uninterrupted.
    assert writer_runs(prober.acked) == [a_leader.name, b_leader.name, a_leader.name]
    acked = {v for v, _, _ in prober.acked}
    assert len(acked) > 100
    for node in a.nodes + b.nodes:
        def has_all(n: Node = node) -> bool:
            present = {r[0] for r in n.sql("SELECT v FROM bench_writes")}
            return acked <= present
        wait_for(has_all, 60, f"every acknowledged write on {node.name}")
