"""Failover benchmark: write availability and lost writes across leader faults, plus the idle footprint.

A prober inserts a sequence value every 20 ms into whichever node accepts
writes and records each acknowledged value.  For each fault we measure the
longest gap between acknowledged writes and count acknowledged values that
the healed cluster no longer has.  The footprint, per node: the summed RSS,
PSS and USS of the supervisor's process tree (not PostgreSQL), its CPU
seconds over an idle minute, and the CPU PostgreSQL spent in that minute
(mostly answering the supervisor's probes).

Every supervisor installed in the venv (hasup, and Patroni when present) runs
the same faults on a cluster of its own, one after the other:

    python bench/failover.py [--runs 3] [--faults sigterm,sigkill_tree,switchover_api] [--supervisor all]
    python bench/failover.py --footprint-only
    python bench/failover.py --footprint-only --ttl 20 --loop-wait 2

Each mode writes its own result file: bench/results/footprint-<supervisor>.json
and failover-<fault>-<supervisor>.json.  Settings: ttl 30,
loop_wait 10, retry_timeout 10 (Patroni's defaults); --ttl, --loop-wait and
--retry-timeout change them, and the footprint's file name then says so
(footprint-<supervisor>-ttl20-lw2.json).
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
from tests.harness import Node, TestCluster, become_subreaper, cmdline, descendants, wait_for  # noqa: E402
from tests.harness.prober import INTERVAL, longest_gap, lost_writes, start_prober  # noqa: E402

DCS: dict[str, Any] = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576,
       "postgresql": {"use_pg_rewind": True, "use_slots": False}}
FAULTS = ("sigterm", "sigkill_tree", "switchover", "switchover_api")
IDLE_WINDOW = 60.0  # seconds: "CPU per idle minute" is measured over one whole minute
AFTER_SWITCH = 3.0  # seconds of writes kept after the first one on the new leader, so the gap window is whole


# -- footprint ----------------------------------------------------------------------


def postgres_pids(node: Node) -> set[int]:
    pm = node.postmaster_pid()
    return {pm, *descendants(pm)} if pm else set()


def supervisor_pids(node: Node) -> set[int]:
    """The supervisor's tree: every live process of the node that is not PostgreSQL."""
    return node.processes() - postgres_pids(node)


def memory_kib(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, USS) of one process; USS is what it alone holds (its private pages)."""
    rss = pss = uss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                kib = int(rest.split()[0]) if rest.strip() else 0
                if key == "Rss":
                    rss = kib
                elif key == "Pss":
                    pss = kib
                elif key in ("Private_Clean", "Private_Dirty"):
                    uss += kib
    except (OSError, ValueError, IndexError):
        pass
    return rss, pss, uss


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU of these processes and of the children they have reaped (a backend that
    exited, a helper a worker ran): measured at both ends of a window, the difference is the window's."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_role(pid: int) -> str:
    """A PostgreSQL process by what it does ("checkpointer", "walreceiver", "backend postgres", "postmaster");
    a client backend's title is "postgres: <cluster>: <user> <database> <client> <state>"."""
    words = cmdline(pid).split(" ")
    if len(words) < 3 or words[0] != "postgres:":
        return "postmaster"
    rest = words[2:] if words[1].endswith(":") else words[1:]  # with cluster_name set, it comes first
    aux = ("checkpointer", "background", "walwriter", "autovacuum", "logical", "startup", "walreceiver",
           "walsender", "archiver", "stats")
    return rest[0] if rest[0] in aux else f"backend {rest[0]}"


def cpu_by(pids_before: dict[int, str], pids_after: dict[int, str], before: dict[int, float],
           per_minute: float) -> dict[str, float]:
    """CPU seconds per idle minute by role; a process that came or went counts for what /proc still showed."""
    out: dict[str, float] = {}
    for pid, name in pids_after.items():
        out[name] = out.get(name, 0.0) + cpu_seconds({pid}) - before.get(pid, 0.0)
    for pid, name in pids_before.items():
        if pid not in pids_after:
            out.setdefault(name, 0.0)
    return {k: round(v * per_minute, 3) for k, v in sorted(out.items())}


def role(pid: int) -> str:
    """hasup names each process by role ("hasup: election main/node1"); Patroni is one `python patroni`."""
    line = cmdline(pid)
    if line.startswith("hasup: "):
        words = line.split(" ")
        return words[1] + (" worker" if words[1:3] == ["api", "worker"] else "")
    argv = line.split(" ")
    script = argv[1] if os.path.basename(argv[0]).startswith("python") and len(argv) > 1 else argv[0]
    return os.path.basename(script)


