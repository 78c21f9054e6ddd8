"""The long chaos runs: every nemesis again and again, in one or both replication modes.

Each mode runs on a fresh 3-node cluster with emulated watchdogs, on
network-namespace hosts (tests/chaos/run.py), with the fault schedule drawn
from the seed.  etcd is a single v2 member, or with --etcd3 three v3 members
with client-certificate TLS, each on a host of its own; --etcd3 adds the etcd
member nemeses (one member killed, one cut from the leader, a raft leader
change) to the catalogue.  Per mode it writes
bench/results/chaos-<mode>-<seed>.json (chaos-etcd3-<mode>-<seed>.json with
--etcd3), with bench/record.py's header (commit, machine, settings) and the
replication lag the run sampled; `--report` renders every such file into
docs/chaos.md.  `make chaos` runs the long runs the report shows.  --mixed
runs node1 with Patroni (a cluster mid-migration, docs/migration.md) and
draws only from the nemeses that apply to both kinds (chaos-mixed-<mode>-<seed>.json).

    python bench/chaos.py --mode both --faults 50 --seed 2026
    python bench/chaos.py --mode sync --faults 13 --seed 1 --kinds sigstop-leader-hasup,etcd-down
    python bench/chaos.py --etcd3 --mode both --faults 50 --seed 2026
    python bench/chaos.py --etcd3 --mode async --faults 20 --kinds etcd  # the etcd nemeses only
    python bench/chaos.py --mixed --mode sync --faults 20 --seed 2026
    python bench/chaos.py --report
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import random
import re
import statistics
import sys
from collections import defaultdict
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import record, supervisors  # noqa: E402
from tests.chaos.history import LAG_LOOKBACK, LAG_TOLERANCE  # noqa: E402
from tests.chaos.lag import LAG_INTERVAL  # noqa: E402
from tests.chaos.nemesis import ETCD_MEMBER_KINDS  # noqa: E402
from tests.chaos.run import COMPARISON, FAST, Plan, Result, run, schedule  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
REPORT = os.path.join(os.path.dirname(HERE), "docs", "chaos.md")


ETCD_KINDS = ("partition-leader-etcd", "partition-replica-etcd", "etcd-down", "etcd-down-failsafe",
              *ETCD_MEMBER_KINDS)  # what `--kinds etcd` draws from (the member nemeses only with --etcd3)


MIXED = ("patroni", "hasup", "hasup")


def etcd_of(r: dict[str, Any]) -> str:
    """How a recorded run's etcd reads in the report (runs recorded before --etcd3 had the single v2 etcd)."""
    return "etcd3: 3 members, TLS" if r.get("etcd") == "etcd3" else "etcd: 1 member, v2"


def nodes_of(r: dict[str, Any]) -> str:
    """What ran the nodes (runs recorded before --mixed ran hasup on all three)."""
    nodes = r.get("nodes") or ["hasup"] * 3
    if all(n == "hasup" for n in nodes):
        return ""
    patroni = r.get("patroni_version", "")
    return ", " + " + ".join(f"{nodes.count(k)} {'Patroni ' + patroni if k == 'patroni' else k}".rstrip()
                             for k in dict.fromkeys(nodes))


def lag_summary(samples: list[float]) -> dict[str, Any] | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return {"samples": len(ordered), "median_s": round(statistics.median(ordered), 4),
            "p99_s": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 4),
            "max_s": round(ordered[-1], 4)}


