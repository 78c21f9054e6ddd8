"""Footprint of a node: memory and CPU at rest, etcd load at rest, health-check throughput; hasup beside Patroni.

Every supervisor installed in the venv (hasup, and Patroni when present) gets a fresh 3-node cluster on
a single-member etcd (v2 API), and the same run measures each in turn:

1. an idle window at Patroni's defaults (ttl 30 / loop_wait 10): the memory of each node's supervisor
   tree (RSS, PSS, USS summed over its processes), the CPU that tree and PostgreSQL spend in the window,
   and the requests and writes etcd serves;
2. the same idle window at ttl 20 / loop_wait 2, set through `PATCH /config` as an operator would;
3. back at the defaults, `GET /primary` on the leader with wrk, the connection closed after each answer
   (as HAProxy's checks do) and kept alive, idle and while pgbench writes on the leader.

    python bench/footprint.py [--window 60] [--supervisor all] [--out bench/results]

Writes bench/results/footprint-<supervisor>.json (bench/record.py's header: commit, settings, machine)
and prints the table: the worst of the 3 nodes for each figure, the issue's target beside it.
`--table` prints the table again from the result files alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import record, supervisors  # noqa: E402
from bench.etcd_load import counted, metrics  # noqa: E402
from tests.harness import (  # noqa: E402
    PG_BIN,
    SUPERUSER_PASSWORD,
    Node,
    TestCluster,
    become_subreaper,
    cmdline,
    descendants,
    wait_for,
)

DEFAULTS = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10}
TIGHT = {"ttl": 20, "loop_wait": 2, "retry_timeout": 4}
DCS: dict[str, Any] = {**DEFAULTS, "maximum_lag_on_failover": 1048576,
                       "postgresql": {"use_pg_rewind": True, "use_slots": False}}
SETTLE = 15.0  # seconds after a start or a change of timing, so that no first-loop work is counted

# wrk reports latency percentiles with --latency; a Lua hook adds "Connection: close".
CLOSE_LUA = 'wrk.headers["Connection"] = "close"\n'
WRK = "wrk -t2 -c8"
PGBENCH = {"scale": 5, "clients": 4, "threads": 2}


def parse_wrk(out: str) -> dict[str, float]:
    def to_ms(value: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s)", value)
        assert m, value
        n = float(m.group(1))
        return {"us": n / 1000, "ms": n, "s": n * 1000}[m.group(2)]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    result: dict[str, float] = {"requests_per_s": float(rps.group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        if m:
            result[f"p{pct}_ms"] = round(to_ms(m.group(1)), 3)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    counts = [float(x) for x in sock.groups()] if sock else [0.0] * 4
    result["socket_errors"] = sum(counts)
    # A server that closes the connection after each answer (HTTP/1.0, as Patroni's) shows as read errors.
    for kind, n in zip(("connect", "read", "write", "timeout"), counts, strict=True):
        result[f"socket_errors_{kind}"] = n
    return result


def wrk(url: str, duration: int, close: bool) -> dict[str, float]:
    cmd = [*WRK.split(), f"-d{duration}s", "--latency", url]
    script = None
    if close:
        fd, script = tempfile.mkstemp(suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(CLOSE_LUA)
        cmd[1:1] = ["-s", script]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    finally:
        if script:
            os.unlink(script)
    return parse_wrk(out)


def under_load(leader: Node, seconds: int) -> subprocess.Popen[bytes]:
    """pgbench writing on the leader for `seconds`, started after its tables exist."""
    env = dict(os.environ, PGPASSWORD=SUPERUSER_PASSWORD)
    conn = ["-h", "127.0.0.1", "-p", str(leader.pg_port), "-U", "postgres", "postgres"]
    subprocess.run([os.path.join(PG_BIN, "pgbench"), "-i", "-q", "-s", str(PGBENCH["scale"]), *conn], env=env,
                   check=True, capture_output=True)
    return subprocess.Popen([os.path.join(PG_BIN, "pgbench"), "-c", str(PGBENCH["clients"]), "-j",
                             str(PGBENCH["threads"]), "-T", str(seconds), *conn], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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


def wakeups(pid: int) -> int:
    """Times the process's threads went to sleep and were woken (voluntary context switches): what an idle
    process costs is mostly what each of its wake-ups does."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total


def role(pid: int) -> str:
    """hasup names each process by role ("hasup: election main/node1"); Patroni is one `python patroni`."""
    line = cmdline(pid)
    if line.startswith("hasup: "):
        words = line.split(" ")
        return words[1] + (" worker" if words[1:3] == ["api", "worker"] else "")
    argv = line.split(" ")
    script = argv[1] if os.path.basename(argv[0]).startswith("python") and len(argv) > 1 else argv[0]
    return os.path.basename(script)


