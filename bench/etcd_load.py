"""etcd load of an idle 3-node cluster: requests and writes per node per minute, hasup beside Patroni.

For each DCS API (v2 through `etcd:`, v3 through `etcd3:`), each timing (Patroni's defaults, and
ttl 20 / loop_wait 2) and each supervisor (hasup, and Patroni when it is installed), a fresh
single-member etcd and a fresh 3-node cluster are started; once every replica streams and one
more ttl has passed, etcd's own counters are read before and after an idle window:

- requests: v3: gRPC calls started (the JSON gateway makes one per HTTP request; a watch counts
  once when it starts); v2: store reads, writes and watch requests;
- writes: v3: keys put or deleted plus leases granted or revoked; v2: store writes of every action
  but `expire` (etcd's own expiry of a key whose ttl ran out).

    python bench/etcd_load.py [--window 60] [--only hasup] [--out bench/results]

Writes bench/results/etcd-load.json (commit, settings, machine), prints the table and renders it into
docs/etcd.md between its etcd-load markers (`--render` re-renders from the results file alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.harness import Etcd, TestCluster, become_subreaper, hasup_bin, wait_for  # noqa: E402
from tests.harness.etcd3 import Etcd3Cluster  # noqa: E402

TIMINGS = {"defaults": {"ttl": 30, "loop_wait": 10, "retry_timeout": 10},
           "ttl20-loop2": {"ttl": 20, "loop_wait": 2, "retry_timeout": 4}}
METRIC = re.compile(r'^([a-z_]+)(\{[^}]*\})? ([0-9.e+]+)$')
V3_SERVICES = ("etcdserverpb.KV", "etcdserverpb.Lease", "etcdserverpb.Watch", "etcdserverpb.Cluster",
               "etcdserverpb.Auth")


def metrics(url: str) -> dict[str, float]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = METRIC.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def counted(sample: dict[str, float], api: int) -> tuple[float, float]:
    """(requests, writes) so far, by etcd's counters."""
    if api == 3:
        requests = sum(v for k, v in sample.items() if k.startswith("grpc_server_started_total")
                       and any(f'grpc_service="{s}"' in k for s in V3_SERVICES))
        leases = sum(v for k, v in sample.items() if k.startswith("grpc_server_started_total")
                     and ('grpc_method="LeaseGrant"' in k or 'grpc_method="LeaseRevoke"' in k))
        writes = sample.get("etcd_mvcc_put_total", 0) + sample.get("etcd_mvcc_delete_total", 0) + leases
        return requests, writes
    writes = sum(v for k, v in sample.items() if k.startswith("etcd_debugging_store_writes_total")
                 and 'action="expire"' not in k)
    reads = sum(v for k, v in sample.items() if k.startswith("etcd_debugging_store_reads_total"))
    watches = sample.get("etcd_debugging_store_watch_requests_total", 0)
    return reads + writes + watches, writes


def one(kind: str, api: int, timing: str, window: float) -> dict[str, Any]:
    base = tempfile.mkdtemp(prefix="hasup-bench-etcd-")
    os.chmod(base, 0o755)
    etcd: Etcd | Etcd3Cluster = Etcd(base) if api == 2 else Etcd3Cluster(base, members=1, tls=False)
    dcs = {**TIMINGS[timing], "maximum_lag_on_failover": 1048576,
           "postgresql": {"use_pg_rewind": True, "use_slots": False}}
    previous = os.environ.get("HASUP_BIN")
    if kind == "patroni":
        os.environ["HASUP_BIN"] = os.path.join(os.path.dirname(hasup_bin()), "patroni")
    try:
        with TestCluster(3, dcs=dcs, base=base, etcd=etcd) as c:
            leader = c.start_all()
            settle_until = time.monotonic() + dcs["ttl"]
            wait_for(lambda: time.monotonic() >= settle_until, dcs["ttl"] + 5, "the cluster to settle", 1.0)
            url = f"http://127.0.0.1:{etcd.port}"
            before, started = metrics(url), time.monotonic()
            end = started + window
            wait_for(lambda: time.monotonic() >= end, window + 5, "the idle window", 1.0)
            after, elapsed = metrics(url), time.monotonic() - started
            assert c.leader_name() == leader.name, "the leader changed during the idle window"
    finally:
        if previous is None:
            os.environ.pop("HASUP_BIN", None)
        else:
            os.environ["HASUP_BIN"] = previous
    r0, w0 = counted(before, api)
    r1, w1 = counted(after, api)
    per_node_minute = 60.0 / elapsed / 3
    return {"kind": kind, "api": f"v{api}", "timing": timing, **TIMINGS[timing], "window_s": round(elapsed, 1),
            "requests_per_node_min": round((r1 - r0) * per_node_minute, 1),
            "writes_per_node_min": round((w1 - w0) * per_node_minute, 1)}


def commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "hasup"], capture_output=True, text=True)
    return done.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| supervisor | API | ttl / loop_wait | requests per node per minute | writes per node per minute |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['api']} | {r['ttl']} / {r['loop_wait']} | {r['requests_per_node_min']} "
                     f"| {r['writes_per_node_min']} |")
    return "\n".join(lines)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "etcd.md")
BEGIN, END = "<!-- etcd-load:begin (bench/etcd_load.py) -->", "<!-- etcd-load:end -->"


def section(result: dict[str, Any]) -> str:
    """The figures section of docs/etcd.md, from a results file."""
    machine = result["machine"]
    return "\n".join([
        BEGIN,
        f"Measured {result['date']} at commit `{result['commit'][:12]}` on {machine['arch']}, "
        f"{machine['cpus']} cores: `{result['command'].strip()}`; {result['settings']['nodes']} nodes, "
        f"{result['settings']['etcd']}, an idle window of {result['settings']['window_s']:g} s per row, "
        "every row a fresh cluster, hasup and Patroni in the same run.",
        "",
        table(result["rows"]),
        END,
    ])


def render(result: dict[str, Any]) -> None:
    with open(DOC) as f:
        text = f.read()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} section")
    with open(DOC, "w") as f:
        f.write(text[:start] + section(result) + text[end + len(END):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=60.0, help="idle seconds measured per case")
    ap.add_argument("--only", choices=("hasup", "patroni"), default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--render", action="store_true", help="only re-render docs/etcd.md from the results file")
    args = ap.parse_args()
    path = os.path.join(args.out, "etcd-load.json")
    if args.render:
        with open(path) as f:
            render(json.load(f))
        return 0
    become_subreaper()
    measured_at = commit()  # before the runs: the code they ran
    kinds = [args.only] if args.only else ["hasup"] + (
        ["patroni"] if os.path.exists(os.path.join(os.path.dirname(hasup_bin()), "patroni")) else [])
    rows = []
    for api in (2, 3):
        for timing in TIMINGS:
            for kind in kinds:
                row = one(kind, api, timing, args.window)
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {"commit": measured_at, "date": time.strftime("%Y-%m-%d"), "command": "python bench/etcd_load.py "
              + " ".join(sys.argv[1:]), "settings": {"window_s": args.window, "timings": TIMINGS, "nodes": 3,
              "etcd": "one member, etcd 3.4 (Debian)"},
              "machine": {"cpus": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version()},
              "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(table(rows))
    render(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
