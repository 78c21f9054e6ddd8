"""Renders docs/benchmarks.md from the result files in bench/results (`make bench-docs`).

The prose lives here as templates; every figure comes from a result file, and
each section names its result files with the commit each one measured.
tests/unit/test_bench_docs.py renders the page again and fails when the
committed one differs, so a figure cannot drift from its result.

    python bench/report.py            # write docs/benchmarks.md
    python bench/report.py --check    # exit 1 when docs/benchmarks.md is not what the results render
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import etcd_load  # noqa: E402
from bench import footprint as footprint_table  # noqa: E402
from bench.record import RESULTS, ROOT  # noqa: E402
from bench.supervisors import KINDS  # noqa: E402

DOC = os.path.join(ROOT, "docs", "benchmarks.md")
WIDTH = 100
Result = dict[str, Any]


class Results:
    """The result files, and which of them the page used (the test checks each of those)."""

    def __init__(self, directory: str = RESULTS) -> None:
        self.directory = directory
        self.used: list[str] = []
        self._loaded: dict[str, Result] = {}

    def get(self, name: str) -> Result | None:
        if name not in self._loaded:
            path = os.path.join(self.directory, name)
            if not os.path.exists(path):
                return None
            with open(path) as f:
                self._loaded[name] = {**json.load(f), "_file": name}
            self.used.append(name)
        return self._loaded[name]

    def each(self, pattern: str, kinds: Iterable[str] = KINDS) -> list[Result]:
        """The results of `pattern` (with {kind}) for every supervisor that has one, hasup first."""
        return [r for r in (self.get(pattern.format(kind=k)) for k in kinds) if r is not None]


# -- formatting -----------------------------------------------------------------------


def para(text: str) -> list[str]:
    return [*textwrap.wrap(text, WIDTH, break_on_hyphens=False), ""]


def bullet(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False)


def sec(x: float) -> str:
    return f"{x:.1f} s" if abs(x) >= 10 else f"{x:.2f} s"


def ms(x: float) -> str:
    return f"{x:.1f} ms"


def mib(x: float) -> str:
    return f"{x:.1f} MiB"


def cpu(x: float) -> str:
    return f"{x:.2f} s"


def plain(x: float) -> str:
    return f"{x:g}"


def span(values: list[float], unit: Callable[[float], str] = sec) -> str:
    """'0.11–0.13 s', or one value when they all print alike."""
    lo, hi = unit(min(values)), unit(max(values))
    if lo == hi:
        return lo
    if min(values) < 0:  # "-0.72–-0.36 s" reads badly
        return f"{lo} to {hi}"
    return f"{lo.split(' ')[0]}–{hi}"


def each_run(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def who(r: Result) -> str:
    s = r["supervisor"]
    return "hasup" if s["name"] == "hasup" else f"Patroni {s['version']}"


def timing(dcs: dict[str, Any]) -> str:
    return f"ttl {dcs['ttl']}, loop_wait {dcs['loop_wait']}, retry_timeout {dcs['retry_timeout']}"


def caveats(r: Result) -> list[str]:
    out = []
    if r.get("hasup_dirty"):
        out.append("**hasup/ had uncommitted changes**")
    if r.get("installed_matches_tree") is False:
        out.append("**the installed copy the nodes ran differed from the tree**")
    return out


def sources(results: list[Result]) -> list[str]:
    """Which files a section draws on, the commit and date each measured, and the commands that made them."""
    groups: dict[tuple[str, str, tuple[str, ...]], list[Result]] = {}
    for r in results:
        groups.setdefault((r.get("commit") or "", r["date"], tuple(caveats(r))), []).append(r)
    parts = []
    for (commit, date, warnings), rs in groups.items():
        names = ", ".join(f"`{r['_file']}`" for r in rs)
        loads = ", ".join(f"{r['machine']['load_average'][0]:g}" for r in rs)
        parts.append(f"{names}, measured {date} at commit `{commit[:12] or 'unknown'}` (load average at the start "
                     f"{loads}" + "".join(f"; {w}" for w in warnings) + ")")
    commands = sorted({r["command"] for r in results})
    return [*para("Results: " + "; ".join(parts) + "."),
            *para(f"Command{'s' if len(commands) > 1 else ''}: " + "; ".join(f"`{c}`" for c in commands) + ".")]


def missing(what: str) -> list[str]:
    return para(f"No results for {what} yet: `make bench` measures them.")


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


# -- the page ---------------------------------------------------------------------------


def head() -> list[str]:
    return [
        "# Benchmarks", "",
        *para("Generated by `python bench/report.py` (`make bench-docs`) from the result files in "
              "`bench/results/`: the prose is a template in bench/report.py, every figure comes from a result "
              "file. `make bench` runs every benchmark on this page, then renders it. The chaos runs have their own "
              "target (`make chaos`) and their own generated report, [chaos.md](chaos.md)."),
        *para("Every result file records the commit it measured (and whether `hasup/` had uncommitted changes, or "
              "the installed copy the nodes ran differed from the tree), the command, the settings, the machine, "
              "its load average when the run began, and the date. Patroni's figures come from the same runs: the "
              "harness starts the venv's `patroni` on the same configuration file in place of `hasup` "
              "(bench/supervisors.py). Each cluster is 3 nodes and one etcd on loopback, PostgreSQL with "
              "`fsync=off`, as in the tests."),
    ]


def machine_text(m: dict[str, Any]) -> str:
    return (f"{m['cpu_model']}, {m['cores']} cores, {m['memory_mib'] / 1024:.1f} GiB of memory, kernel "
            f"{m['kernel']} ({m['arch']}), {m['os']}, Python {m['python']}, PostgreSQL {m['postgresql']}, "
            f"etcd {m['etcd']}")


def machines(res: Results) -> list[str]:
    """Every machine the page's results were measured on (the load average aside: each section gives it)."""
    results = [r for r in (res.get(n) for n in list(res.used)) if r is not None]
    seen: dict[str, list[str]] = {}
    for r in results:
        seen.setdefault(machine_text(r["machine"]), []).append(r["_file"])
    out = ["## Machine", ""]
    if len(seen) == 1:
        out += para(f"{next(iter(seen))}.")
    else:
        out += [*(line for text, names in seen.items()
                  for line in bullet(f"{text}: {', '.join(f'`{n}`' for n in names)}")), ""]
    # The results of one interleaved run (the etcd load's, a file per supervisor) share start and duration.
    total = sum(seconds for _, seconds in {(r["started"], r["seconds"]) for r in results})
    return out + para(f"Measuring all of it took {total / 60:.0f} minutes (the result files' durations summed).")