def footprint(c: TestCluster) -> dict[str, Any]:
    sup_before = {n.name: cpu_seconds(supervisor_pids(n)) for n in c.nodes}
    pg_before = {n.name: cpu_seconds(postgres_pids(n)) for n in c.nodes}
    roles_before = {n.name: {pid: role(pid) for pid in supervisor_pids(n)} for n in c.nodes}
    pg_roles_before = {n.name: {pid: postgres_role(pid) for pid in postgres_pids(n)} for n in c.nodes}
    each_before = {pid: cpu_seconds({pid}) for r in (*roles_before.values(), *pg_roles_before.values()) for pid in r}
    started = time.monotonic()
    time.sleep(IDLE_WINDOW)  # an idle minute, measured as it passes
    per_minute = 60.0 / (time.monotonic() - started)
    out: dict[str, Any] = {}
    for n in c.nodes:
        pids = supervisor_pids(n)
        sizes = {pid: memory_kib(pid) for pid in pids}
        out[n.name] = {
            "processes": len(pids),
            "rss_mib": round(sum(s[0] for s in sizes.values()) / 1024, 1),
            "pss_mib": round(sum(s[1] for s in sizes.values()) / 1024, 1),
            "uss_mib": round(sum(s[2] for s in sizes.values()) / 1024, 1),
            "pss_mib_by_role": {role(pid): round(s[1] / 1024, 1) for pid, s in sorted(sizes.items())},
            "cpu_s_per_idle_min": round((cpu_seconds(supervisor_pids(n)) - sup_before[n.name]) * per_minute, 3),
            "postgres_cpu_s_per_idle_min": round((cpu_seconds(postgres_pids(n)) - pg_before[n.name]) * per_minute,
                                                 3),
            "cpu_s_per_idle_min_by_role": cpu_by(roles_before[n.name], {pid: role(pid) for pid in pids},
                                                 each_before, per_minute),
            "postgres_cpu_s_per_idle_min_by_process": cpu_by(
                pg_roles_before[n.name], {pid: postgres_role(pid) for pid in postgres_pids(n)}, each_before,
                per_minute),
        }
    return out


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


def dcs_of(args: argparse.Namespace) -> dict[str, Any]:
    return {**DCS, "ttl": args.ttl, "loop_wait": args.loop_wait, "retry_timeout": args.retry_timeout}


def timing_suffix(args: argparse.Namespace) -> str:
    """"" at Patroni's defaults (the committed file names), else "-ttl20-lw2" (and "-rt5" for retry_timeout)."""
    out = ""
    if (args.ttl, args.loop_wait) != (DCS["ttl"], DCS["loop_wait"]) or args.retry_timeout != DCS["retry_timeout"]:
        out = f"-ttl{args.ttl}-lw{args.loop_wait}"
    if args.retry_timeout != DCS["retry_timeout"]:
        out += f"-rt{args.retry_timeout}"
    return out


def settings(runs: int, dcs: dict[str, Any] = DCS) -> dict[str, Any]:
    return {"dcs": dcs, "nodes": 3, "etcd": "one member, v2 API", "replication": "asynchronous",
            "prober_interval_s": INTERVAL, "runs": runs, "idle_window_s": IDLE_WINDOW,
            "after_switch_s": AFTER_SWITCH}


def bench(kind: str, faults: list[str], args: argparse.Namespace) -> None:
    who = supervisors.describe(kind)
    dcs = dcs_of(args)
    head = record.header("footprint", "idle", who, settings(args.runs, dcs))
    with supervisors.running(kind), TestCluster(3, dcs=dcs) as c:
        leader = c.start_all(180)
        leader.sql("CREATE TABLE bench_writes (v bigint PRIMARY KEY)")
        if not args.skip_footprint:
            nodes = footprint(c)
            print(json.dumps(nodes, indent=1), flush=True)
            record.save(f"footprint-{kind}{timing_suffix(args)}.json", head, {"nodes": nodes}, args.out)
        for fault in faults:
            head = record.header("failover", fault, who, settings(args.runs, dcs))
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
    ap.add_argument("--skip-footprint", action="store_true")
    ap.add_argument("--footprint-only", action="store_true", help="measure memory and idle CPU, no faults")
    ap.add_argument("--out", default=record.RESULTS)
    ap.add_argument("--ttl", type=int, default=DCS["ttl"], help="the cluster's ttl (default: Patroni's, 30)")
    ap.add_argument("--loop-wait", type=int, default=DCS["loop_wait"], help="loop_wait (default: Patroni's, 10)")
    ap.add_argument("--retry-timeout", type=int, default=DCS["retry_timeout"],
                    help="retry_timeout (default: Patroni's, 10)")
    args = ap.parse_args()
    if timing_suffix(args) and not args.footprint_only:
        ap.error("--ttl, --loop-wait and --retry-timeout go with --footprint-only: the failover results compare "
                 "at Patroni's defaults")
    faults = [] if args.footprint_only else args.faults.split(",")
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        ap.error(f"unknown faults: {', '.join(unknown)}")
    become_subreaper()
    for kind in supervisors.chosen(args.supervisor):
        bench(kind, faults, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
