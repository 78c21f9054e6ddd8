"""Hang benchmark (issue 4): a frozen PostgreSQL and a frozen supervisor+election on the leader.

A prober writes every 20 ms to whichever node accepts writes.  Per fault we
record the time from the freeze to the first write acknowledged by a new
leader, how often writes came back to a node after another had taken them
(two writable nodes: must be 0), the acknowledged writes the new leader
lacks, and, for the frozen supervisor, how long before the leader key's
expiry minus safety_margin the emulated watchdog fired.

    python bench/hangs.py --profile tight --faults freeze_pg,freeze_tree --runs 5
    python bench/hangs.py --profile defaults --faults freeze_pg --runs 3 [--sync]
    python bench/hangs.py --profile defaults --pgbench-minutes 10   # a busy primary is never fenced
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.harness import (  # noqa: E402
    PG_BIN,
    SUPERUSER_PASSWORD,
    TestCluster,
    become_subreaper,
    descendants,
    kill_pids,
    reap_zombies,
    wait_for,
)
from tests.harness.emulators import Emulators  # noqa: E402
from tests.harness.prober import lost_writes, start_prober, writer_runs  # noqa: E402

PROFILES = {
    "tight": ({"ttl": 10, "loop_wait": 2, "retry_timeout": 3}, 3),
    "defaults": ({"ttl": 30, "loop_wait": 10, "retry_timeout": 10}, 5),
}


def expiry(key: dict[str, object] | None) -> float | None:
    if not key or not isinstance(key.get("expiration"), str):
        return None
    return datetime.datetime.fromisoformat(str(key["expiration"]).replace("Z", "+00:00")).timestamp()


def one_fault(c: TestCluster, emu: Emulators, kind: str, run: int, margin: int) -> dict[str, object]:
    leader = c.wait_leader(120)
    others = [n for n in c.nodes if n is not leader]
    c.wait_streaming(leader, others, 120)
    prober, thread = start_prober(c.nodes, run * 10_000_000)
    wait_for(lambda: len(prober.acked) > 100, 30, "the prober to write")
    key_before = c.etcd.key(c.key("leader"))
    fences_before = leader.log_text().count("fencing PostgreSQL:")
    if kind == "freeze_pg":
        postmaster = leader.postmaster_pid()
        assert postmaster
        frozen = [postmaster, *descendants(postmaster)]
    else:  # freeze_tree: the supervisor and election, nothing left that could renew or heal
        frozen = [p for p in (leader.pid, leader.worker_pid("election")) if p]
    kill_pids(frozen, signal.SIGSTOP)
    fault_at, fault_wall = time.monotonic(), time.time()
    new = c.wait_leader(120, exclude=leader.name)
    first_new = wait_for(lambda: next((t for _, t, n in prober.acked if n == new.name and t > fault_at), None), 30,
                         "writes on the new leader")
    time.sleep(2)  # writes after the switch, so a write coming back to the old node would show
    prober.stop.set()
    thread.join(10)
    out: dict[str, object] = {
        "fault": kind, "old_leader": leader.name, "new_leader": new.name,
        "fault_to_writable_s": round(first_new - fault_at, 3),
        "dual_writable": len(writer_runs(prober.acked)) - len(set(writer_runs(prober.acked))),
        "acked": len(prober.acked), "lost": len(lost_writes(prober, new)),
    }
    if kind == "freeze_tree":
        fired = wait_for(lambda: next((e for e in emu.events(leader) if e["event"] == "fired"
                                       and e["wall"] > fault_wall), None), 30, "the emulated watchdog to fire")
        key_after = c.etcd.key(c.key("leader"))
        expiries = [e for e in (expiry(key_before), expiry(key_after) if key_after and key_after.get("value") ==
                                leader.name else None) if e is not None]
        out["watchdog_fired_before_expiry_minus_margin_s"] = round(max(expiries) - margin - fired["wall"], 3)
    kill_pids(frozen, signal.SIGCONT)
    if kind == "freeze_tree":
        wait_for(lambda: not leader.processes(), 20, "the reset node's processes to be gone")
        reap_zombies()  # a reset node leaves its dead to us (the subreaper); PostgreSQL sees a zombie as alive
        leader.proc = None
        leader.start()
    c.wait_streaming(new, [n for n in c.nodes if n is not new], 180)
    out["fences"] = leader.log_text().count("fencing PostgreSQL:") - fences_before
    return out


def pgbench_run(c: TestCluster, minutes: float) -> dict[str, object]:
    leader = c.wait_leader(120)
    env = {**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD}
    args = ["-h", "127.0.0.1", "-p", str(leader.pg_port), "-U", "postgres"]
    subprocess.run([f"{PG_BIN}/pgbench", "-i", "-s", "20", "-q", *args, "postgres"], env=env, check=True,
                   capture_output=True)
    fences_before = sum(n.log_text().count("fencing PostgreSQL:") for n in c.nodes)
    failures_before = leader.log_text().count("probe failed")
    started = time.monotonic()
    result = subprocess.run([f"{PG_BIN}/pgbench", "-c", "8", "-j", "2", "-T", str(int(minutes * 60)), "-P", "60",
                             *args, "postgres"], env=env, capture_output=True, text=True)
    tps = next((line for line in result.stdout.splitlines() if line.startswith("tps")), "")
    return {"minutes": minutes, "clients": 8, "took_s": round(time.monotonic() - started, 1), "tps": tps,
            "fences": sum(n.log_text().count("fencing PostgreSQL:") for n in c.nodes) - fences_before,
            "probe_failures_logged_on_leader": leader.log_text().count("probe failed") - failures_before,
            "leader_changed": c.leader_name() != leader.name}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", choices=sorted(PROFILES), default="tight")
    ap.add_argument("--faults", default="freeze_pg,freeze_tree", help="comma-separated: freeze_pg, freeze_tree")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pgbench-minutes", type=float, default=0.0, help="instead of faults: a busy primary")
    ap.add_argument("--sync", action="store_true", help="synchronous_mode: on (lost writes must be 0)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    become_subreaper()
    timing, margin = PROFILES[args.profile]
    dcs = {**timing, "maximum_lag_on_failover": 1048576, "synchronous_mode": args.sync,
           "postgresql": {"use_pg_rewind": True, "use_slots": False}}
    results: dict[str, object] = {"profile": args.profile, "settings": dcs, "safety_margin": margin,
                                  "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    c = TestCluster(3, dcs=dcs)
    c.etcd.start()
    emu = Emulators(c, margin)
    try:
        leader = c.start_all()
        leader.sql("CREATE TABLE bench_writes (v bigint PRIMARY KEY)")
        if args.pgbench_minutes:
            results["pgbench"] = pgbench_run(c, args.pgbench_minutes)
            print(json.dumps(results["pgbench"]), flush=True)
            name = f"hangs-pgbench-{args.profile}.json"
        else:
            runs = []
            for kind in args.faults.split(","):
                for _ in range(args.runs):
                    r = one_fault(c, emu, kind, len(runs) + 1, margin)
                    print(json.dumps(r), flush=True)
                    runs.append(r)
            results["runs"] = runs
            name = f"hangs-{args.profile}{'-sync' if args.sync else ''}.json"
    finally:
        c.destroy()
        emu.stop()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, name)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
