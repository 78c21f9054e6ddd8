"""Hang benchmark: a frozen PostgreSQL and a frozen supervisor+election on the leader.

A prober writes every 20 ms to whichever node accepts writes.  Per fault we
record the time from the freeze to the first write acknowledged by a new
leader, how often writes came back to a node after another had taken them
(two writable nodes: must be 0), the acknowledged writes the new leader
lacks, and, for the frozen supervisor, how long before the leader key's
expiry minus safety_margin the emulated watchdog fired.

    python bench/hangs.py --profile tight --faults freeze_pg,freeze_tree --runs 5
    python bench/hangs.py --profile defaults --faults freeze_pg --runs 5 --supervisor hasup,patroni
    python bench/hangs.py --profile defaults --faults freeze_pg --runs 3 --sync
    python bench/hangs.py --profile defaults --pgbench-minutes 10   # a busy primary is never fenced

hasup's nodes each have an emulated watchdog, and run with the software fence off
(`watchdog.software_fence: false`): with it on, the fence would stop PostgreSQL
before the device could fire, and the device's margin, which this benchmark
measures, would never show (the fence's own timing is
tests/integration/test_software_fence.py's).  Patroni runs only freeze_pg at
the defaults, without a watchdog (it cannot use hasup's emulator, and ttl 10
is below its minimum): the figure it gives is how long its loop waits on a
hung database.  Each mode writes its own result file:
bench/results/hangs-<fault>-<profile>[-sync]-<supervisor>.json, and
hangs-pgbench-<profile>-<supervisor>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import record, supervisors  # noqa: E402
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
from tests.harness.prober import INTERVAL, lost_writes, start_prober, writer_runs  # noqa: E402

PROFILES = {
    "tight": ({"ttl": 10, "loop_wait": 2, "retry_timeout": 3}, 3),
    "defaults": ({"ttl": 30, "loop_wait": 10, "retry_timeout": 10}, 5),
}
FAULTS = ("freeze_pg", "freeze_tree")
PGBENCH = {"scale": 20, "clients": 8, "threads": 2}
FENCE_LOGGED = "fencing PostgreSQL:"  # what hasup's supervisor logs when it fences
PROBE_FAILED_LOGGED = "probe failed"  # what hasup's postgres worker logs


def expiry(key: dict[str, Any] | None) -> float | None:
    if not key or not isinstance(key.get("expiration"), str):
        return None
    return datetime.datetime.fromisoformat(str(key["expiration"]).replace("Z", "+00:00")).timestamp()


def fences(node: Any) -> int:
    return int(node.log_text().count(FENCE_LOGGED))


def lease_after_freeze(c: TestCluster, leader: Any) -> float | None:
    """The leader key's expiry once no renewal can land any more: one the frozen election worker had in
    flight may reach etcd just after the freeze, so read until two reads 0.2 s apart agree."""
    def read() -> float | None:
        key = c.etcd.key(c.key("leader"))
        return expiry(key) if key and key.get("value") == leader.name else None
    last = (read(), time.monotonic())

    def settled() -> bool:
        nonlocal last
        if time.monotonic() - last[1] < 0.2:
            return False
        now = (read(), time.monotonic())
        same, last = now[0] == last[0], now
        return same
    wait_for(settled, 10, "the leader key to stop changing", 0.05)
    return last[0]


def watchdog_margin(emu: Emulators, leader: Any, expiries: list[float | None], fault_wall: float,
                    margin: int) -> float:
    """How long before the leader key's expiry minus safety_margin the emulated watchdog fired (>= 0)."""
    fired = wait_for(lambda: next((e for e in emu.events(leader) if e["event"] == "fired"
                                   and e["wall"] > fault_wall), None), 30, "the emulated watchdog to fire")
    assert fired is not None
    return round(max(e for e in expiries if e is not None) - margin - fired["wall"], 3)