def summarise(result: Result, kinds: list[str] | None = None) -> dict[str, Any]:
    """The run's payload for its result file (the header comes from bench/record.py)."""
    v = result.verdict
    faults = sorted(result.faults, key=lambda r: r.start)

    def kind_at(t: float) -> str | None:
        """The fault whose stretch (its start until the next one's) holds time t."""
        current = None
        for r in faults:
            if r.start - 1.0 <= t:  # a replication window may open just before its fault
                current = r.name
        return current

    per_kind: dict[str, dict[str, Any]] = defaultdict(lambda: {"count": 0, "gaps": [], "healed_in": [],
                                                               "lag_before": [], "lost": 0, "explained": 0,
                                                               "dual": 0, "notes": defaultdict(int)})
    for r, report in zip(faults, sorted(v.nemeses, key=lambda n: n.start), strict=True):
        k = per_kind[r.name]
        k["count"] += 1
        k["gaps"].append(round(report.longest_gap, 2))
        k["healed_in"].append(None if report.healed_in is None else round(report.healed_in, 1))
        k["lag_before"].append(None if report.lag_before is None else round(report.lag_before, 4))
        for note in r.notes:
            k["notes"][note] += 1
    for w in v.loss_windows:
        name = (w.nemesis or "").split("@")[0] or "(none)"
        per_kind[name]["lost"] += len(w.values)
        per_kind[name]["explained"] += len(w.values) if w.explained else 0
    for d in v.dual_primary:
        per_kind[kind_at(d.start) or "(none)"]["dual"] += 1
    return {
        "etcd": "etcd3" if result.plan.etcd3 else "etcd",
        "nodes": list(result.plan.nodes),
        # The catalogue the schedule was drawn from, when not every nemesis that applies to this plan.
        "kinds": sorted(kinds) if kinds and set(kinds) != set(result.plan.catalogue()) else None,
        "seed": result.plan.seed,
        "faults": len(faults),
        "timing": dataclasses.asdict(result.plan.timing),
        "seconds": round(result.seconds),
        "acknowledged": v.acknowledged,
        "lost": len(v.lost),
        "discarded_by_rewind": len(v.discarded_by_rewind),
        "losses_explained": v.losses_explained,
        "replication_lag": lag_summary([s.flush_lag for s in result.lag]),
        "lag_tolerance_s": LAG_TOLERANCE,
        "lag_lookback_s": LAG_LOOKBACK,
        "dual_primary": [{"first": d.first, "second": d.second, "seconds": round(d.end - d.start, 3)}
                         for d in v.dual_primary],
        "failed_but_present": len(v.failed_but_present),
        "unknown_present": len(v.unknown_present),
        "all_healed": v.all_healed and len(faults) == len(result.plan.faults),
        "not_reacted": [f"{r.name}@{r.target}" for r in faults if not r.reacted],
        "loss_windows": [{"node": w.node, "count": len(w.values), "nemesis": w.nemesis, "explained": w.explained,
                          "seconds": round(w.last_ack - w.first_ack, 3), "lag_s": round(w.lag, 4),
                          "bound_s": round(w.lag + LAG_TOLERANCE, 4)} for w in v.loss_windows],
        "per_kind": {name: {**k, "notes": dict(k["notes"])} for name, k in sorted(per_kind.items())},
        "summary": v.summary(),
    }


