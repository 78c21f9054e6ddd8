"""etcd load of an idle 3-node cluster: requests and writes per node per minute, hasup beside Patroni.

For each DCS API (v2 through `etcd:`, v3 through `etcd3:`), each timing (Patroni's defaults, and
ttl 20 / loop_wait 2) and each supervisor (hasup, and Patroni when it is installed), a fresh
single-member etcd and a fresh 3-node cluster are started; once every replica streams and one
more ttl has passed, etcd's own counters are read before and after an idle window:

- requests: v3: gRPC calls started (the JSON gateway makes one per HTTP request; a watch counts
  once when it starts); v2: HTTP requests received (`etcd_http_received_total`, which leaves out
  watches) plus watch requests (not store reads: etcd reads its v2 store once more per request, to
  check whether v2 auth is on, which doubled the v2 figures of earlier runs);
- writes: v3: keys put or deleted plus leases granted or revoked; v2: store writes of every action
  but `expire` (etcd's own expiry of a key whose ttl ran out).

    python bench/etcd_load.py [--window 60] [--supervisor all] [--out bench/results]

Writes bench/results/etcd-load-<supervisor>.json (bench/record.py's header: commit, settings, machine),
prints the table and renders it into docs/etcd.md between its etcd-load markers (`--render` re-renders
from the result files alone).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import record, supervisors  # noqa: E402
from tests.harness import Etcd, TestCluster, become_subreaper, wait_for  # noqa: E402
from tests.harness.etcd3 import Etcd3Cluster  # noqa: E402

TIMINGS = {"defaults": {"ttl": 30, "loop_wait": 10, "retry_timeout": 10},
           "ttl20-loop2": {"ttl": 20, "loop_wait": 2, "retry_timeout": 4}}
V2_COUNTING = "http requests and watch requests"  # recorded in each result: how its v2 requests were counted
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
    # Client requests: etcd's count of v2 HTTP requests (every one but watches) plus its watch requests.
    # Not its store reads: etcd reads its v2 store once more per request to check whether v2 auth is on.
    received = sum(v for k, v in sample.items() if k.startswith("etcd_http_received_total"))
    watches = sample.get("etcd_debugging_store_watch_requests_total", 0)
    return received + watches, writes


def by_method(before: dict[str, float], after: dict[str, float], api: int, per_node_minute: float) -> dict[str, float]:
    """What the requests were, per node per minute: v3 gRPC methods; v2 HTTP methods and watches, and
    the writes by store action."""
    out: dict[str, float] = {}
    for k, v in after.items():
        if api == 3 and k.startswith("grpc_server_started_total") \
                and any(f'grpc_service="{s}"' in k for s in V3_SERVICES):
            m = re.search(r'grpc_method="([A-Za-z]+)"', k)
            name = m.group(1) if m else "?"
        elif api == 2 and k.startswith("etcd_http_received_total"):
            m = re.search(r'method="([A-Z]+)"', k)
            name = m.group(1) if m else "?"
        elif api == 2 and k.startswith("etcd_debugging_store_writes_total") and 'action="expire"' not in k:
            m = re.search(r'action="([A-Za-z]+)"', k)
            name = "write " + (m.group(1) if m else "?")
        elif api == 2 and k == "etcd_debugging_store_watch_requests_total":
            name = "watch"
        else:
            continue
        delta = round((v - before.get(k, 0)) * per_node_minute, 1)
        if delta:
            out[name] = round(out.get(name, 0) + delta, 1)
    return out


def one(kind: str, api: int, timing: str, window: float) -> dict[str, Any]:
    base = tempfile.mkdtemp(prefix="hasup-bench-etcd-")
    os.chmod(base, 0o755)
    etcd: Etcd | Etcd3Cluster = Etcd(base) if api == 2 else Etcd3Cluster(base, members=1, tls=False)
    dcs: dict[str, Any] = {**TIMINGS[timing], "maximum_lag_on_failover": 1048576,
                           "postgresql": {"use_pg_rewind": True, "use_slots": False}}
    with supervisors.running(kind), TestCluster(3, dcs=dcs, base=base, etcd=etcd) as c:
        leader = c.start_all()
        settle_until = time.monotonic() + dcs["ttl"]
        wait_for(lambda: time.monotonic() >= settle_until, dcs["ttl"] + 5, "the cluster to settle", 1.0)
        url = f"http://127.0.0.1:{etcd.port}"
        before, started = metrics(url), time.monotonic()
        end = started + window
        wait_for(lambda: time.monotonic() >= end, window + 5, "the idle window", 1.0)
        after, elapsed = metrics(url), time.monotonic() - started
        assert c.leader_name() == leader.name, "the leader changed during the idle window"
    r0, w0 = counted(before, api)
    r1, w1 = counted(after, api)
    per_node_minute = 60.0 / elapsed / 3
    return {"kind": kind, "api": f"v{api}", "timing": timing, **TIMINGS[timing], "window_s": round(elapsed, 1),
            "requests_per_node_min": round((r1 - r0) * per_node_minute, 1),
            "writes_per_node_min": round((w1 - w0) * per_node_minute, 1),
            "by_method": by_method(before, after, api, per_node_minute)}


def kinds_of(row: dict[str, Any]) -> str:
    by = row.get("by_method") or {}
    return ", ".join(f"{k} {v:g}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]) if not k.startswith("write ")) \
        or "—"


def table(rows: list[dict[str, Any]], kinds: bool = False) -> str:
    """The figures; with kinds, also what the requests were (docs/etcd.md shows them)."""
    head = "| supervisor | API | ttl / loop_wait | requests per node per minute | writes per node per minute |"
    lines = [head + (" the requests, per node per minute |" if kinds else ""),
             "|---|---|---|---|---|" + ("---|" if kinds else "")]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['api']} | {r['ttl']} / {r['loop_wait']} | {r['requests_per_node_min']} "
                     f"| {r['writes_per_node_min']} |" + (f" {kinds_of(r)} |" if kinds else ""))
    return "\n".join(lines)


MODEL_CLUSTERS, MODEL_NODES = 1000, 3


def model(rows: list[dict[str, Any]]) -> str:
    """The idle load of MODEL_CLUSTERS clusters of MODEL_NODES nodes on one etcd, from the per-node figures
    (idle load adds up: nodes and clusters share nothing but etcd), each supervisor beside the others."""
    per_s = MODEL_CLUSTERS * MODEL_NODES / 60.0
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    lines = ["| API | ttl / loop_wait | " + " | ".join(f"{k} requests/s" for k in kinds) + " | "
             + " | ".join(f"{k} writes/s" for k in kinds) + " |",
             "|---|---|" + "---|" * (2 * len(kinds))]
    cases = list(dict.fromkeys((r["api"], r["ttl"], r["loop_wait"]) for r in rows))
    for api, ttl, loop_wait in cases:
        of = {r["kind"]: r for r in rows if (r["api"], r["ttl"], r["loop_wait"]) == (api, ttl, loop_wait)}
        cells = [f"{of[k][field] * per_s:,.0f}" if k in of else "—"
                 for field in ("requests_per_node_min", "writes_per_node_min") for k in kinds]
        lines.append(f"| {api} | {ttl} / {loop_wait} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "etcd.md")
BEGIN, END = "<!-- etcd-load:begin (bench/etcd_load.py) -->", "<!-- etcd-load:end -->"


def rows_of(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every supervisor's rows, hasup's and Patroni's side by side for each API and timing."""
    order = {(api, timing): i for i, (api, timing) in enumerate((f"v{a}", t) for a in (2, 3) for t in TIMINGS)}
    rows = [row for r in results for row in r["rows"]]
    return sorted(rows, key=lambda row: (order.get((row["api"], row["timing"]), 99), row["kind"] != "hasup"))