def one_fault(c: TestCluster, emu: Emulators | None, kind: str, run: int, margin: int) -> dict[str, Any]:
    """One freeze.  The new leader's time is taken twice: when it holds the key and is out of recovery (polled
    every 0.2 s, for every supervisor), and when the prober's first write on it is acknowledged.  The prober's
    connection to a frozen server hangs until something kills it: hasup's fence does; under Patroni nothing
    does until the benchmark resumes the server, so there is no first write to time."""
    leader = c.wait_leader(120)
    others = [n for n in c.nodes if n is not leader]
    c.wait_streaming(leader, others, 120)
    prober, thread = start_prober(c.nodes, run * 10_000_000)
    wait_for(lambda: len(prober.acked) > 100, 30, "the prober to write")
    key_before = c.etcd.key(c.key("leader"))
    fences_before = fences(leader)
    if kind == "freeze_pg":
        postmaster = leader.postmaster_pid()
        assert postmaster
        frozen = [postmaster, *descendants(postmaster)]
    else:  # freeze_tree: the supervisor and election, nothing left that could renew or heal
        frozen = [p for p in (leader.pid, leader.worker_pid("election")) if p]
    kill_pids(frozen, signal.SIGSTOP)
    fault_at, fault_wall = time.monotonic(), time.time()
    lease_frozen = lease_after_freeze(c, leader) if kind == "freeze_tree" else None
    new = c.wait_leader(120, exclude=leader.name)
    out: dict[str, Any] = {"fault": kind, "old_leader": leader.name, "new_leader": new.name,
                           "fault_to_leader_s": round(time.monotonic() - fault_at, 3), "fault_to_writable_s": None}
    if emu is not None:  # hasup: the fence frees the prober
        first_new = wait_for(lambda: next((t for _, t, n in prober.acked if n == new.name and t > fault_at), None),
                             30, "writes on the new leader")
        assert first_new is not None
        out["fault_to_writable_s"] = round(first_new - fault_at, 3)
        time.sleep(2)  # writes after the switch, so a write coming back to the old node would show
    prober.stop.set()
    thread.join(10)
    if kind == "freeze_tree" and emu is not None:
        out["watchdog_fired_before_expiry_minus_margin_s"] = watchdog_margin(
            emu, leader, [expiry(key_before), lease_frozen], fault_wall, margin)
    kill_pids(frozen, signal.SIGCONT)
    thread.join(30)  # a write stuck on the frozen server completes (or fails) once it resumes
    runs = writer_runs(prober.acked)
    out.update({"dual_writable": len(runs) - len(set(runs)), "acked": len(prober.acked),
                "lost": len(lost_writes(prober, new))})
    if kind == "freeze_tree":
        wait_for(lambda: not leader.processes(), 20, "the reset node's processes to be gone")
        reap_zombies()  # a reset node leaves its dead to us (the subreaper); PostgreSQL sees a zombie as alive
        leader.proc = None
        leader.start()
    c.wait_streaming(new, [n for n in c.nodes if n is not new], 180)
    if emu is not None:
        out["fences"] = fences(leader) - fences_before
    return out


def tps_of(stdout: str) -> float | None:
    m = re.search(r"^tps = ([\d.]+)", stdout, re.M)
    return round(float(m.group(1)), 1) if m else None


def pgbench_run(c: TestCluster, minutes: float) -> dict[str, Any]:
    leader = c.wait_leader(120)
    env = {**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD}
    args = ["-h", "127.0.0.1", "-p", str(leader.pg_port), "-U", "postgres"]
    subprocess.run([f"{PG_BIN}/pgbench", "-i", "-s", str(PGBENCH["scale"]), "-q", *args, "postgres"], env=env,
                   check=True, capture_output=True)
    fences_before = sum(fences(n) for n in c.nodes)
    failures_before = leader.log_text().count(PROBE_FAILED_LOGGED)
    started = time.monotonic()
    result = subprocess.run([f"{PG_BIN}/pgbench", "-c", str(PGBENCH["clients"]), "-j", str(PGBENCH["threads"]),
                             "-T", str(int(minutes * 60)), "-P", "60", *args, "postgres"], env=env,
                            capture_output=True, text=True)
    return {"minutes": minutes, "took_s": round(time.monotonic() - started, 1), "tps": tps_of(result.stdout),
            "pgbench_exit": result.returncode,
            "fences": sum(fences(n) for n in c.nodes) - fences_before,
            "probe_failures_logged_on_leader": leader.log_text().count(PROBE_FAILED_LOGGED) - failures_before,
            "leader_changed": c.leader_name() != leader.name}


