"""Failover benchmark: write availability and lost writes across leader faults.

A prober inserts a sequence value every 20 ms into whichever node accepts
writes and records each acknowledged value.  For each fault we measure the
longest gap between acknowledged writes and count acknowledged values that
the healed cluster no longer has.  (The footprint at rest is bench/footprint.py's.)

Every supervisor installed in the venv (hasup, and Patroni when present) runs
the same faults on a cluster of its own, one after the other:

    python bench/failover.py [--runs 3] [--faults sigterm,sigkill_tree,switchover_api] [--supervisor all]

Each fault writes its own result file: bench/results/failover-<fault>-<supervisor>.json.  Settings: ttl 30,
loop_wait 10, retry_timeout 10 (Patroni's defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import record, supervisors  # noqa: E402
from tests.harness import Node, TestCluster, become_subreaper, wait_for  # noqa: E402
from tests.harness.prober import INTERVAL, longest_gap, lost_writes, start_prober  # noqa: E402

DCS: dict[str, Any] = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576,
       "postgresql": {"use_pg_rewind": True, "use_slots": False}}
FAULTS = ("sigterm", "sigkill_tree", "switchover", "switchover_api")
AFTER_SWITCH = 3.0  # seconds of writes kept after the first one on the new leader, so the gap window is whole


# -- faults -------------------------------------------------------------------------


def lease_left(c: TestCluster) -> float:
    node = c.etcd.key(c.key("leader")) or {}
    return float(node.get("ttl", 0))


def switchover_api(leader: Node, target: Node) -> tuple[int, str]:
    """POST /switchover on the leader, as an operator would; returns when the leader answers."""
    body = json.dumps({"leader": leader.name, "candidate": target.name}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{leader.api_port}/switchover", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=60) as resp:
        return resp.status, resp.read().decode()


def inject(c: TestCluster, kind: str, leader: Node) -> dict[str, Any]:
    target = next(n for n in c.nodes if n is not leader)
    if kind == "sigterm":
        leader.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    elif kind == "switchover":  # as patronictl does when the REST call is not available
        c.etcd.put(c.key("failover"), json.dumps({"leader": leader.name, "member": target.name}))
    elif kind == "switchover_api":
        started = time.monotonic()
        answer = switchover_api(leader, target)
        return {"api_call_s": round(time.monotonic() - started, 3), "api_answer": answer}
    else:
        leader.kill_tree()
    return {}


def one_fault(c: TestCluster, kind: str, run: int) -> dict[str, Any]:
    leader = c.wait_leader(120)
    others = [n for n in c.nodes if n is not leader]
    c.wait_streaming(leader, others, 120)
    prober, thread = start_prober(c.nodes, run * 10_000_000)  # values unique across runs
    wait_for(lambda: len(prober.acked) > 100, 30, "the prober to write")
    left = lease_left(c)
    fault_at = time.monotonic()
    extra = inject(c, kind, leader)
    new = c.wait_leader(DCS["ttl"] + 60, exclude=leader.name)
    wait_for(lambda: any(t > fault_at and n == new.name for _, t, n in prober.acked), 30, "writes on the new leader")
    time.sleep(AFTER_SWITCH)
    prober.stop.set()
    thread.join(10)
    if kind == "sigterm" and leader.proc is not None:
        leader.proc.wait(60)
    gap = longest_gap(prober.acked, fault_at - 1, time.monotonic())
    last_old = max((t for _, t, n in prober.acked if n == leader.name), default=fault_at)
    first_new = min(t for _, t, n in prober.acked if n == new.name and t > fault_at)
    lost = lost_writes(prober, new)
    if not kind.startswith("switchover"):
        leader.start()
    c.wait_streaming(new, [n for n in c.nodes if n is not new], 180)
    return {"fault": kind, "old_leader": leader.name, "new_leader": new.name, "longest_gap_s": round(gap, 3),
            "last_ack_on_old_after_fault_s": round(last_old - fault_at, 3),
            "first_ack_on_new_after_fault_s": round(first_new - fault_at, 3),
            "lease_left_s": left, "acked": len(prober.acked), "lost": len(lost), "lost_values": lost[:20], **extra}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    gaps = [r["longest_gap_s"] for r in runs]
    return {"max_gap_s": max(gaps), "median_gap_s": statistics.median(gaps), "lost": sum(r["lost"] for r in runs)}


# -- one supervisor ------------------------------------------------------------------


def settings(runs: int) -> dict[str, Any]:
    return {"dcs": DCS, "nodes": 3, "etcd": "one member, v2 API", "replication": "asynchronous",
            "prober_interval_s": INTERVAL, "runs": runs, "after_switch_s": AFTER_SWITCH}


def bench(kind: str, faults: list[str], args: argparse.Namespace) -> None:
    who = supervisors.describe(kind)
    with supervisors.running(kind), TestCluster(3, dcs=DCS) as c:
        leader = c.start_all(180)
        leader.sql("CREATE TABLE bench_writes (v bigint PRIMARY KEY)")
        for fault in faults:
            head = record.header("failover", fault, who, settings(args.runs))
            runs: list[dict[str, Any]] = []
            for _ in range(args.runs):
                r = one_fault(c, fault, run=len(runs) + 1 + 100 * faults.index(fault))
                print(json.dumps(r), flush=True)
                runs.append(r)
            record.save(f"failover-{fault}-{kind}.json", head, {"runs": runs, "summary": summary(runs)}, args.out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--faults", default="sigterm,sigkill_tree,switchover_api",
                    help="comma-separated: sigterm, sigkill_tree, switchover (through the failover key), "
                         "switchover_api (POST /switchover)")
    ap.add_argument("--supervisor", default="all", help="all (every installed one), hasup, patroni, or both by comma")
    ap.add_argument("--out", default=record.RESULTS)
    args = ap.parse_args()
    faults = args.faults.split(",")
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        ap.error(f"unknown faults: {', '.join(unknown)}")
    become_subreaper()
    for kind in supervisors.chosen(args.supervisor):
        bench(kind, faults, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