def section(results: list[dict[str, Any]]) -> str:
    """The figures section of docs/etcd.md, from the result files."""
    first = results[0]
    machine = first["machine"]
    commits = sorted({f"`{r['commit'][:12]}`" + (" (hasup/ dirty)" if r.get("hasup_dirty") else "")
                      for r in results})
    files = ", ".join(f"`{r['_path']}`" for r in results)
    old = [r["_path"] for r in results if r["settings"].get("v2_requests") != V2_COUNTING]
    note = (f" The v2 requests of {', '.join(f'`{p}`' for p in old)} count etcd's store reads, which include "
            "one read etcd makes per request to check whether v2 auth is on: about twice the requests."
            if old else "")
    return "\n".join([
        BEGIN,
        f"Measured {first['date']} at commit {', '.join(commits)} on {machine['arch']}, {machine['cores']} cores "
        f"({files}): `{first['command']}`; {first['settings']['nodes']} nodes, {first['settings']['etcd']}, "
        f"an idle window of {first['settings']['window_s']:g} s per row, every row a fresh cluster, "
        + ("hasup and Patroni in the same run." if len(results) > 1 else "hasup only.") + note,
        "",
        table(rows_of(results), kinds=True),
        "",
        f"**{MODEL_CLUSTERS:,} clusters of {MODEL_NODES} nodes on one etcd**, at rest: the figures above times "
        f"{MODEL_CLUSTERS * MODEL_NODES:,} nodes (computed by the same render from the same files; idle load adds "
        "up, as nodes share nothing but etcd). Every node also holds one open watch: "
        f"{MODEL_CLUSTERS * MODEL_NODES:,} watch streams (v3) or long-polls (v2) for hasup.",
        "",
        model(rows_of(results)),
        END,
    ])