PREAMBLE = f"""\
# Chaos runs (`bench/chaos.py`)

Generated by `python bench/chaos.py --report` from `bench/results/chaos-*.json`; the harness is
`tests/chaos/` (its short runs are part of `make test`: 7 faults in synchronous mode on a single v2
etcd, 6 in synchronous mode on the 3-member v3 TLS etcd, the etcd member nemeses among them, and 5
in synchronous mode on a cluster mid-migration, node1 running Patroni).

## Setup

- etcd and 3 nodes, each on a network-namespace host of its own, joined by a bridge in a namespace
  the run creates (nothing touches the host's network); an emulated watchdog on every node. etcd is
  either one member speaking v2 (`etcd:`), or with `--etcd3` three members with the v2 API off and
  client-certificate TLS, each on a host of its own (`etcd3:` with all three hosts).
- A writer per node, inside that node's namespace, inserts unique values every 10 ms through its
  node only, with client-side deadlines (1 s to connect, 1.5 s per statement): a timeout, a broken
  connection or a cancelled synchronous-replication wait counts as indeterminate, never as
  acknowledged.
- Faults are drawn from the seed: the catalogue shuffled again and again, so every kind comes up
  about equally often. Each is aimed at the current leader (or beside it), kept in place, removed;
  then the cluster must be whole again within 60 s (a writable leader, both replicas streaming, in
  synchronous mode a synchronous standby PostgreSQL waits on, and writes acknowledged on the
  leader). A node that a fault left down is restarted first, as systemd would.
- A sampler per node, inside that node's namespace, asks its PostgreSQL every {LAG_INTERVAL:g} s for the
  replication lag: the smallest `flush_lag` among the streaming standbys in `pg_stat_replication`
  (only a primary has any), that is how far behind the replica best placed to replace it trails.
- The checker (`tests/chaos/history.py`, itself tested on histories with known anomalies) reports
  acknowledged writes missing from the final primary (*lost*; those a later pg_rewind threw away are
  counted apart), windows in which two nodes acknowledged writes (*dual primary*), and per fault
  the longest stretch without any acknowledged write from its start to the next fault (*gap*), the
  time from removing it to whole (*healed*) and the largest lag sampled in the {LAG_LOOKBACK:g} s before it
  (*lag before*). A lost write is *explained* only as the replication window of a primary that was
  cut off: it belongs to the tail of that primary's uninterrupted acknowledged writes (every later
  write of the run missing too), the whole tail spans no more than the lag sampled on that primary
  (from {LAG_LOOKBACK:g} s before the tail to its end, the largest sample) plus a tolerance of
  {LAG_TOLERANCE:g} s, and it began within that bound before a fault and no later than its heal.
  Writes a cut-off asynchronous primary went on acknowledging after the cut (until it stepped down)
  make the tail longer than the lag: they are lost, not explained. That is what asynchronous
  replication costs (synchronous mode exists to avoid it), so an asynchronous run fails only on a
  dual primary or a cluster that did not heal; a synchronous run fails on any lost write too.

## Nemeses

| nemesis | what it does | kept for |
|---|---|---|
| partition-leader | nftables drops every packet between the leader's host and all others | until another node leads |
| partition-leader-etcd | the same, between the leader and etcd (all its members) only | until another node leads |
| partition-replica-etcd | a random replica cut from etcd (every member of a cluster) | 1.5 × ttl |
| sigkill-leader-tree | SIGKILL of the leader's supervisor, workers and PostgreSQL at once | until another node leads |
| sigstop-leader-hasup | SIGSTOP of the leader's supervisor and every worker; PostgreSQL keeps serving | 1.5 × ttl |
| sigstop-leader-postgres | SIGSTOP of every PostgreSQL process of the leader | until hasup fences it |
| etcd-down | SIGSTOP of etcd, all members at once (clients time out rather than being refused) | 1.5 × ttl |
| etcd-down-failsafe | the same with `failsafe_mode: true` for that fault | 1.5 × ttl |
| switchover | `POST /switchover` to a random replica (the synchronous standby in synchronous mode) | — |
| sigstop-*X*-worker | SIGSTOP of one of the leader's workers (election, postgres, watchdog, api) | ≤ 1.5 × ttl |
| sigstop-leader-election-no-device | SIGSTOP of the leader's supervisor and election worker, its device muted: \
only the software fence can stop PostgreSQL | 1.5 × ttl, fenced, new leader |
| etcd-member-down | SIGKILL of one etcd member drawn at random, started again on heal | 1.5 × ttl, same leader |
| partition-leader-etcd-member | the leader's host cut from the etcd raft leader member only | 1.5 × ttl, same leader |
| etcd-leader-change | `etcdctl move-leader` to another etcd member drawn at random | 1.5 × ttl, same leader |

A run with `--mixed` is a cluster in the middle of a migration (docs/migration.md): node1 runs
Patroni and leads first, node2 and node3 run hasup. It draws only from the nemeses that apply to
both kinds: the partitions, SIGKILL of the tree, etcd down (with and without failsafe), switchover
and the member nemeses; the others freeze hasup's own processes or wait for hasup's fencing. Patroni
cannot open the emulated device, so node1 runs without a watchdog, as Patroni does where none exists.

The last three need `--etcd3`: losing one etcd member of three must cost nothing, so *same leader*
means the hold fails unless the leader key was never re-created, the leader kept its timeline and
is still a writable primary. A fault whose hold ends otherwise than it expects (no new leader where
one should come, a new one where the old should stay, no fence) is listed as one the cluster *did
not react to as expected*. No nemesis freezes a single etcd member: etcd before 3.4.28 revokes every
lease when a frozen raft leader resumes (docs/etcd.md, "Known etcd problems"); freezing every member
at once is etcd down, after which the leases expire as v2 keys would.

## Patroni 4.1.5, for scale (quoted)

Quoted from the project's issue tracker, from the request for this suite ("Proven under faults"),
measured by its author on this kind of machine with a harness that is not in this repository;
nothing here reproduces them (this harness gives every node hasup's emulated watchdog, which
Patroni cannot use). Asynchronous, ttl 20 / loop_wait 2 / retry_timeout 4, 24 faults of this kind
without a watchdog: 4,585 of 60,882 acknowledged writes lost and 5 dual-primary windows (the longest
8.5 s), most after its supervisor was frozen while PostgreSQL kept serving, and 28 s of write
unavailability each time etcd was down. With `synchronous_mode: on`: nothing lost in 24 faults, but
writes stopped for 19–28 s at each leader loss, partition or etcd outage.
"""


