"""One chaos run: hosts in network namespaces, a 3-node cluster with emulated watchdogs, a workload, a
replication-lag sampler (tests/chaos/lag.py), a schedule of faults, and the checker's verdict.  Used by
tests/chaos/test_short.py and bench/chaos.py.

etcd is a single v2 member on host "etcd" (the default), or with Plan(etcd3=True)
a 3-member etcd with v2 off and client-certificate TLS, one member per host
"etcd1".."etcd3", which the nodes reach through their `etcd3:` section.

Plan(nodes=...) runs some nodes with Patroni instead (a cluster in the middle of a migration,
docs/migration.md): the first node starts alone so that it leads first, and only the nemeses that
do not need hasup's own processes apply (MIXED_KINDS).  The Patroni nodes get the emulated device
too, which Patroni cannot open: they run unprotected, as Patroni does without a device.

After each fault is healed the cluster must be whole again within the heal
bound: a writable leader, every replica streaming (in synchronous mode also
a synchronous standby that PostgreSQL waits on), and writes acknowledged
on the leader.  A node that a fault left down (SIGKILL, a watchdog reset,
a supervisor that gave up) is restarted first, as systemd would.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.chaos.history import History, LagSample, Nemesis, Rewind, Verdict, check
from tests.chaos.lag import LagSampler
from tests.chaos.nemesis import MIXED_KINDS, Fault, Nemeses, kinds_for
from tests.chaos.workload import Workload, create_table, final_values
from tests.harness import Node, TestCluster, become_subreaper, wait_for
from tests.harness.emulators import Emulators
from tests.harness.etcd3 import Etcd3Cluster
from tests.harness.netns import Network


@dataclass(frozen=True)
class Timing:
    ttl: int
    loop_wait: int
    retry_timeout: int
    safety_margin: int  # every node has an emulated watchdog


ETCD3_MEMBERS = 3
FAST = Timing(10, 1, 3, 3)  # the short run in `make test`: ttl 10 like the other integration tests
# docs/chaos.md's quoted Patroni figures were taken at ttl 20 / loop_wait 2 / retry_timeout 4.
COMPARISON = Timing(20, 2, 4, 5)


@dataclass
class Plan:
    synchronous: bool
    faults: list[str]
    seed: int
    timing: Timing = FAST
    heal_bound: float = 60.0
    etcd3: bool = False  # the 3-member v3 TLS etcd (hosts etcd1..etcd3) instead of the single v2 etcd
    nodes: tuple[str, ...] = ("hasup", "hasup", "hasup")  # what runs each node: "hasup" or "patroni"

    @property
    def mixed(self) -> bool:
        return any(kind != "hasup" for kind in self.nodes)

    def catalogue(self) -> tuple[str, ...]:
        """The nemeses that apply to this plan's etcd and nodes."""
        return tuple(k for k in kinds_for(self.etcd3) if not self.mixed or k in MIXED_KINDS)

    def etcd_hosts(self) -> list[str]:
        return [f"etcd{i + 1}" for i in range(ETCD3_MEMBERS)] if self.etcd3 else ["etcd"]

    def dcs(self) -> dict[str, object]:
        t = self.timing
        return {"ttl": t.ttl, "loop_wait": t.loop_wait, "retry_timeout": t.retry_timeout,
                "maximum_lag_on_failover": 1048576, "synchronous_mode": self.synchronous,
                "postgresql": {"use_pg_rewind": True, "use_slots": False}}


@dataclass
class FaultRecord:
    name: str
    target: str
    start: float
    heal: float
    healed_at: float | None
    notes: list[str] = field(default_factory=list)
    reacted: bool = True  # the cluster did what the fault's hold waits for (a new leader, a fence) in time


@dataclass
class Result:
    plan: Plan
    verdict: Verdict
    faults: list[FaultRecord]
    seconds: float
    lag: tuple[LagSample, ...] = ()  # the replication lag sampled on the primaries throughout the run