FAULTS = {"sigterm": "SIGTERM to the leader's supervisor",
          "sigkill_tree": "SIGKILL of the leader's whole tree (supervisor, workers, PostgreSQL)"}


def failover_rows(fault: str, results: list[Result]) -> Iterable[list[str]]:
    for r in results:
        runs = r["runs"]
        gaps = [x["longest_gap_s"] for x in runs]
        lease = span([x["lease_left_s"] for x in runs], lambda v: f"{v:g} s") if fault == "sigkill_tree" else "—"
        yield [FAULTS[fault], who(r), str(len(runs)), f"{span(gaps)} ({each_run(gaps)})",
               span([x["first_ack_on_new_after_fault_s"] for x in runs]), lease, str(sum(x["lost"] for x in runs))]


def failover(res: Results) -> list[str]:
    out = ["## Failover (`bench/failover.py`)", ""]
    found = {f: res.each(f"failover-{f}-{{kind}}.json") for f in FAULTS}
    every = [r for rs in found.values() for r in rs]
    if not every:
        return out + missing("failover")
    s = every[0]["settings"]
    out += [*sources(every),
            *para(f"Setup: {timing(s['dcs'])}; {s['replication']} replication, no slots, pg_rewind on. A prober "
                  f"inserts a value every {s['prober_interval_s'] * 1000:g} ms into whichever node accepts writes "
                  "and records each acknowledged value. *Gap* is the longest interval between two acknowledged "
                  f"writes, from 1 s before the fault until {s['after_switch_s']:g} s after the first write on the "
                  "new leader; *lost* counts acknowledged values the new leader does not have."),
            *table(["fault", "supervisor", "runs", "longest write gap (each run)", "first write on the new leader",
                    "time left on the lease", "lost"],
                   [row for fault, rs in found.items() for row in failover_rows(fault, rs)])]
    if found["sigterm"]:
        out += bullet("**SIGTERM.** hasup's leader stops PostgreSQL (`fast`, which sends the shutdown checkpoint "
                      "to the replicas), then deletes the leader key. The replicas' etcd watch fires at once, they "
                      "compare positions over REST, and one promotes.")
    for r in found["sigkill_tree"]:
        over = [x["longest_gap_s"] - x["lease_left_s"] for x in r["runs"]]
        out += bullet(f"**SIGKILL, {who(r)}.** Nothing can release the lock, so the replicas wait for the key to "
                      "expire. etcd reports the time left in whole seconds; the longest gap minus that time was "
                      f"{span(over)} (the target: at most 1 s).")
    return [*out, ""]


