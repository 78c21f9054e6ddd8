"""Failover benchmark: write availability and lost writes across leader faults, plus footprint.

A prober inserts a sequence value every 20 ms into whichever node accepts
writes and records each acknowledged value.  For each fault we measure the
longest gap between acknowledged writes and count acknowledged values that
the healed cluster no longer has.  Also measured per node: summed RSS and
PSS of the hasup process tree (not PostgreSQL), and its CPU seconds over an
idle minute.

    python bench/failover.py [--runs 3] [--out bench/results]

Settings as the issue asks: ttl 30, loop_wait 10, retry_timeout 10.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.harness import Node, TestCluster, become_subreaper, cmdline, wait_for  # noqa: E402
from tests.harness.prober import longest_gap, lost_writes, start_prober  # noqa: E402

DCS = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576,
       "postgresql": {"use_pg_rewind": True, "use_slots": False}}


def tree_pids(node: Node) -> list[int]:
    marker = f"{node.scope}/{node.name}"
    return [p for p in node.processes() if cmdline(p).startswith("hasup") and marker in cmdline(p)
            or p == node.pid]


def memory_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def lease_left(c: TestCluster) -> float:
    node = c.etcd.key(c.key("leader")) or {}
    return float(node.get("ttl", 0))


def one_fault(c: TestCluster, kind: str, run: int) -> dict[str, object]:
    leader = c.wait_leader(120)
    others = [n for n in c.nodes if n is not leader]
    c.wait_streaming(leader, others, 120)
    prober, thread = start_prober(c.nodes, run * 10_000_000)  # values unique across runs
    wait_for(lambda: len(prober.acked) > 100, 30, "the prober to write")
    left = lease_left(c)
    api_call_s, api_answer = 0.0, (0, "")
    fault_at = time.monotonic()
    if kind == "sigterm":
        leader.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    elif kind == "switchover":  # as patronictl does when the REST call is not available
        target = next(n for n in c.nodes if n is not leader)
        c.etcd.put(c.key("failover"), json.dumps({"leader": leader.name, "member": target.name}))
    elif kind == "switchover_api":  # POST /switchover on the leader, timed until it answers
        target = next(n for n in c.nodes if n is not leader)
        body = json.dumps({"leader": leader.name, "candidate": target.name}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{leader.api_port}/switchover", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=60) as resp:
            api_answer = (resp.status, resp.read().decode())
        api_call_s = time.monotonic() - fault_at
    else:
        leader.kill_tree()
    new = c.wait_leader(DCS["ttl"] + 60, exclude=leader.name)
    wait_for(lambda: any(t > fault_at and n == new.name for _, t, n in prober.acked), 30, "writes on the new leader")
    time.sleep(3)  # a few seconds of writes after the switch, for the gap window
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
            "lease_left_s": left, "acked": len(prober.acked), "lost": len(lost), "lost_values": lost[:20],
            **({"api_call_s": round(api_call_s, 3), "api_answer": api_answer} if kind == "switchover_api" else {})}


def footprint(c: TestCluster) -> dict[str, object]:
    out: dict[str, object] = {}
    pids = {n.name: tree_pids(n) for n in c.nodes}
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    time.sleep(60)  # an idle minute, measured as it passes
    for n in c.nodes:
        rss = pss = 0
        for pid in pids[n.name]:
            r, p = memory_kib(pid)
            rss, pss = rss + r, pss + p
        per_process = {cmdline(p).split(" ")[1] + (" worker" if "api worker" in cmdline(p) else ""):
                       round(memory_kib(p)[1] / 1024, 1) for p in pids[n.name]}
        out[n.name] = {"processes": len(pids[n.name]), "rss_mib": round(rss / 1024, 1), "pss_mib_by_role": per_process,
                       "pss_mib": round(pss / 1024, 1),
                       "cpu_s_per_idle_min": round(cpu_seconds(pids[n.name]) - before[n.name], 3)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--faults", default="sigterm,sigkill_tree",
                    help="comma-separated: sigterm, sigkill_tree, switchover (through the failover key), "
                         "switchover_api (POST /switchover)")
    ap.add_argument("--skip-footprint", action="store_true")
    ap.add_argument("--footprint-only", action="store_true", help="measure memory and idle CPU, no faults")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    become_subreaper()
    results: dict[str, object] = {"settings": DCS, "machine": {"cpus": os.cpu_count(), "python":
                                                                platform.python_version()}}
    with TestCluster(3, dcs=DCS) as c:
        for node in c.nodes:
            node.start()
        leader = c.wait_leader(180)
        c.wait_streaming(leader, [n for n in c.nodes if n is not leader], 180)
        leader.sql("CREATE TABLE bench_writes (v bigint PRIMARY KEY)")
        if not args.skip_footprint:
            results["footprint"] = footprint(c)
            print(json.dumps(results["footprint"], indent=2), flush=True)
        if args.footprint_only:
            return 0
        runs = []
        kinds = args.faults.split(",")
        for kind in kinds:
            for _ in range(args.runs):
                r = one_fault(c, kind, len(runs) + 1)
                print(json.dumps(r), flush=True)
                runs.append(r)
        results["runs"] = runs
        summary = {}
        for kind in kinds:
            gaps = [r["longest_gap_s"] for r in runs if r["fault"] == kind]
            summary[kind] = {"max_gap_s": max(gaps), "median_gap_s": statistics.median(gaps),  # type: ignore
                             "lost": sum(r["lost"] for r in runs if r["fault"] == kind)}  # type: ignore
        results["summary"] = summary
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "failover.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results["summary"], indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