def schedule(catalogue: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` faults: the catalogue shuffled again and again, so every kind comes up as often as any other."""
    out: list[str] = []
    while len(out) < count:
        block = list(catalogue)
        rng.shuffle(block)
        out.extend(block)
    return out[:count]


def sync_standby(tc: TestCluster, leader: Node) -> str | None:
    value = json.loads(tc.etcd.value(tc.key("sync")) or "{}")
    return value.get("sync_standby") if value.get("leader") == leader.name else None


def whole(tc: TestCluster, timeout: float, synchronous: bool) -> Node:
    """A writable leader, every replica streaming and registered, and in synchronous mode a standby
    named in the sync key that PostgreSQL waits on."""
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(1.0, deadline - time.monotonic())
    leader = tc.wait_leader(timeout)
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], left())
    # Every member registered again (a node cut from etcd loses its member key after ttl), and every
    # REST API answering (a replaced api worker takes a moment to listen again).
    wait_for(lambda: all(tc.member(n.name).get("state") == "running" for n in tc.nodes), left(),
             "every member key back, running")
    wait_for(lambda: all(n.api("/liveness")[0] == 200 for n in tc.nodes), left(), "every REST API answering")
    if synchronous:
        standby = wait_for(lambda: sync_standby(tc, leader), left(), "a sync standby")
        wait_for(lambda: leader.sql("SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                                    standby) == [("sync",)], left(), "PostgreSQL waiting on it")
    return leader


def restart_down_nodes(tc: TestCluster) -> list[str]:
    restarted = []
    for node in tc.nodes:
        if node.pid is None:
            wait_for(lambda n=node: not n.processes(), 30, f"{node.name}'s processes to be gone")  # type: ignore[misc]
            node.start()
            restarted.append(node.name)
    return restarted


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def rewinds(tc: TestCluster, wall_minus_mono: float) -> list[Rewind]:
    """Every pg_rewind that changed a node's data, from the nodes' logs, on the monotonic clock."""
    found = []
    for node in tc.nodes:
        for line in node.log_text().splitlines():
            m = LOG_TIME.match(line)
            if m and "pg_rewind from " in line and "failed" not in line and "no rewind required" not in line:
                wall = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                found.append(Rewind(node.name, wall + int(m.group(2)) / 1000 - wall_minus_mono))
    return found


def watchdog_resets(emulators: Emulators, tc: TestCluster, since_wall: float) -> list[str]:
    return [n.name for n in tc.nodes
            if any(e["event"] == "fired" and e["wall"] > since_wall and e.get("killed") for e in emulators.events(n))]


def one_fault(nemeses: Nemeses, workload: Workload, name: str, inject: Callable[[Node], Fault],
              plan: Plan) -> FaultRecord:
    tc = nemeses.tc
    leader = whole(tc, plan.heal_bound, plan.synchronous)
    ready = time.monotonic()
    wait_for(lambda: workload.acked_by(leader.name, ready), 30, "writes on the leader")
    start, start_wall = time.monotonic(), time.time()
    try:
        fault = inject(leader)
    except AssertionError as exc:  # e.g. the worker to freeze was not there: nothing was injected
        return FaultRecord(name, leader.name, start, start, time.monotonic(), [f"not injected: {exc}"],
                           reacted=False)
    record = FaultRecord(fault.name, fault.target, start, start, None, fault.notes)
    try:
        fault.hold()
    except AssertionError as exc:  # the cluster did not react as the fault's hold expected
        record.notes.append(str(exc))
        record.reacted = False
    record.heal = time.monotonic()
    fault.heal()
    try:
        record.notes.extend(f"watchdog reset {n}" for n in watchdog_resets(nemeses.emulators, tc, start_wall))
        record.notes.extend(f"restarted {n}" for n in restart_down_nodes(tc))
        now_leader = whole(tc, plan.heal_bound, plan.synchronous)
        wait_for(lambda: workload.acked_by(now_leader.name, record.heal), 30, "writes after healing")
        record.healed_at = time.monotonic()
    except AssertionError as exc:
        record.notes.append(str(exc))
    return record


def run(plan: Plan, say: Callable[[str], None] = print) -> Result:
    unknown = sorted(set(plan.faults) - set(plan.catalogue()))
    if unknown:
        raise ValueError(f"nemeses {', '.join(unknown)} do not apply to "
                         + ("a cluster with Patroni nodes: they need hasup's own processes" if plan.mixed else
                            "the etcd3 cluster" if plan.etcd3 else "a single etcd: they need Plan(etcd3=True)"))
    become_subreaper()
    rng = random.Random(plan.seed)
    net = Network(f"c{os.getpid() % 100000}")
    net.create([*plan.etcd_hosts(), "node1", "node2", "node3"])
    tc: TestCluster | None = None
    nemeses: Nemeses | None = None
    emulators: Emulators | None = None
    began = time.monotonic()
    wall_minus_mono = time.time() - time.monotonic()
    try:
        if plan.etcd3:
            base = tempfile.mkdtemp(prefix="hasup-test-")
            tc = TestCluster(3, dcs=plan.dcs(), base=base, network=net, etcd=Etcd3Cluster(base, network=net),
                             kinds=plan.nodes)
        else:
            tc = TestCluster(3, dcs=plan.dcs(), network=net, kinds=plan.nodes)
        emulators = Emulators(tc, plan.timing.safety_margin)
        tc.etcd.start()
        if plan.mixed:
            tc.nodes[0].start()
            tc.wait_leader(plan.heal_bound)
        create_table(tc.start_all())
        whole(tc, plan.heal_bound, plan.synchronous)
        nemeses = Nemeses(tc, net, rng, plan.synchronous, emulators)
        kinds = nemeses.all()
        workload = Workload(tc.nodes)
        lag = LagSampler(tc.nodes)
        workload.start()
        lag.start()
        records: list[FaultRecord] = []
        try:
            for i, name in enumerate(plan.faults):
                record = one_fault(nemeses, workload, name, kinds[name], plan)
                records.append(record)
                say(f"[{i + 1}/{len(plan.faults)}] {name}@{record.target}: "
                    + (f"healed in {record.healed_at - record.heal:.1f}s" if record.healed_at else "NOT healed")
                    + (f" ({'; '.join(record.notes)})" if record.notes else ""))
                if record.healed_at is None:
                    break  # a cluster that did not heal is the finding: later faults would only blur it
        finally:
            lag.stop.set()  # both stop at once, even if a writer's thread turns out stuck
            workload.finish()
            lag.finish()
        end = time.monotonic()
        # Healed or not, the last word on what survived is the primary the cluster ends with.
        final = final_values(whole(tc, 3 * plan.heal_bound, plan.synchronous))
        history = History(tuple(workload.ops), final, tuple(rewinds(tc, wall_minus_mono)),
                          tuple(Nemesis(f"{r.name}@{r.target}", r.start, r.heal, r.healed_at) for r in records), end,
                          tuple(lag.samples))
        return Result(plan, check(history, plan.heal_bound), records, time.monotonic() - began, history.lag)
    except BaseException:
        # The nodes' logs are the only account of why the cluster did not heal, and destroy() deletes them.
        if tc is not None:
            print(tc.log_tails(120), file=sys.stderr)
        raise
    finally:
        if nemeses is not None:
            nemeses.resume_all()
        if tc is not None:
            tc.destroy()
        if emulators is not None:
            emulators.stop()
        net.destroy()