def footprint(res: Results) -> list[str]:
    out = ["## Footprint at rest and health-check throughput (`bench/footprint.py`)", ""]
    results = res.each("footprint-{kind}.json")
    if not results:
        return out + missing("the footprint")
    s = results[0]["settings"]
    out += [*sources(results),
            *para(f"Per node, over idle windows of {s['idle_window_s']:g} s measured as they pass, first at "
                  f"{timing(s['dcs'])}, then at {timing(s['tight_timing'])} (set through `PATCH /config`): the "
                  "supervisor's process tree without PostgreSQL (its memory summed over its processes, its CPU), "
                  "the CPU PostgreSQL spent in the same window (mostly answering the supervisor's probes) and the "
                  "requests and writes the cluster's etcd served. Then, back at the defaults, `GET /primary` on the "
                  f"leader with `{s['rest']['tool']}` for {s['rest']['duration_s']} s per case, idle and while "
                  "pgbench writes on the leader. Each figure is the worst of the 3 nodes; the target column is the "
                  "one the project set itself."),
            *footprint_table.table(results).splitlines(), ""]
    for r in results:
        for what, key in (("PSS", "pss_mib_by_role"), ("USS", "uss_mib_by_role"),
                          ("CPU per idle minute", "cpu_s_per_idle_min_by_role"),
                          ("wake-ups per idle second", "wakeups_per_s_by_role")):
            roles: dict[str, list[float]] = {}
            for n in r["timings"]["defaults"]["nodes"].values():
                for name, size in n.get(key, {}).items():
                    roles.setdefault(name, []).append(size)
            unit = cpu if key.startswith("cpu") else plain if key.startswith("wakeups") else mib
            if len(roles) > 1:
                out += bullet(f"**{who(r)}, {what} by process:** "
                              + ", ".join(f"{name} {span(v, unit)}" for name, v in roles.items()) + ".")
    out += bullet("RSS counts the pages processes share copy-on-write (the interpreter's heap after imports) once "
                  "per process; PSS divides them among the processes sharing them; USS counts only the pages a "
                  "process holds alone. CPU is user and system time, including that of the children a process "
                  "reaped. Wake-ups are the voluntary context switches of all of a process's threads. "
                  "etcd's requests and writes are counted from its own metrics as in "
                  "[etcd.md](etcd.md).")
    return [*out, ""]