def result_name(kind: str) -> str:
    return f"etcd-load-{kind}.json"


def load_results(out: str) -> list[dict[str, Any]]:
    return record.load_existing((result_name(k) for k in supervisors.KINDS), out)


def render(results: list[dict[str, Any]]) -> None:
    with open(DOC) as f:
        text = f.read()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} section")
    with open(DOC, "w") as f:
        f.write(text[:start] + section(results) + text[end + len(END):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=60.0, help="idle seconds measured per case")
    ap.add_argument("--supervisor", default="all", help="all (every installed one), hasup, patroni, or both by comma")
    ap.add_argument("--out", default=record.RESULTS)
    ap.add_argument("--api", default="2,3", help="DCS APIs to measure: 2, 3 or both by comma")
    ap.add_argument("--timing", default=",".join(TIMINGS), help=f"timings to measure ({', '.join(TIMINGS)})")
    ap.add_argument("--render", action="store_true", help="only re-render docs/etcd.md from the result files")
    args = ap.parse_args()
    if args.render:
        render(load_results(args.out))
        return 0
    become_subreaper()
    kinds = supervisors.chosen(args.supervisor)
    settings = {"window_s": args.window, "timings": TIMINGS, "nodes": 3, "etcd": "one member, etcd 3.4 (Debian)",
                "v2_requests": V2_COUNTING}
    heads = {k: record.header("etcd-load", "idle", supervisors.describe(k), settings) for k in kinds}
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for api in (int(a) for a in args.api.split(",")):
        for timing in args.timing.split(","):
            for kind in kinds:  # interleaved, so both see the machine in the same state
                row = one(kind, api, timing, args.window)
                print(json.dumps(row), flush=True)
                rows[kind].append(row)
    for kind in kinds:
        record.save(result_name(kind), heads[kind], {"rows": rows[kind]}, args.out)
    results = load_results(args.out)
    print(table(rows_of(results)))
    if os.path.abspath(args.out) == os.path.abspath(record.RESULTS):  # a scratch run leaves the docs alone
        render(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