def lost_text(r: dict[str, Any]) -> str:
    lost = r["lost"] + r["discarded_by_rewind"]
    if not lost:
        return "0 lost"
    unbounded = "" if r.get("replication_lag") else ", by the rule of its day: unbounded, no lag was measured"
    return (f"{lost} lost ({r['discarded_by_rewind']} of them discarded by a rewind; "
            f"{'all' if r['losses_explained'] else 'NOT all'} explained by a replication window{unbounded})")


def by_kind_of_note(notes: dict[str, int]) -> dict[str, int]:
    """'restarted node1' and 'restarted node3' count as one kind of note."""
    out: dict[str, int] = defaultdict(int)
    for note, n in notes.items():
        out[re.sub(r" node\d+", "", note)] += n
    return out


def machine_text(m: str | dict[str, Any]) -> str:
    """Runs recorded before bench/record.py kept the machine as one string."""
    return m if isinstance(m, str) else f"{m['arch']}, {m['cores']} cores"


def machine_line(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    if isinstance(m, str):
        return []
    return [f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_mib'] / 1024:.1f} GiB, kernel {m['kernel']}, "
            f"{m['os']}, Python {m['python']}, PostgreSQL {m['postgresql']}, etcd {m['etcd']}; load average "
            f"{m['load_average'][0]:g} at the start" + (". **hasup/ had uncommitted changes.**" if r.get("hasup_dirty")
                                                         else "."), ""]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def lag_text(r: dict[str, Any]) -> str:
    lag = r.get("replication_lag")
    if not lag:
        return ""
    return (f" Replication lag sampled on the primary: median {ms(lag['median_s'])}, p99 {ms(lag['p99_s'])}, "
            f"max {ms(lag['max_s'])} ({lag['samples']} samples); a lost tail is explained up to the lag + "
            f"{r['lag_tolerance_s']:g} s.")


def window_lines(r: dict[str, Any]) -> list[str]:
    """Each loss window with its span against the lag bound (runs since the lag was measured)."""
    if not r.get("replication_lag") or not r["loss_windows"]:
        return []
    out = ["Loss windows (acknowledged writes missing at the end, by node and run of writes):", ""]
    for w in r["loss_windows"]:
        out.append(f"- {w['count']} by {w['node']} at {w['nemesis']}, spanning {ms(w['seconds'])} against a bound of "
                   f"{ms(w['bound_s'])} (lag {ms(w['lag_s'])}): "
                   + ("explained, the replication window" if w["explained"] else "**lost**, beyond the replication "
                      "window" if w["seconds"] > w["bound_s"] else "**lost**, not the tail of its primary's writes"))
    return [*out, ""]


def lag_cell(k: dict[str, Any]) -> str:
    lags = [x for x in k.get("lag_before", []) if x is not None]
    return ms(max(lags)) if lags else "—"


def render(runs: list[dict[str, Any]]) -> str:
    out = [PREAMBLE]
    for r in runs:
        out += [
            f"## {r['mode']}, seed {r['seed']}, {r['faults']} faults, {etcd_of(r)}{nodes_of(r)} ({r['date']}, "
            f"{machine_text(r['machine'])}" + (f", commit `{r['commit'][:12]}`" if r.get("commit") else "") + ")",
            "",
            f"Command: `python bench/chaos.py{' --etcd3' if r.get('etcd') == 'etcd3' else ''}"
            f"{' --mixed' if nodes_of(r) else ''} --mode {r['mode']} "
            f"--faults {r['faults']} --seed {r['seed']}"
            f"{' --fast' if r['timing']['ttl'] == FAST.ttl else ''}"
            f"{' --kinds ' + ','.join(r['kinds']) if r.get('kinds') else ''}` "
            f"({r['seconds'] // 60} min). Timing: ttl {r['timing']['ttl']}, loop_wait {r['timing']['loop_wait']}, "
            f"retry_timeout {r['timing']['retry_timeout']}, safety_margin {r['timing']['safety_margin']}."
            + lag_text(r),
            "",
            *machine_line(r),
            f"**{r['acknowledged']} acknowledged, {lost_text(r)}, "
            f"{len(r['dual_primary'])} dual-primary windows, {r['failed_but_present']} failed-but-present, "
            f"{'every fault healed' if r['all_healed'] else 'NOT every fault healed'}"
            + (f"; the cluster did not react as expected to {', '.join(r['not_reacted'])}"
               if r.get("not_reacted") else "") + ".**",
            "",
            *window_lines(r),
            "| nemesis | n | lost (explained) | dual primary | gap median / max | healed max | lag before (max) "
            "| notes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, k in r["per_kind"].items():
            gaps = k["gaps"] or [0.0]
            healed = [h for h in k["healed_in"] if h is not None]
            notes = ", ".join(f"{note} ×{n}" for note, n in sorted(by_kind_of_note(k["notes"]).items()))
            out.append(f"| {name} | {k['count']} | {k['lost']} ({k['explained']}) | {k['dual']} | "
                       f"{statistics.median(gaps):.1f} / {max(gaps):.1f} s | "
                       f"{f'{max(healed):.1f} s' if healed else '—'} | {lag_cell(k)} | {notes} |")
        out.append("")
    return "\n".join(out)


def load_runs(results: str = RESULTS) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(glob.glob(os.path.join(results, "chaos-*.json"))):
        with open(path) as f:
            runs.append(json.load(f))
    # The single v2 etcd first, mixed clusters last.
    return sorted(runs, key=lambda r: (bool(nodes_of(r)), r.get("etcd") == "etcd3", r["mode"], r["seed"]))


def report() -> None:
    runs = load_runs()
    with open(REPORT, "w") as f:
        f.write(render(runs) + "\n")
    print(f"wrote {REPORT} ({len(runs)} runs)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["sync", "async", "both"], default="both")
    ap.add_argument("--faults", type=int, default=50, help="faults per mode")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--kinds", default=None,
                    help="comma-separated nemeses to draw from, or `etcd` for the etcd nemeses "
                         "(default: every one that applies to the etcd)")
    ap.add_argument("--etcd3", action="store_true",
                    help="run on 3 etcd members with v3 and TLS (adds the etcd member nemeses) instead of one v2 etcd")
    ap.add_argument("--mixed", action="store_true",
                    help="node1 runs Patroni, node2 and node3 hasup (draws only from the nemeses that apply to both)")
    ap.add_argument("--fast", action="store_true", help="the short run's timing (ttl 10) instead of ttl 20")
    ap.add_argument("--report", action="store_true", help="only render docs/chaos.md from bench/results")
    args = ap.parse_args()
    if args.report:
        report()
        return 0
    nodes = MIXED if args.mixed else ("hasup",) * 3
    known = Plan(synchronous=True, faults=[], seed=args.seed, etcd3=args.etcd3, nodes=nodes).catalogue()
    if args.kinds is None:
        kinds = list(known)
    elif args.kinds == "etcd":
        kinds = [k for k in ETCD_KINDS if k in known]
    else:
        kinds = args.kinds.split(",")
    unknown = sorted(set(kinds) - set(known))
    if unknown:
        print(f"--kinds: {', '.join(unknown)} do not apply here (what applies: {', '.join(known)})", file=sys.stderr)
        return 2
    ok = True
    for mode in (["sync", "async"] if args.mode == "both" else [args.mode]):
        faults = schedule(kinds, args.faults, random.Random(f"{args.seed}-{mode}"))
        plan = Plan(synchronous=mode == "sync", faults=faults, seed=args.seed,
                    timing=FAST if args.fast else COMPARISON, etcd3=args.etcd3, nodes=nodes)
        head = record.header("chaos", mode, supervisors.describe("hasup"),  # before the run: the code it runs
                             {"faults": args.faults, "seed": args.seed, "kinds": kinds, "etcd3": args.etcd3,
                              "nodes": list(nodes), "timing": dataclasses.asdict(plan.timing),
                              "heal_bound_s": plan.heal_bound})
        result = run(plan, say=lambda line: print(line, flush=True))
        summary = summarise(result, kinds)
        if plan.mixed:
            summary["patroni_version"] = supervisors.describe("patroni")["version"]
        print(summary["summary"], flush=True)
        record.save(f"chaos-{'etcd3-' if args.etcd3 else ''}{'mixed-' if args.mixed else ''}{mode}-{args.seed}.json",
                    head, summary)
        # Asynchronous replication loses what a cut-off primary acknowledged before it stepped down: those
        # writes are reported (lost, beyond the measured window), not a failure of the run.  Synchronous
        # mode must lose nothing at all.
        ok = ok and not summary["dual_primary"] and summary["all_healed"] and not summary["not_reacted"] \
            and (mode == "async" or summary["lost"] + summary["discarded_by_rewind"] == 0)
    report()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