def switchover(res: Results) -> list[str]:
    out = ["## Switchover (`bench/failover.py`, fault `switchover_api`)", ""]
    results = res.each("failover-switchover_api-{kind}.json")
    if not results:
        return out + missing("the switchover")
    s = results[0]["settings"]

    def row(label: str, cell: Callable[[Result], str], target: str) -> list[str]:
        return [label, *(cell(r) for r in results), target]

    def answers(r: Result) -> str:
        return " / ".join(str(x["api_answer"][0]) for x in r["runs"])
    return out + [
        *sources(results),
        *para(f"`POST /switchover` on the leader with a named candidate, {timing(s['dcs'])}, with the same prober "
              "as above. The targets are the ones set when the REST switchover was built."),
        *table(["", *(who(r) for r in results), "target"], [
            row("API call until it answers", lambda r: " / ".join(sec(x["api_call_s"]) for x in r["runs"]),
                "< 1.5 s"),
            row("its HTTP status", answers, "200"),
            row("longest write gap", lambda r: " / ".join(sec(x["longest_gap_s"]) for x in r["runs"]), "< 1 s"),
            row("acknowledged writes lost", lambda r: str(sum(x["lost"] for x in r["runs"])), "0")]),
        *para("hasup's leader hands over only to a candidate that is streaming from it. It stops with a CHECKPOINT "
              "and then a fast stop; a fast stop waits until connected standbys have flushed the shutdown "
              "checkpoint. The candidate promotes only once it has received that LSN."),
    ]


HANGS = [("freeze_pg", "defaults", "hasup"), ("freeze_pg", "defaults", "patroni"),
         ("freeze_pg", "defaults-sync", "hasup"), ("freeze_pg", "tight", "hasup"), ("freeze_tree", "tight", "hasup")]


def profile_text(r: Result) -> str:
    s = r["settings"]
    return (timing(s["dcs"]) + (", `synchronous_mode: on`" if s["dcs"].get("synchronous_mode") else "")
            + (f", safety_margin {s['safety_margin']} with the emulated watchdog on every node"
               if s["watchdog"] == "emulated" else ", no watchdog"))


def hangs_row(fault: str, profile: str, r: Result) -> list[str]:
    runs = r["runs"]
    leader = [x["fault_to_leader_s"] for x in runs]
    writable = [x["fault_to_writable_s"] for x in runs if x["fault_to_writable_s"] is not None]
    margins = [x["watchdog_fired_before_expiry_minus_margin_s"] for x in runs
               if "watchdog_fired_before_expiry_minus_margin_s" in x]
    fences = [x["fences"] for x in runs if "fences" in x]
    return [fault, who(r), profile.replace("-sync", ", sync"), str(len(runs)), f"{span(leader)} ({each_run(leader)})",
            span(writable) if writable else "—", span(margins) if margins else "—",
            str(sum(x["dual_writable"] for x in runs)), str(sum(x["lost"] for x in runs)),
            str(sum(fences)) if fences else "—"]


def pgbench_lines(r: Result) -> list[str]:
    p, b = r["pgbench"], r["settings"]["pgbench"]
    return bullet(f"**A busy primary is not fenced** ({profile_text(r)}): `pgbench -c {b['clients']} -j "
                  f"{b['threads']} -T {int(p['minutes'] * 60)}` (scale {b['scale']}) on the leader at "
                  f"{p['tps']:,.0f} tps for {p['minutes']:g} minutes: {p['fences']} fences, "
                  f"{p['probe_failures_logged_on_leader']} failed probes logged, the leader "
                  f"{'CHANGED' if p['leader_changed'] else 'unchanged'}. That is why the default health deadline "
                  "can be as short as two probes; see docs/operations.md.")


