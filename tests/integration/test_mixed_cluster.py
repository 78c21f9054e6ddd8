"""A live Patroni cluster moved to hasup one node at a time, and back (docs/migration.md).

One 3-node cluster serves the module, in synchronous mode with member slots, under the write
prober of tests/harness/prober.py.  It starts as Patroni 4.1 nodes; the tests run in file order:
1. the Patroni leader's status key is recorded;
2. forward: replicas are swapped to hasup (the asynchronous one first), then a switchover through
   patronictl hands the lead to a hasup node, then the old leader is swapped.  On the way, at
   2 Patroni + 1 hasup the Patroni leader's tree is SIGKILLed, and at 1 Patroni + 2 hasup the
   hasup leader's, each with the synchronous standby of the other kind: a new leader of the other
   kind must come within the lease bound and keep the crashed leader's slot after its member key
   expired; pause and resume are sent from one CLI and read by the other;
3. the hasup leader's status key is compared with the Patroni leader's field by field;
4. back: the same to Patroni, the switchover through hasupctl;
5. no acknowledged write lost, never two writers, and the write gap of every step.

ttl 20 (Patroni raises anything lower to 20, so both kinds use the same lease), loop_wait 2,
retry_timeout 4.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.harness import Node, TestCluster, cmdline, hasup_bin, wait_for
from tests.harness.prober import Prober, longest_gap, lost_writes, start_prober, writer_runs

BIN = os.path.dirname(hasup_bin())
HASUPCTL = os.path.join(BIN, "hasupctl")
PATRONICTL = os.path.join(BIN, "patronictl")
TTL, LOOP_WAIT = 20, 2
# A crashed leader's key expires TTL after its last renewal; a replica then wins the next race
# within a loop, on a slow shared machine with a few seconds more.
LEASE_BOUND = TTL + LOOP_WAIT + 6
STEP_GAP = 1.0  # seconds without an acknowledged write a migration step may cost (not a switchover)
# The prober shares a 2-core machine with the nodes, the CLIs and `make test -n 2`: a starting node or a
# starved synchronous standby has stretched a step's gap to 1.0-1.04 s (load 12), where 0.05-0.1 s is usual.
CONTENTION = 1.0
SWITCHOVER_NOISE = 1.5  # seconds

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(BIN, "patroni")),
                                reason="Patroni is not installed next to hasup (make install)")


@dataclass
class Journey:
    tc: TestCluster
    prober: Prober
    leaders: list[str] = field(default_factory=list)  # every leader in turn, as the prober must see them
    gaps: list[tuple[str, float]] = field(default_factory=list)  # (step, longest write gap)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> a settled leader's status key
    killed: set[str] = field(default_factory=set)  # kinds whose leader was SIGKILLed
    switched_with: list[tuple[str, str, str]] = field(default_factory=list)  # (cli, from kind, to kind)
    paused_with: set[tuple[str, str]] = field(default_factory=set)  # (pause cli, resume cli)
    rejoins: list[tuple[str, float]] = field(default_factory=list)  # (crashed node, seconds to stream again)


@pytest.fixture(scope="module")
def journey():
    dcs = {"ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": 4, "maximum_lag_on_failover": 1048576,
           "synchronous_mode": True, "postgresql": {"use_pg_rewind": True, "use_slots": True}}
    with TestCluster(3, dcs=dcs, kinds=("patroni",) * 3) as tc:
        leader = tc.start_all()
        leader.sql("CREATE TABLE bench_writes (v bigint PRIMARY KEY)")
        prober, thread = start_prober(tc.nodes, 1)
        j = Journey(tc, prober, [leader.name])
        try:
            wait_for(lambda: len(prober.acked) > 10, 30, "the prober's first writes")
            yield j
        finally:
            prober.stop.set()
            thread.join(10)
            for step, gap in j.gaps:
                print(f"write gap: {gap:6.2f} s  {step}")
            for who, took in j.rejoins:
                print(f"rejoin after the crash: {took:5.1f} s  {who}")


# -- helpers ----------------------------------------------------------------------------------


def run(tc: TestCluster, tool: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PATRONI", "HASUP_", "PG", "DCS_URL"))}
    return subprocess.run([tool, "-c", tc.nodes[0].config_path, *args], capture_output=True, text=True,
                          timeout=timeout, env=clean)


def ctl(tc: TestCluster, tool: str, *args: str) -> str:
    r = run(tc, tool, *args)
    assert r.returncode == 0, f"{os.path.basename(tool)} {' '.join(args)}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def ctl_result(tc: TestCluster, tool: str, *args: str) -> str | None:
    """The command's output when it exits 0, else None (for wait_for)."""
    r = run(tc, tool, *args, timeout=60)
    return r.stdout if r.returncode == 0 else None


