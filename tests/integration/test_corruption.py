"""Corrupt and hostile values written straight into etcd never take a node down (docs/design.md §11).

One 3-node cluster (ttl 10, loop_wait 2) serves the module.  For every key hasup reads, bad
values go in one after another; each is waited for until a node has logged rejecting it (so each
was really read), and after the last one the cluster is watched for 3 x loop_wait: a leader answers
/primary, every /patroni answers, and no supervisor or worker was restarted.  Then the key gets its
old value back and the cluster must be as before.  Last, with a corrupt history and a bogus member
whose api_url answers garbage (or 5 MB), the leader's whole tree is killed: a replica takes over
within ttl + 10 s and the bogus member never leads.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator

import pytest

from tests.harness import Node, TestCluster, wait_for
from tests.harness.rawserver import RawServer

TTL, LOOP_WAIT = 10, 2
WINDOW = 3 * LOOP_WAIT
ROLES = ("election", "postgres", "watchdog", "api")
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

DEEP = "[" * 600 + "]" * 600
MEGABYTE = json.dumps("x" * 1_000_000)
# Raw JSON text: Python's json would never write these, etcd holds them all the same.
GENERIC = ["{", DEEP, MEGABYTE, "1e400", "NaN", '{"a": -1e400}', "9" * 5000]
BAD: dict[str, list[str]] = {
    "config": [*GENERIC, '{"ttl": 1e400}', '{"ttl": "abc", "pause": "maybe"}', '{"loop_wait": [2]}',
               '{"ttl": 10, "x": "' + "a" * 1_000_000 + '"}', '{"ttl": ' + "9" * 400 + "}",
               '{"postgresql": {"parameters": ' + DEEP + "}}"],
    "history": [*GENERIC, "[1]", "[{}]", '[[1, "abc", "x"]]', "[[1, 0, 1e400]]", '[["1", 0, "x", null, null]]'],
    "failover": [*GENERIC, '{"member": ["node2"]}', '{"leader": {"a": 1}}', '{"scheduled_at": [1]}'],
    "sync": [*GENERIC, '{"leader": 5}', '{"sync_standby": {"a": 1}}', '{"leader": "' + "n" * 5000 + '"}'],
    "status": [*GENERIC, '{"optime": "abc"}', '{"optime": 1e400}', '{"slots": [1]}', '{"optime": -5}'],
    "failsafe": [*GENERIC, '{"node1": 5}', '{"node1": "file:///etc/passwd"}'],
    "initialize": ["garbage", "x" * 1_000_000, "12ab", DEEP],
    "optime/leader": ["abc", "1e400", "9" * 30, DEEP],
    "members/bogus": [*GENERIC, '{"api_url": "file:///etc/passwd"}', '{"xlog_location": "abc"}',
                      '{"conn_url": 5}', '{"state": "running", "tags": ' + DEEP + "}"],
}
# A replica's own key: it writes the key back within a cycle, so one value at a time is enough.
REPLICA_BAD = ['{"state": "running", "role": "replica", "xlog_location": "abc"}', "[1]", MEGABYTE]


@pytest.fixture(scope="module")
def tc() -> Iterator[TestCluster]:
    c = TestCluster(3)
    with c:  # starts etcd; destroys everything on the way out
        c.start_all()
        yield c


# -- helpers ------------------------------------------------------------------------------------------


def etcd_delete(tc: TestCluster, rel: str) -> None:
    req = urllib.request.Request(f"{tc.etcd.url}/v2/keys{tc.key(rel)}", method="DELETE")
    try:
        with _opener.open(req, timeout=3) as r:
            r.read()
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise


def restore(tc: TestCluster, rel: str, value: str | None) -> None:
    if value is None:
        etcd_delete(tc, rel)
    else:
        tc.etcd.put(tc.key(rel), value)


def pids(tc: TestCluster) -> dict[tuple[str, str], int | None]:
    out: dict[tuple[str, str], int | None] = {}
    for node in tc.nodes:
        out[(node.name, "supervisor")] = node.pid
        for role in ROLES:
            out[(node.name, role)] = node.worker_pid(role)
    return out


def rejections_of(tc: TestCluster, rels: Iterable[str]) -> dict[str, int]:
    """Lines in which the nodes said they ignored a value of each key (each value is logged once a node)."""
    logs = [node.log_text() for node in tc.nodes]
    return {rel: sum(text.count(f"ignoring the value of etcd key {rel} (") for text in logs) for rel in rels}


def rejections(tc: TestCluster, rel: str) -> int:
    return rejections_of(tc, [rel])[rel]


def answers_patroni(node: Node) -> bool:
    code, body = node.api("/patroni", timeout=3)
    return code in (200, 503) and isinstance(body, dict) and body.get("patroni", {}).get("name") == node.name


def check_alive(tc: TestCluster, leader: Node | None, before: dict[tuple[str, str], int | None], what: str) -> None:
    """The leader answers /primary (when given), every node answers /patroni, no supervisor was replaced."""
    for node in tc.nodes:
        assert node.pid is not None and node.pid == before[(node.name, "supervisor")], \
            f"{what}: {node.name}'s supervisor is gone"
        assert answers_patroni(node), f"{what}: {node.name} did not answer /patroni"
    if leader is not None:
        assert leader.api("/primary", timeout=3)[0] == 200, f"{what}: {leader.name} stopped answering /primary"


def same_processes(tc: TestCluster, before: dict[tuple[str, str], int | None], what: str) -> None:
    now = pids(tc)
    assert now == before, f"{what}: restarted: {sorted(k for k in now if now[k] != before[k])}"


def watch_window(tc: TestCluster, leader: Node | None, seconds: float, before: dict[tuple[str, str], int | None],
                 what: str) -> None:
    """check_alive for `seconds`, then every worker must still be the one that was there."""
    until = time.monotonic() + seconds
    while True:
        check_alive(tc, leader, before, what)
        if time.monotonic() >= until:
            break
        time.sleep(0.3)  # pacing the checks, not waiting for anything
    same_processes(tc, before, what)


def write_each(tc: TestCluster, rel: str, values: list[str]) -> None:
    """Write each value in turn, and wait until a node has read and rejected it."""
    for i, value in enumerate(values):
        seen = rejections(tc, rel)
        tc.etcd.put(tc.key(rel), value)
        wait_for(lambda seen=seen: rejections(tc, rel) > seen, 4 * LOOP_WAIT,
                 f"a node to reject bad value {i} of {rel} ({len(value)} characters)")


def timeline(node: Node) -> int:
    return int(node.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0])


# -- every key, every kind of bad value -------------------------------------------------------------------


def test_bad_values_in_every_key_leave_the_cluster_running(tc: TestCluster) -> None:
    """Every key at once, in rounds: round i writes the i-th bad value of each key, and waits until a
    node has rejected each of them, checking all the while that the cluster serves.  After the last
    round every key holds a bad value for 3 x loop_wait; then the old values come back."""
    leader = tc.wait_leader(60)
    replicas = [n for n in tc.nodes if n is not leader]
    tc.wait_streaming(leader, replicas, 60)
    before = pids(tc)
    assert all(before.values()), before
    tl = timeline(leader)
    cases = {**BAD, f"members/{replicas[0].name}": REPLICA_BAD}
    originals = {rel: tc.etcd.value(tc.key(rel)) for rel in cases}
    started = time.monotonic()
    for i in range(max(len(values) for values in cases.values())):
        batch = {rel: values[i] for rel, values in cases.items() if i < len(values)}
        seen = rejections_of(tc, batch)
        for rel, value in batch.items():
            tc.etcd.put(tc.key(rel), value)
        deadline = time.monotonic() + 4 * LOOP_WAIT
        while True:
            check_alive(tc, leader, before, f"round {i}")
            now = rejections_of(tc, batch)
            waiting = [rel for rel in batch if now[rel] <= seen[rel]]
            if not waiting or time.monotonic() > deadline:
                break
            for rel in waiting:
                # The leader rewrites status as its WAL moves, a member its own key: write it again
                # until a node has read it.
                if tc.etcd.value(tc.key(rel)) != batch[rel]:
                    tc.etcd.put(tc.key(rel), batch[rel])
            time.sleep(0.2)  # pacing the polls of the nodes' logs
        assert not waiting, f"round {i}: no node rejected the bad values of {waiting}"
    watch_window(tc, leader, WINDOW, before, "every key holding a bad value")
    for rel, value in originals.items():
        if rel != f"members/{replicas[0].name}":  # that one its node writes back itself
            restore(tc, rel, value)
    took = time.monotonic() - started
    # The values restored: the same leader, writable, on the same timeline, replicas streaming, no restart.
    assert tc.wait_leader(20) is leader and timeline(leader) == tl
    tc.wait_streaming(leader, replicas, 60)
    leader.sql("CREATE TABLE IF NOT EXISTS after_corruption (id int)")
    watch_window(tc, leader, LOOP_WAIT, before, "after every value was restored")
    counted = [metric(node, "hasup_dcs_bad_values_total") for node in tc.nodes]
    assert all(c > 0 for c in counted), counted
    print(f"\n{sum(len(v) for v in cases.values())} bad values in {len(cases)} keys, 0 restarts, {took:.0f}s")


def metric(node: Node, name: str) -> float:
    _code, text = node.api("/metrics")
    for line in str(text).splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in {node.name}'s /metrics")


def test_a_leader_key_that_names_nobody_takes_nothing_down(tc: TestCluster) -> None:
    """A value in the leader key is a held lock, whatever it says: nobody can take it and nobody is
    promoted while it is there; the old primary keeps running (unlocked) and leads again once the
    key names it."""
    leader = tc.wait_leader(60)
    before = pids(tc)
    write_each(tc, "leader", ["x" * 1000, "a/b", "line\nbreak", "x" * 1_000_000])
    watch_window(tc, None, WINDOW, before, "bad leader values")
    for node in tc.nodes:
        if node is not leader:
            assert node.sql("SELECT pg_is_in_recovery()")[0][0], f"{node.name} was promoted"
    tc.etcd.put(tc.key("leader"), leader.name)
    wait_for(lambda: leader.api("/primary", timeout=3)[0] == 200, 4 * LOOP_WAIT, f"{leader.name} to lead again")
    assert tc.wait_leader(10) is leader
    watch_window(tc, leader, LOOP_WAIT, before, "after the leader key was restored")


# -- a failover through a corrupt history and a bogus member that answers garbage --------------------------


GARBAGE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"role\": [\"primary\"], garbage\x00\xff"
FIVE_MB = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
           b'{"state": "running", "role": "replica", "xlog": {"location": 1}, "pad": "' + b"x" * (5 << 20) + b'"}')


@pytest.mark.parametrize(("answer", "history"), [(GARBAGE, "[1]\n"), (FIVE_MB, "[{}]\n")], ids=["garbage", "5MB"])
def test_failover_with_a_corrupt_history_and_a_bogus_member(tc: TestCluster, answer: bytes, history: str) -> None:
    # (history: a value not used above, so that the nodes log it, and we know when they have read it)
    leader = tc.wait_leader(60)
    others = [n for n in tc.nodes if n is not leader]
    tc.wait_streaming(leader, others, 120)
    peer = RawServer(lambda conn: conn.sendall(answer))  # what the bogus member's api_url points at
    try:
        bogus = {"conn_url": "postgres://127.0.0.1:1/postgres", "api_url": f"http://127.0.0.1:{peer.port}/patroni",
                 "state": "running", "role": "replica", "xlog_location": 2**62, "timeline": 99, "version": "4.1.4"}
        tc.etcd.put(tc.key("members/bogus"), json.dumps(bogus))
        seen = rejections(tc, "history")
        tc.etcd.put(tc.key("history"), history)
        wait_for(lambda: rejections(tc, "history") > seen, 4 * LOOP_WAIT, "the corrupt history to be read")
        survivors = {k: v for k, v in pids(tc).items() if k[0] != leader.name}
        killed_at = time.monotonic()
        leader.kill_tree()
        leaders: set[str] = set()

        def writable() -> Node | None:
            name = tc.leader_name()
            if name:
                leaders.add(name)
            if not name or name in (leader.name, "bogus"):
                return None
            node = tc.node(name)
            return node if not node.sql("SELECT pg_is_in_recovery()")[0][0] else None
        new = wait_for(writable, TTL + 10, "a writable leader after the kill")
        took = time.monotonic() - killed_at
        assert "bogus" not in leaders and took <= TTL + 10
        assert peer.requests > 0, "nobody asked the bogus member: the test proves nothing"
        now = {k: v for k, v in pids(tc).items() if k[0] != leader.name}
        assert now == survivors, f"restarted: {sorted(k for k in now if now[k] != survivors[k])}"
        new.sql("CREATE TABLE IF NOT EXISTS after_bogus_failover (id int)")
        print(f"\nfailover with a bogus member answering {len(answer)} bytes: {took:.1f}s")
    finally:
        etcd_delete(tc, "members/bogus")
        peer.close()
    leader.start()
    tc.wait_streaming(new, [n for n in tc.nodes if n is not new], 120)
    assert tc.leader_name() != "bogus"