def pause(seconds: float, what: str) -> None:
    """Let `seconds` pass (a measurement window, not a wait for a condition)."""
    end = time.monotonic() + seconds
    wait_for(lambda: time.monotonic() >= end, seconds + 5, what, 0.5)


def patch_config(node: Node, change: dict[str, Any]) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{node.api_port}/config", data=json.dumps(change).encode(),
                                 method="PATCH", headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30) as resp:
        if resp.status != 200:
            raise RuntimeError(f"PATCH /config answered {resp.status}")


def idle_window(c: TestCluster, window: float) -> dict[str, Any]:
    """Per node: the supervisor tree's memory at the end of the window, its CPU and PostgreSQL's in it;
    for the cluster: etcd's requests and writes per node per minute."""
    etcd_url = f"http://127.0.0.1:{c.etcd.port}"
    sup_before = {n.name: cpu_seconds(supervisor_pids(n)) for n in c.nodes}
    by_pid_before = {pid: cpu_seconds({pid}) for n in c.nodes for pid in supervisor_pids(n)}
    woken_before = {pid: wakeups(pid) for n in c.nodes for pid in supervisor_pids(n)}
    pg_before = {n.name: cpu_seconds(postgres_pids(n)) for n in c.nodes}
    etcd_before, started = metrics(etcd_url), time.monotonic()
    pause(window, "the idle window")
    elapsed = time.monotonic() - started
    etcd_after = metrics(etcd_url)
    per_minute = 60.0 / elapsed
    nodes: dict[str, Any] = {}
    for n in c.nodes:
        pids = supervisor_pids(n)
        sizes = {pid: memory_kib(pid) for pid in pids}
        nodes[n.name] = {
            "processes": len(pids),
            "rss_mib": round(sum(s[0] for s in sizes.values()) / 1024, 1),
            "pss_mib": round(sum(s[1] for s in sizes.values()) / 1024, 1),
            "uss_mib": round(sum(s[2] for s in sizes.values()) / 1024, 1),
            "pss_mib_by_role": {role(pid): round(s[1] / 1024, 1) for pid, s in sorted(sizes.items())},
            "uss_mib_by_role": {role(pid): round(s[2] / 1024, 1) for pid, s in sorted(sizes.items())},
            "cpu_s_per_idle_min": round((cpu_seconds(supervisor_pids(n)) - sup_before[n.name]) * per_minute, 3),
            "cpu_s_per_idle_min_by_role": {role(pid): round((cpu_seconds({pid}) - by_pid_before[pid]) * per_minute, 3)
                                           for pid in sorted(pids) if pid in by_pid_before},
            "wakeups_per_s_by_role": {role(pid): round((wakeups(pid) - woken_before[pid]) / elapsed, 2)
                                      for pid in sorted(pids) if pid in woken_before},
            "postgres_cpu_s_per_idle_min": round((cpu_seconds(postgres_pids(n)) - pg_before[n.name]) * per_minute,
                                                 3),
        }
    r0, w0 = counted(etcd_before, 2)
    r1, w1 = counted(etcd_after, 2)
    per_node_minute = per_minute / len(c.nodes)
    return {"window_s": round(elapsed, 1), "nodes": nodes,
            "etcd": {"api": "v2", "requests_per_node_min": round((r1 - r0) * per_node_minute, 1),
                     "writes_per_node_min": round((w1 - w0) * per_node_minute, 1)}}


def rest(leader: Node, duration: int) -> dict[str, dict[str, float]]:
    url = f"http://127.0.0.1:{leader.api_port}/primary"
    runs: dict[str, dict[str, float]] = {}
    for close in (True, False):
        runs[f"idle, {'connection close' if close else 'keep-alive'}"] = wrk(url, duration, close)
    load = under_load(leader, 2 * duration + 20)
    try:
        for close in (True, False):
            runs[f"pgbench load, {'connection close' if close else 'keep-alive'}"] = wrk(url, duration, close)
    finally:
        load.terminate()
        load.wait(30)
    return runs


def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with supervisors.running(kind), TestCluster(3, dcs=DCS) as c:
        leader = c.start_all(180)
        c.wait_streaming(leader, [n for n in c.nodes if n is not leader], 120)
        pause(SETTLE, "the cluster to settle")
        timings = {"defaults": idle_window(c, args.window)}
        patch_config(leader, TIGHT)
        pause(SETTLE, "the new timing to reach every node")
        timings["ttl20-loop2"] = idle_window(c, args.window)
        patch_config(leader, DEFAULTS)
        pause(SETTLE, "the defaults to reach every node")
        if c.leader_name() != leader.name:
            raise RuntimeError("the leader changed while the cluster was idle")
        return {"timings": timings, "rest": rest(leader, args.duration)}