def settings(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    timing, margin = PROFILES[args.profile]
    dcs = {**timing, "maximum_lag_on_failover": 1048576, "synchronous_mode": args.sync,
           "postgresql": {"use_pg_rewind": True, "use_slots": False}}
    return {"profile": args.profile, "dcs": dcs, "nodes": 3, "etcd": "one member, v2 API",
            "watchdog": "emulated" if kind == "hasup" else "off",
            "software_fence": False if kind == "hasup" else None,
            "safety_margin": margin if kind == "hasup" else None, "prober_interval_s": INTERVAL, "runs": args.runs,
            **({"pgbench": {**PGBENCH, "minutes": args.pgbench_minutes}} if args.pgbench_minutes else {})}


def bench(kind: str, faults: list[str], args: argparse.Namespace) -> None:
    conf = settings(args, kind)
    who = supervisors.describe(kind)
    suffix = f"{args.profile}{'-sync' if args.sync else ''}-{kind}"
    head = record.header("hangs", "pgbench" if args.pgbench_minutes else faults[0], who, conf)
    c = TestCluster(3, dcs=conf["dcs"])
    with supervisors.running(kind):
        c.etcd.start()
        emu = Emulators(c, conf["safety_margin"]) if kind == "hasup" else None
        if kind == "hasup":
            for node in c.nodes:
                node.extra["watchdog.software_fence"] = False  # the device is what this measures
        try:
            leader = c.start_all()
            leader.sql("CREATE TABLE bench_writes (v bigint PRIMARY KEY)")
            if args.pgbench_minutes:
                result = pgbench_run(c, args.pgbench_minutes)
                print(json.dumps(result), flush=True)
                record.save(f"hangs-pgbench-{suffix}.json", head, {"pgbench": result}, args.out)
                return
            for fault in faults:
                head = record.header("hangs", fault, who, conf) if fault != faults[0] else head
                runs: list[dict[str, Any]] = []
                for _ in range(args.runs):
                    r = one_fault(c, emu, fault, run=len(runs) + 1 + 100 * faults.index(fault),
                                  margin=conf["safety_margin"] or 0)
                    print(json.dumps(r), flush=True)
                    runs.append(r)
                record.save(f"hangs-{fault}-{suffix}.json", head, {"runs": runs}, args.out)
        finally:
            c.destroy()
            if emu is not None:
                emu.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="tight")
    ap.add_argument("--faults", default="freeze_pg,freeze_tree", help="comma-separated: freeze_pg, freeze_tree")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pgbench-minutes", type=float, default=0.0, help="instead of faults: a busy primary")
    ap.add_argument("--sync", action="store_true", help="synchronous_mode: on (lost writes must be 0)")
    ap.add_argument("--supervisor", default="hasup", help="hasup, patroni, or both by comma (Patroni: freeze_pg "
                                                           "at the defaults only)")
    ap.add_argument("--out", default=record.RESULTS)
    args = ap.parse_args()
    faults = args.faults.split(",")
    if sorted(set(faults) - set(FAULTS)):
        ap.error(f"unknown faults in {args.faults}")
    kinds = supervisors.chosen(args.supervisor)
    if "patroni" in kinds and (faults != ["freeze_pg"] or args.profile != "defaults" or args.pgbench_minutes):
        ap.error("Patroni runs freeze_pg at the defaults only")
    become_subreaper()
    for kind in kinds:
        bench(kind, faults, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