def hangs(res: Results) -> list[str]:
    out = ["## Hangs: a frozen PostgreSQL, a frozen supervisor (`bench/hangs.py`)", ""]
    found = [(fault, profile, r) for fault, profile, kind in HANGS
             if (r := res.get(f"hangs-{fault}-{profile}-{kind}.json")) is not None]
    pgbench = res.get("hangs-pgbench-defaults-hasup.json")
    if not found and not pgbench:
        return out + missing("hangs")
    profiles: dict[str, str] = {}
    for _, profile, r in found:
        profiles.setdefault(f"{profile.replace('-sync', ', sync')}, {who(r)}", profile_text(r))
    out += [*sources([r for _, _, r in found] + ([pgbench] if pgbench else [])),
            *para("The same prober as above; asynchronous replication unless *sync*. Profiles: "
                  + "; ".join(f"*{name}*: {text}" for name, text in profiles.items()) + "."),
            *bullet("**freeze_pg**: SIGSTOP of the leader's postmaster and every child. Measured from the freeze "
                    "to a new leader that holds the key and is out of recovery (polled every 0.2 s), and to the "
                    "first write the prober got acknowledged on it. The prober's connection to the frozen server "
                    "hangs until something kills it: hasup's fence does; with Patroni nothing does until the "
                    "benchmark resumes the server, so there is no first write to time, and a write stuck there may "
                    "be acknowledged by the resumed old primary (counted as lost if the new leader lacks it)."),
            *bullet("**freeze_tree**: SIGSTOP of the leader's supervisor and election worker together (nothing "
                    "left that could renew the lease or heal). Also measured: how long before the leader key's "
                    "etcd expiry minus safety_margin the emulated watchdog fired (it must be >= 0)."),
            *bullet("*Two writable* counts the times writes came back to a node after another node had taken "
                    "them; *fences*, the times hasup logged fencing PostgreSQL."),
            "",
            *table(["fault", "supervisor", "profile", "runs", "freeze to a writable new leader (each run)",
                    "freeze to the first write on it", "watchdog fired before expiry − margin", "two writable",
                    "lost", "fences"],
                   (hangs_row(*f) for f in found)),
            *bullet("**freeze_pg, hasup.** Probes fail, the health deadline passes, the supervisor kills every "
                    "PostgreSQL process and confirms it, election deletes the key, a replica's watch fires and it "
                    "promotes. In asynchronous mode a write acknowledged in the last milliseconds before a freeze "
                    "can be missing on the replicas: a run with 0 lost is luck, not a promise. In synchronous "
                    "mode it is the promise."),
            *bullet("**freeze_pg, Patroni.** Its single loop waits on the hung database until the lease runs out."),
            *bullet("**freeze_tree.** The lease cannot be renewed, so the watchdog resets the node (the emulator "
                    "SIGKILLs its processes) before the key's expiry minus safety_margin: the device is petted "
                    "with ever shorter timeouts until the last whole second that fits. The replicas take over when "
                    "the key expires."),
            *(pgbench_lines(pgbench) if pgbench else [])]
    return [*out, ""]


REST_RUNS = [("idle, connection close", "idle", "closed per request"), ("idle, keep-alive", "idle", "keep-alive"),
             ("pgbench load, connection close", "pgbench", "closed per request"),
             ("pgbench load, keep-alive", "pgbench", "keep-alive")]


def errors(x: dict[str, float]) -> str:
    """Non-2xx answers and wrk's socket errors by kind, only those that happened."""
    kinds = [(x["non_2xx"], "non-2xx")] + [(x.get(f"socket_errors_{k}", 0.0), k)
                                          for k in ("connect", "read", "write", "timeout")]
    found = [f"{n:,.0f} {kind}" for n, kind in kinds if n]
    if not found and x["socket_errors"]:
        return f"{x['socket_errors']:,.0f} socket"
    return ", ".join(found) or "0"


def rest_rows(r: Result) -> Iterable[list[str]]:
    for key, load, conn in REST_RUNS:
        x = r["rest"][key]
        yield [who(r), load, conn, f"{x['requests_per_s']:,.0f}", ms(x["p50_ms"]), ms(x["p99_ms"]), errors(x)]