# -- the table ----------------------------------------------------------------------------------------------------


def worst(r: dict[str, Any], timing: str, key: str) -> float:
    return max(float(n[key]) for n in r["timings"][timing]["nodes"].values())


ROWS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("processes in the supervisor tree", "",
     lambda r: f"{worst(r, 'defaults', 'processes'):g}"),
    ("memory of the tree: RSS summed / PSS / USS", "PSS <= 40 MiB",
     lambda r: f"{worst(r, 'defaults', 'rss_mib'):.1f} / {worst(r, 'defaults', 'pss_mib'):.1f} / "
               f"{worst(r, 'defaults', 'uss_mib'):.1f} MiB"),
    ("supervisor CPU per idle minute, ttl 30 / loop_wait 10", "<= 0.1 s",
     lambda r: f"{worst(r, 'defaults', 'cpu_s_per_idle_min'):.2f} s"),
    ("PostgreSQL CPU per idle minute, ttl 30 / loop_wait 10", "<= 0.08 s",
     lambda r: f"{worst(r, 'defaults', 'postgres_cpu_s_per_idle_min'):.2f} s"),
    ("supervisor CPU per idle minute, ttl 20 / loop_wait 2", "<= Patroni's",
     lambda r: f"{worst(r, 'ttl20-loop2', 'cpu_s_per_idle_min'):.2f} s"),
    ("PostgreSQL CPU per idle minute, ttl 20 / loop_wait 2", "",
     lambda r: f"{worst(r, 'ttl20-loop2', 'postgres_cpu_s_per_idle_min'):.2f} s"),
    ("etcd v2 requests / writes per node per minute, ttl 30 / loop_wait 10", "< Patroni's",
     lambda r: "{requests_per_node_min:g} / {writes_per_node_min:g}".format(**r["timings"]["defaults"]["etcd"])),
    ("etcd v2 requests / writes per node per minute, ttl 20 / loop_wait 2", "< Patroni's",
     lambda r: "{requests_per_node_min:g} / {writes_per_node_min:g}".format(**r["timings"]["ttl20-loop2"]["etcd"])),
    (f"`GET /primary`, {WRK}, connection closed, idle: req/s, p99", ">= 4,500 req/s, p99 <= 3 ms",
     lambda r: "{requests_per_s:,.0f} req/s, p99 {p99_ms:.1f} ms".format(**r["rest"]["idle, connection close"])),
    (f"`GET /primary`, {WRK}, connection closed, under pgbench: req/s, p99", "p99 <= 10 ms",
     lambda r: "{requests_per_s:,.0f} req/s, p99 {p99_ms:.1f} ms".format(
         **r["rest"]["pgbench load, connection close"])),
    (f"`GET /primary`, {WRK}, keep-alive, idle: req/s, p99", "",
     lambda r: "{requests_per_s:,.0f} req/s, p99 {p99_ms:.1f} ms".format(**r["rest"]["idle, keep-alive"])),
]


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per figure, one column per supervisor (Patroni first, as the thing replaced)."""
    results = sorted(results, key=lambda r: r["supervisor"]["name"] != "patroni")
    heads = [f"{r['supervisor']['name'].replace('patroni', 'Patroni')} {r['supervisor']['version']}" for r in results]
    lines = ["| per node, worst of 3 | " + " | ".join(heads) + " | target |",
             "|---|" + "---|" * len(results) + "---|"]
    for label, target, cell in ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + f" | {target} |")
    return "\n".join(lines)


def result_name(kind: str) -> str:
    return f"footprint-{kind}.json"


def load_results(out: str) -> list[dict[str, Any]]:
    return record.load_existing((result_name(k) for k in supervisors.KINDS), out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=60.0, help="seconds of each idle window")
    ap.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    ap.add_argument("--supervisor", default="all", help="all (every installed one), hasup, patroni, or both by comma")
    ap.add_argument("--out", default=record.RESULTS)
    ap.add_argument("--table", action="store_true", help="only print the table from the result files")
    args = ap.parse_args()
    if not args.table:
        become_subreaper()
        settings = {"nodes": 3, "etcd": "one member, v2 API", "dcs": DCS, "tight_timing": TIGHT,
                    "idle_window_s": args.window, "settle_s": SETTLE, "rest": {"tool": WRK, "duration_s": args.duration,
                                                                               "url": "GET /primary on the leader",
                                                                               "pgbench": PGBENCH}}
        for kind in supervisors.chosen(args.supervisor):
            head = record.header("footprint", "idle", supervisors.describe(kind), settings)
            payload = measure(kind, args)
            print(json.dumps(payload, indent=1), flush=True)
            record.save(result_name(kind), head, payload, args.out)
    print(table(load_results(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