def key(tc: TestCluster, rel: str) -> dict[str, Any]:
    value = tc.etcd.value(tc.key(rel))
    return dict(json.loads(value)) if value else {}


def settled(tc: TestCluster) -> tuple[Node, list[Node]]:
    """The leader, its replicas streaming (and saying so in their member keys), a synchronous standby named."""
    leader = tc.wait_leader(90)
    replicas = [n for n in tc.nodes if n is not leader]
    tc.wait_streaming(leader, replicas, 90)
    wait_for(lambda: all(tc.member(r.name).get("replication_state") == "streaming" for r in replicas), 30,
             "replicas to publish streaming")
    wait_for(lambda: key(tc, "sync").get("leader") == leader.name and key(tc, "sync").get("sync_standby"), 30,
             f"{leader.name} to name a synchronous standby")
    return leader, replicas


def one_writer(tc: TestCluster) -> Node:
    """Exactly one node accepts writes, and it holds the leader key."""
    writable = [n for n in tc.nodes if n.pid and not n.sql("SELECT pg_is_in_recovery()")[0][0]]
    assert [n.name for n in writable] == [tc.leader_name()], f"writable: {[n.name for n in writable]}"
    return writable[0]


def kinds(tc: TestCluster) -> str:
    return "+".join(f"{sum(n.kind == k for n in tc.nodes)} {k}" for k in ("patroni", "hasup"))


def gap_since(acked: list[tuple[int, float, str]], since: float) -> float:
    """The longest time without an acknowledged write from the last one before `since` on."""
    times = [t for _, t, _ in acked]
    before = [t for t in times if t < since]
    return longest_gap(acked, before[-1] if before else since, times[-1] if times else since)


def measured(j: Journey, step: str, since: float) -> float:
    """The longest write gap from `since` to now, once writes flow again; recorded for the report."""
    wait_for(lambda: any(t > time.monotonic() - 1 for _, t, _ in j.prober.acked[-5:]), 60, "writes to flow")
    gap = gap_since(j.prober.acked, since)
    j.gaps.append((f"{step} [{kinds(j.tc)}]", gap))
    return gap


def note_leader(j: Journey, name: str) -> None:
    if j.leaders[-1] != name:
        j.leaders.append(name)


def tag_nosync(node: Node, on: bool) -> None:
    """Set or clear the node's nosync tag in its file and reload it (SIGHUP), as an operator would."""
    if on:
        node.extra["tags.nosync"] = True
    else:
        node.extra.pop("tags.nosync", None)
    node.prepare()
    os.kill(node.pid or 0, signal.SIGHUP)


def wait_sync(tc: TestCluster, ok: Callable[[str | None], bool], what: str) -> None:
    """Until the sync key and the leader's synchronous_standby_names both name a standby `ok` accepts."""
    leader = tc.leader()
    assert leader is not None
    def named() -> bool:
        standby = key(tc, "sync").get("sync_standby")
        return ok(standby) and standby is not None and standby in leader.sql("SHOW synchronous_standby_names")[0][0]
    wait_for(named, 30, what)


def leave_sync(j: Journey, node: Node) -> None:
    """Tag the synchronous standby nosync and reload it, so the leader names another before it stops:
    a Patroni leader notices a stopped synchronous standby only at its next loop, and commits wait
    until then (docs/migration.md, "Order of nodes")."""
    tag_nosync(node, True)
    wait_sync(j.tc, lambda s: s != node.name, f"another synchronous standby than {node.name}")
    del node.extra["tags.nosync"]  # the other kind starts on the file as it was


def swap(j: Journey, node: Node, kind: str, why: str) -> float:
    """Migrate one replica: stop it, start `kind` on the same file and data directory, wait for it to stream."""
    start = time.monotonic()
    was = node.kind
    if node.name == key(j.tc, "sync").get("sync_standby"):
        leave_sync(j, node)
        why += " (synchronous standby, tagged nosync first)"
    node.swap(kind)
    settled(j.tc)
    one_writer(j.tc)
    gap = measured(j, f"swap {why} {node.name} {was}->{kind}", start)
    # What an operator runs between steps (docs/migration.md): every member back, streaming, caught up.
    out = wait_for(lambda: ctl_result(j.tc, HASUPCTL, "-f", "json", "check", "--members", "3", "--max-lag", "16"),
                   30, "hasupctl check to pass")
    rows = {r["Member"]: r for r in json.loads(out.splitlines()[0])}
    assert rows[node.name]["Runs"].split()[0] == {"hasup": "hasup", "patroni": "Patroni"}[kind], out
    assert all(r["Ready"] == "yes" for r in rows.values()), out
    return gap