def rest(res: Results) -> list[str]:
    out = ["## REST health checks (`bench/footprint.py`, needs `wrk`)", ""]
    results = res.each("footprint-{kind}.json")
    if not results:
        return out + missing("the REST API")
    s = {**results[0]["settings"]["rest"], "dcs": results[0]["settings"]["dcs"]}
    p = s["pgbench"]
    return out + [
        *sources(results),
        *para(f"`{s['tool']} -d{s['duration_s']}s --latency` against {s['url']}, the 3-node cluster running at "
              f"{timing(s['dcs'])}; the load is `pgbench -c {p['clients']} -j {p['threads']}` (scale {p['scale']}) "
              "on the leader. HAProxy's checks close the connection after each request. *Errors* are wrk's: "
              "answers other than 2xx, and socket errors by kind (a server that closes each connection after its "
              "answer, as an HTTP/1.0 server does, shows read errors)."),
        *table(["supervisor", "load", "connection", "req/s", "p50", "p99", "errors"],
               (row for r in results for row in rest_rows(r))),
    ]


def etcd(res: Results) -> list[str]:
    out = ["## etcd load at rest (`bench/etcd_load.py`)", ""]
    results = res.each("etcd-load-{kind}.json")
    if not results:
        return out + missing("the etcd load")
    s = results[0]["settings"]
    return out + [
        *sources(results),
        *para(f"Requests and writes each node makes on etcd per minute, idle: {s['nodes']} nodes, {s['etcd']}, an "
              f"idle window of {s['window_s']:g} s per row, every row a fresh cluster, the supervisors interleaved. "
              "How each is counted: [etcd.md](etcd.md), \"etcd load at rest\"."),
        etcd_load.table(etcd_load.rows_of(results)), "",
    ]


def replica_build(res: Results) -> list[str]:
    out = ["## Building a replica: pg_basebackup vs a restore method (`bench/replica_build.py`)", ""]
    r = res.get("replica-build-hasup.json")
    if r is None:
        return out + missing("the replica build")
    s = r["settings"]
    rows = [[run["method"], sec(run["to_streaming_s"]), sec(run["build_s"]) if run["build_s"] is not None else "-",
             mib(run["database_bytes"] / 2**20)] for run in r["runs"]]
    return out + [
        *sources([r]),
        *para(f"A new replica of a leader holding pgbench's tables (scale {s['pgbench_scale']}, about "
              f"{s['size_mb']} MB), while {s['writes_during_build']} writes to it: `basebackup` is pg_basebackup from "
              "the leader; `restore` is a create_replica_methods script copying a base backup kept in a local "
              "directory, then WAL from the archive the leader fills (restore_command), then streaming. Time from "
              "the node's start to its row in the leader's pg_stat_replication as `streaming`; the build is the "
              "method's own part, from the node's log. The harness runs PostgreSQL with fsync off and the backup "
              "and the archive are local directories (after the first run mostly in the page cache): the figures "
              "compare the two paths on one machine, not a remote backup store."),
        *table(["method", "start to streaming", "building the data directory", "database size"], rows),
    ]


def chaos() -> list[str]:
    return ["## Chaos: faults one after another under a write workload (`bench/chaos.py`)", "",
            *para("Partitions, kills, freezes, etcd outages and switchovers, one after another on "
                  "network-namespace hosts, with every acknowledged write checked afterwards: `make chaos` (about "
                  "45 minutes) runs them and renders [chaos.md](chaos.md); the short run in `make test` is "
                  "`tests/chaos/test_short.py`.")]


def render(res: Results | None = None) -> str:
    res = res or Results()
    body = [*failover(res), *footprint(res), *switchover(res), *hangs(res), *rest(res), *etcd(res), *replica_build(res),
            *chaos()]
    return "\n".join([*head(), *machines(res), *body]).rstrip("\n") + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/benchmarks.md differs from the render")
    args = ap.parse_args()
    text = render()
    if args.check:
        with open(DOC) as f:
            same = f.read() == text
        print("docs/benchmarks.md is " + ("up to date" if same else "stale: run `make bench-docs`"))
        return 0 if same else 1
    with open(DOC, "w") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(DOC, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
