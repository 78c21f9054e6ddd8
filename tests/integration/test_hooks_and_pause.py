"""pre_promote and before_stop on a live cluster, and two rules of maintenance mode.

node2 carries a pre_promote script that always says no; every node carries a before_stop script that,
after a short pause, records the postmaster it found and whether that still ran (so a line proves the
stop waited for the script).  Tests share the cluster and find the current leader themselves; each
leaves every node streaming.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest

from tests.harness import Node, TestCluster, wait_for

LOOP_WAIT = 2  # the harness default (ttl 10)
VETOED = "node2"
# <dir> <data dir>: after 0.5 s, records "<postmaster pid> running|gone" in <dir>/before_stop.log.
BEFORE_STOP = """#!/bin/sh
sleep 0.5
pid=$(head -n 1 "$2/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then state=running; else state=gone; fi
echo "$pid $state" >> "$1/before_stop.log"
"""
# <dir>: records that it ran, then refuses the promotion.
PRE_PROMOTE = """#!/bin/sh
echo vetoed >> "$1/pre_promote.log"
echo "no promotion on this node today" >&2
exit 1
"""
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def script(base: str, name: str, text: str) -> str:
    path = os.path.join(base, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)  # nodes run as an unprivileged user
    return path


@pytest.fixture(scope="module")
def tc():
    c = TestCluster(3)
    before_stop = script(c.base, "before_stop.sh", BEFORE_STOP)
    pre_promote = script(c.base, "pre_promote.sh", PRE_PROMOTE)
    for node in c.nodes:
        node.extra["postgresql.before_stop"] = f"{before_stop} {node.dir} {node.data_dir}"
        node.extra["postgresql.callback_timeout"] = 10
    c.node(VETOED).extra["postgresql.pre_promote"] = f"{pre_promote} {c.node(VETOED).dir}"
    with c:  # starts etcd; destroys everything on the way out
        c.start_all()
        yield c


def post(node: Node, path: str, body: object, method: str = "POST") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{node.api_port}{path}", data=json.dumps(body).encode(),
                                 method=method, headers={"Content-Type": "application/json"})
    try:
        with _opener.open(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def hook_lines(node: Node, name: str) -> list[str]:
    try:
        with open(os.path.join(node.dir, name)) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def heal(tc: TestCluster, exclude: str | None = None) -> Node:
    for node in tc.nodes:
        if node.pid is None or not node.processes():
            node.start()
    leader = tc.wait_leader(120, exclude=exclude)
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 120)
    # Streaming can run ahead of the clone's reply: an operation asked for now would find the node busy.
    wait_for(lambda: all(n.status().get("state") == "running" for n in tc.nodes), 30, "every node running")
    return leader


def in_recovery(node: Node) -> bool:
    return bool(node.sql("SELECT pg_is_in_recovery()")[0][0])


def replay_paused(node: Node) -> bool:
    return bool(node.sql("SELECT pg_is_wal_replay_paused()")[0][0])


def test_before_stop_runs_and_is_waited_for_before_a_restart(tc: TestCluster) -> None:
    leader = heal(tc)
    replica = next(n for n in tc.nodes if n is not leader)
    before, pid = hook_lines(replica, "before_stop.log"), replica.postmaster_pid()
    assert post(replica, "/restart", {}) == (200, "restarted successfully")
    assert hook_lines(replica, "before_stop.log") == [*before, f"{pid} running"]
    assert replica.postmaster_pid() not in (None, pid)


def test_a_vetoed_switchover_candidate_gives_the_lock_to_another_member(tc: TestCluster) -> None:
    leader = heal(tc)
    if leader.name == VETOED:  # it bootstrapped (no promotion there): hand over to someone else first
        assert post(leader, "/switchover", {"leader": leader.name, "candidate": "node1"})[0] == 200
        leader = heal(tc)
    vetoed = tc.node(VETOED)
    stops_before, old_pid = hook_lines(leader, "before_stop.log"), leader.postmaster_pid()
    # The API answers from the leader key, which the candidate holds while its script runs (as in Patroni).
    code, text = post(leader, "/switchover", {"leader": leader.name, "candidate": VETOED})
    assert code in (200, 503), (code, text)
    # The candidate says why it does not lead, in /patroni and its log, and sits out the next races.
    wait_for(lambda: "Promotion cancelled because the pre-promote script failed" in vetoed.log_text(), 30,
             "the vetoed candidate to log why")
    wait_for(lambda: "pre-promote script failed" in (vetoed.status().get("last_decision") or ""), 10,
             "the vetoed candidate's last decision to say why")
    assert "pre_promote script" in vetoed.log_text() and "exited with status 1" in vetoed.log_text()
    assert "no promotion on this node today" in vetoed.log_text()  # the end of the script's output
    new = heal(tc, exclude=VETOED)
    assert hook_lines(vetoed, "pre_promote.log")[:1] == ["vetoed"]
    assert in_recovery(vetoed)  # never writable
    # The old leader's fast stop for the hand-over waited for before_stop, its PostgreSQL still up.
    assert f"{old_pid} running" in hook_lines(leader, "before_stop.log")[len(stops_before):]
    assert tc.leader_name() == new.name != VETOED


def test_a_paused_leader_whose_postgres_stops_lets_go_of_the_key_and_nobody_takes_it(tc: TestCluster) -> None:
    leader = heal(tc)
    replicas = [n for n in tc.nodes if n is not leader]
    assert post(leader, "/config", {"pause": True}, "PATCH")[0] == 200
    wait_for(lambda: all(n.status().get("pause") for n in tc.nodes), 20, "every node paused")
    # In maintenance mode a paused replay is the operator's: left alone.
    replicas[0].sql("SELECT pg_wal_replay_pause()")
    os.kill(leader.postmaster_pid(), signal.SIGINT)  # the operator's `pg_ctl stop -m fast`
    wait_for(lambda: leader.postmaster_pid() is None, 30, "PostgreSQL stopped")
    wait_for(lambda: tc.leader_name() is None, 2 * LOOP_WAIT, "the leader key to be removed")
    watched_until = time.monotonic() + 3 * LOOP_WAIT
    while time.monotonic() < watched_until:
        assert tc.leader_name() is None  # nobody takes it while paused
        assert leader.postmaster_pid() is None  # and nobody starts the old leader's PostgreSQL
        assert all(in_recovery(n) for n in replicas)
        assert replay_paused(replicas[0])
        time.sleep(0.2)
    assert "removed leader lock because postgres is not running" in leader.log_text()
    assert post(leader, "/config", {"pause": None}, "PATCH")[0] == 200
    # Resumed, unless it won the leader race first (the promotion ends its recovery).
    wait_for(lambda: not in_recovery(replicas[0]) or not replay_paused(replicas[0]), 2 * LOOP_WAIT + 10,
             "the replay to resume once unpaused")
    heal(tc)


def test_a_replay_paused_by_hand_is_resumed_outside_maintenance_mode(tc: TestCluster) -> None:
    leader = heal(tc)
    replica = next(n for n in tc.nodes if n is not leader)
    replica.sql("SELECT pg_wal_replay_pause()")
    assert replay_paused(replica)
    wait_for(lambda: not replay_paused(replica), 2 * LOOP_WAIT, "the replay to resume")
    assert "resuming paused WAL replay" in replica.log_text()


def test_before_stop_runs_and_is_waited_for_before_a_shutdown(tc: TestCluster) -> None:
    leader = heal(tc)
    for node in (next(n for n in tc.nodes if n is not leader), leader):
        before, pid = hook_lines(node, "before_stop.log"), node.postmaster_pid()
        node.stop(timeout=60)
        assert node.postmaster_pid() is None
        assert hook_lines(node, "before_stop.log") == [*before, f"{pid} running"]