def switchover(j: Journey, tool: str) -> Node:
    """Hand the lead to the synchronous standby through `tool`."""
    leader, _ = settled(j.tc)
    candidate = j.tc.node(key(j.tc, "sync")["sync_standby"])
    start = time.monotonic()
    ctl(j.tc, tool, "switchover", "--force", "--leader", leader.name, "--candidate", candidate.name)
    new = j.tc.wait_leader(60, exclude=leader.name)
    assert new is candidate
    note_leader(j, new.name)
    settled(j.tc)
    one_writer(j.tc)
    j.switched_with.append((os.path.basename(tool), leader.kind, new.kind))
    measured(j, f"switchover via {os.path.basename(tool)} {leader.name}({leader.kind})->{new.name}({new.kind})", start)
    return new


def pause_and_resume(j: Journey, pause: str, resume: str) -> None:
    """Pause from one CLI, check every member (of both kinds) says so, resume from the other."""
    tc = j.tc
    ctl(tc, pause, "pause", "--wait")
    assert key(tc, "config").get("pause") is True
    wait_for(lambda: all(n.status().get("pause") is True for n in tc.nodes), 20, "every /patroni to say pause")
    assert all(tc.member(n.name).get("pause") is True for n in tc.nodes)
    ctl(tc, resume, "resume", "--wait")
    wait_for(lambda: not any(n.status().get("pause") for n in tc.nodes), 20, "every /patroni to say resumed")
    assert not key(tc, "config").get("pause")
    j.paused_with.add((os.path.basename(pause), os.path.basename(resume)))


def crash_leader(j: Journey) -> None:
    """SIGKILL the leader's whole tree: a new leader within the lease bound keeps its slot."""
    tc = j.tc
    leader, replicas = settled(tc)
    state = kinds(tc)
    slot = leader.name  # node names are their slot names
    # The successor is the synchronous standby: make it the replica of the other kind, so a crash
    # hands the lead across kinds (the others tagged nosync until it is over).
    heir = next(r for r in replicas if r.kind != leader.kind)
    bystanders = [r for r in replicas if r is not heir]
    for r in bystanders:
        tag_nosync(r, True)
    wait_sync(tc, lambda s: s == heir.name, f"{heir.name} to be the synchronous standby")
    start = time.monotonic()
    leader.kill_tree()
    new = tc.wait_leader(LEASE_BOUND + 30, exclude=leader.name)
    took = time.monotonic() - start
    note_leader(j, new.name)
    assert took <= LEASE_BOUND, f"{new.name} led {took:.1f}s after the kill, over the lease bound {LEASE_BOUND}s"
    assert new is heir and new.kind != leader.kind
    for r in bystanders:
        tag_nosync(r, False)
    # The crashed leader's member key expires too; the new leader still holds its slot a few
    # loops later (each loop rewrites the new leader's member key with its WAL position).
    wait_for(lambda: not tc.member(leader.name), TTL + 15, f"{leader.name}'s member key to expire")
    for _ in range(2):
        seen = tc.etcd.key(tc.key(f"members/{new.name}"))["modifiedIndex"]
        wait_for(lambda s=seen: tc.etcd.key(tc.key(f"members/{new.name}"))["modifiedIndex"] > s, 30,
                 f"{new.name} to run another loop")
    assert new.sql("SELECT slot_type FROM pg_replication_slots WHERE slot_name = %s", slot) == [("physical",)]
    assert slot in key(tc, "status").get("retain_slots", [])
    measured(j, f"SIGKILL of leader {leader.name}({leader.kind}) at {state}, {new.name}({new.kind}) led "
                f"after {took:.1f}s", start)
    j.killed.add(leader.kind)
    # The crashed node comes back as it was, and streams through the slot kept for it.
    back = time.monotonic()
    leader.start()
    wait_for(lambda: dict(new.sql("SELECT r.application_name, s.slot_name FROM pg_stat_replication r JOIN "
                                  "pg_replication_slots s ON s.active_pid = r.pid")).get(leader.name) == slot,
             90, f"{leader.name} to stream through its slot")
    j.rejoins.append((f"{leader.name}({leader.kind}) under {new.name}({new.kind})", time.monotonic() - back))
    settled(tc)


def settled_status(j: Journey) -> None:
    """Record the status key a settled leader of this kind writes (its slots reported)."""
    tc = j.tc
    leader, _ = settled(tc)
    names = sorted(n.name for n in tc.nodes)
    status = wait_for(lambda: (s := key(tc, "status")) and sorted(s.get("slots", {})) == names and s, 30,
                      f"{leader.name}'s status key to list every member's slot")
    j.statuses.setdefault(leader.kind, {**status, "_leader": leader.name})


