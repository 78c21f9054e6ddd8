"""The short chaos run (issue 7, acceptance 1): synchronous mode, fixed seed, one fault of each kind.

etcd and three nodes each on a network-namespace host; a writer per node in
that node's namespace; after each fault is healed the cluster must be whole
again (a writable leader, both replicas streaming, a synchronous standby
waited on, writes acknowledged) within HEAL_BOUND.  The checker then finds
0 acknowledged writes lost and 0 dual-primary windows.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time

import pytest

from tests.chaos.history import History, Nemesis, check
from tests.chaos.nemesis import Nemeses
from tests.chaos.workload import Workload, create_table, final_values
from tests.harness import PG_BIN, Node, TestCluster, alive, hasup_bin, wait_for
from tests.harness.netns import Network, netns_available

pytestmark = [
    pytest.mark.skipif(not netns_available(), reason="needs root and `ip netns`"),
    pytest.mark.skipif(not (shutil.which("etcd") and os.path.isdir(PG_BIN) and os.path.exists(hasup_bin())),
                       reason="needs etcd, PostgreSQL 15 and hasup (run `make test`)"),
]

SEED = 7
HEAL_BOUND = 60.0
DCS = {"ttl": 10, "loop_wait": 1, "retry_timeout": 3, "maximum_lag_on_failover": 1048576,
       "synchronous_mode": True, "postgresql": {"use_pg_rewind": True, "use_slots": False}}
FAULTS = ["partition-leader", "sigkill-leader-tree", "sigstop-leader-postgres", "switchover"]


def sync_standby(tc: TestCluster, leader: Node) -> str | None:
    value = json.loads(tc.etcd.value(tc.key("sync")) or "{}")
    return value.get("sync_standby") if value.get("leader") == leader.name else None


def whole(tc: TestCluster, timeout: float) -> Node:
    """A writable leader, every replica streaming, and PostgreSQL waiting on the recorded synchronous standby."""
    deadline = time.monotonic() + timeout
    leader = tc.wait_leader(timeout)
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], max(1.0, deadline - time.monotonic()))
    standby = wait_for(lambda: sync_standby(tc, leader), max(1.0, deadline - time.monotonic()), "a sync standby")
    wait_for(lambda: leader.sql("SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                                standby) == [("sync",)], max(1.0, deadline - time.monotonic()),
             "PostgreSQL waiting on it")
    return leader


def hold(tc: TestCluster, name: str, old: Node, pm: int | None) -> None:
    """Keep the fault in place until the cluster has reacted to it."""
    if name in ("partition-leader", "sigkill-leader-tree"):
        tc.wait_leader(60, exclude=old.name)
    elif name == "sigstop-leader-postgres":
        wait_for(lambda: pm is None or not alive(pm), 30, f"{old.name}'s frozen PostgreSQL to be fenced")


def test_short_chaos_run_in_synchronous_mode_loses_nothing_and_heals():
    rng = random.Random(SEED)
    schedule = list(FAULTS)
    rng.shuffle(schedule)
    net = Network(f"c{os.getpid() % 100000}")
    net.create(["etcd", "node1", "node2", "node3"])
    tc: TestCluster | None = None
    nemeses: Nemeses | None = None
    try:
        tc = TestCluster(3, dcs=DCS, network=net)
        tc.etcd.start()
        create_table(tc.start_all())
        whole(tc, 60)
        nemeses = Nemeses(tc, net, rng)
        workload = Workload(tc.nodes)
        workload.start()
        record: list[Nemesis] = []
        try:
            for name in schedule:
                leader = whole(tc, HEAL_BOUND)
                ready = time.monotonic()
                wait_for(lambda: workload.acked_by(leader.name, ready), 30, "writes on the leader")  # noqa: B023
                pm = leader.postmaster_pid()
                start = time.monotonic()
                fault = nemeses.all()[name](leader)
                hold(tc, name, leader, pm)
                heal = time.monotonic()
                fault.heal()
                healed_at: float | None = None
                try:
                    now_leader = whole(tc, HEAL_BOUND)
                    wait_for(lambda: workload.acked_by(now_leader.name, heal), 30,  # noqa: B023
                             "writes after healing")
                    healed_at = time.monotonic()
                finally:
                    record.append(Nemesis(f"{name}@{leader.name}", start, heal, healed_at))
        finally:
            workload.finish()
        end = time.monotonic()
        final = final_values(whole(tc, HEAL_BOUND))
        verdict = check(History(tuple(workload.ops), final, (), tuple(record), end), HEAL_BOUND)
        print(f"\nchaos short run, synchronous mode, seed {SEED}:\n{verdict.summary()}")
        assert verdict.lost == ()
        assert verdict.discarded_by_rewind == ()
        assert verdict.dual_primary == ()
        assert verdict.failed_but_present == () and verdict.unknown_present == ()
        assert len(verdict.nemeses) == len(FAULTS) and verdict.all_healed
        assert verdict.acknowledged > 1000
    finally:
        if nemeses is not None:
            nemeses.resume_all()
        if tc is not None:
            tc.destroy()
        net.destroy()