def migrate(j: Journey, to: str, switch_with: str) -> None:
    """Move every node to `to`: replicas first (the asynchronous one first), then a switchover,
    then the old leader.  On the way, the crashes and pause checks at the mixed states."""
    tc = j.tc
    old_leaders: set[str] = set()
    while True:
        leader, replicas = settled(tc)
        settled_status(j)
        mixed = {n.kind for n in tc.nodes} == {"patroni", "hasup"}
        ours = sum(n.kind == leader.kind for n in tc.nodes)
        if mixed and leader.kind not in j.killed and ours == 2:
            # 2 of the leader's kind + 1 of the other: the leader's kind crashes here.
            crash_leader(j)
            continue
        if mixed and ("patronictl", "hasupctl") not in j.paused_with:
            pause_and_resume(j, PATRONICTL, HASUPCTL)
            pause_and_resume(j, HASUPCTL, PATRONICTL)
        todo = [r for r in replicas if r.kind != to]
        if todo:
            sync = key(tc, "sync").get("sync_standby")
            node = sorted(todo, key=lambda r: r.name == sync)[0]
            why = "old leader" if node.name in old_leaders else "replica"
            swap(j, node, to, why)
            continue
        if leader.kind != to:
            switchover(j, switch_with)
            old_leaders.add(leader.name)
            continue
        return


# -- the tests, in order ----------------------------------------------------------------------


def test_a_patroni_cluster_with_slots_and_sync(journey: Journey) -> None:
    tc = journey.tc
    leader, replicas = settled(tc)
    assert {n.kind for n in tc.nodes} == {"patroni"}
    assert all(os.path.basename(cmdline(n.pid or 0).split()[1]) == "patroni" for n in tc.nodes)
    settled_status(journey)
    assert "patroni" in journey.statuses
    # Patroni's own switchover, the yardstick for the ones across kinds.
    switchover(journey, PATRONICTL)


def test_forward_to_hasup_with_crashes_switchover_and_pause(journey: Journey) -> None:
    migrate(journey, "hasup", PATRONICTL)
    tc = journey.tc
    assert {n.kind for n in tc.nodes} == {"hasup"}
    assert journey.killed == {"patroni", "hasup"}, f"crashed leaders: {journey.killed}"
    assert ("patronictl", "patroni", "hasup") in journey.switched_with
    assert journey.paused_with == {("patronictl", "hasupctl"), ("hasupctl", "patronictl")}


def test_status_key_fields_agree(journey: Journey) -> None:
    settled_status(journey)
    p, h = journey.statuses["patroni"], journey.statuses["hasup"]
    names = sorted(n.name for n in journey.tc.nodes)
    for kind, s in (("patroni", p), ("hasup", h)):
        assert set(s) == {"optime", "slots", "retain_slots", "_leader"}, kind
        assert isinstance(s["optime"], int) and s["optime"] > 0, kind
        assert sorted(s["slots"]) == names and all(isinstance(v, int) for v in s["slots"].values()), kind
        assert s["retain_slots"] == names, kind
        # The leader's own slot stands at its optime (it has no consumer on the leader itself).
        assert s["slots"][s["_leader"]] == s["optime"], kind


def test_back_to_patroni(journey: Journey) -> None:
    migrate(journey, "patroni", HASUPCTL)
    assert {n.kind for n in journey.tc.nodes} == {"patroni"}
    assert ("hasupctl", "hasup", "patroni") in journey.switched_with


def test_no_acknowledged_write_lost_and_never_two_writers(journey: Journey) -> None:
    tc = journey.tc
    leader, _ = settled(tc)
    journey.prober.stop.set()
    assert lost_writes(journey.prober, leader) == []
    assert writer_runs(journey.prober.acked) == journey.leaders
    steps = [(s, g) for s, g in journey.gaps if s.startswith("swap")]
    assert len(steps) == 6 and all(g <= STEP_GAP + CONTENTION for s, g in steps), journey.gaps
    assert sorted(g for _, g in steps)[len(steps) // 2] <= STEP_GAP, journey.gaps
    # A switchover across kinds costs no more than Patroni's own. One sample each on a loaded machine:
    # Patroni's demote alone (stop to lock released) has taken 0.3-1.6 s there, hence the margin.
    own = [g for s, g in journey.gaps if s.startswith("switchover") and s.count("(patroni)") == 2]
    across = [g for s, g in journey.gaps if s.startswith("switchover") and s.count("(patroni)") == 1]
    assert len(own) == 1 and len(across) == 2 and max(across) <= own[0] + SWITCHOVER_NOISE, journey.gaps
