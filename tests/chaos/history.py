"""The chaos suite's checker: a pure function from a recorded history to a verdict.

It knows nothing of hasup, PostgreSQL or namespaces.  Input: every write
attempt (value, node, start and end on the monotonic clock, outcome), the
values the healed cluster's primary holds, the rewinds that happened, the
nemeses with their heal times, and the replication lag sampled on the
primaries.  Output: what went wrong, if anything.

Outcomes.  OK means the server acknowledged the commit.  FAILED means it
certainly did not commit (refused connection, read-only transaction).
INDETERMINATE means the commit may or may not have happened (timeout, lost
connection, a cancelled synchronous-replication wait): such a value may be
present or absent in the end, and it never counts as acknowledged.

Dual primary, defined.  Each node has its own writer, which attempts writes
one after another on one session.  Two *consecutive* attempts of node A's
writer that were both acknowledged, a1 then a2, bracket an interval
(a1.end, a2.start) in which A's writer saw nothing go wrong.  If node B != A
acknowledged a write b lying strictly inside that interval
(a1.end < b.start and b.end < a2.start), then A committed a1 before B
committed b, and A accepted a2 after B had committed b, with no failure seen
on A in between: A and B were both writable in that window.  A correct
failover never does this: a primary that loses its role is stopped or
restarted read-only (hasup demotes by restarting PostgreSQL as a standby), so
its writer's next attempt fails or times out before it can be acknowledged
again, and any later acknowledgement by A follows a failed attempt, which
breaks the consecutive pair.  The check only sees overlaps longer than the
writers' pacing (about 10 ms); what it reports is certain, never a guess.
"""

from __future__ import annotations

import bisect
import enum
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    INDETERMINATE = "indeterminate"


@dataclass(frozen=True)
class Op:
    """One write attempt of `value` through node `node`'s writer."""

    value: int
    node: str
    start: float
    end: float
    outcome: Outcome


@dataclass(frozen=True)
class Rewind:
    """pg_rewind ran on `node` at `at`; `discarded`, when known, is what the node held before and not after."""

    node: str
    at: float
    discarded: frozenset[int] | None = None


@dataclass(frozen=True)
class Nemesis:
    """A fault: injected at `start`, healed (fault removed) at `heal`, cluster healthy again at `healed_at`."""

    name: str
    start: float
    heal: float
    healed_at: float | None


@dataclass(frozen=True)
class LagSample:
    """At `at`, primary `node`'s most advanced standby confirmed WAL `flush_lag` seconds after `node` flushed it.

    PostgreSQL's pg_stat_replication.flush_lag, the smallest over the streaming
    standbys: a primary lost at that moment had acknowledged, and not yet
    shipped to the replica best placed to replace it, the writes of about that
    many seconds.
    """

    node: str
    at: float
    flush_lag: float


@dataclass(frozen=True)
class History:
    ops: tuple[Op, ...]
    final: frozenset[int]  # the values in the healed cluster's primary's table
    rewinds: tuple[Rewind, ...] = ()
    nemeses: tuple[Nemesis, ...] = ()
    end: float | None = None  # when recording stopped; defaults to the last op's end
    lag: tuple[LagSample, ...] = ()


@dataclass(frozen=True)
class DualPrimary:
    """Nodes `first` and `second` both writable within (start, end); `witness` is second's acknowledged value."""

    first: str
    second: str
    start: float
    end: float
    witness: int


@dataclass(frozen=True)
class NemesisReport:
    name: str
    start: float
    longest_gap: float  # seconds without any acknowledged write, from start to the next fault (or the end)
    healed_in: float | None  # seconds from heal to healthy; None if it never healed
    healed_within_bound: bool
    lag_before: float | None = None  # the largest replication lag sampled in the LAG_LOOKBACK before it; None: none


@dataclass(frozen=True)
class LossWindow:
    """Acknowledged writes of one node, missing from the end, that were acknowledged without a break.

    `explained` when they are the replication window of a primary that was
    cut off: what it had acknowledged but not yet shipped.  All three must hold:

    - they are the tail of the node's uninterrupted run of acknowledged writes
      (later writes of that run are missing too: only the end of its WAL
      stream did not reach the new primary);
    - the tail is no longer than `lag` + LAG_TOLERANCE, where `lag` is the
      replication lag measured on that node (lag_bound): every write the
      primary had not shipped when it was cut off was acknowledged within one
      lag before that moment, so they all lie within one lag of each other.
      Writes a cut-off primary went on acknowledging after it (an isolated
      asynchronous primary does, until it steps down) make the tail longer
      and are lost, not explained;
    - it began no earlier than that bound before a fault, and no later than
      the fault's heal: the cut-off was the fault's doing.

    Anything else has no excuse.
    """

    node: str
    values: tuple[int, ...]
    first_ack: float
    last_ack: float
    nemesis: str | None
    explained: bool
    lag: float = 0.0  # the replication lag measured on `node` before and during the tail (seconds)


# Why a tolerance: the lag is sampled every LAG_INTERVAL (tests/chaos/lag.py), so a spike between two
# samples goes unseen; PostgreSQL derives flush_lag from the standby's replies, which trail the flush;
# and an acknowledgement reaches its writer a scheduling delay after the commit.  On a busy 2-core
# machine each is worth tens of milliseconds.  A quarter of a second covers them together and is still
# far shorter than what an isolated primary acknowledges before it steps down (seconds).
LAG_TOLERANCE = 0.25  # seconds
LAG_LOOKBACK = 10.0  # seconds of samples before a tail (or a fault) that describe the replication it had


def lag_bound(samples: Iterable[LagSample], node: str | None, since: float, until: float) -> float | None:
    """The largest lag sampled on `node` (any node if None) in [since, until]; None without a sample."""
    found = [s.flush_lag for s in samples if (node is None or s.node == node) and since <= s.at <= until]
    return max(found) if found else None


@dataclass(frozen=True)
class Verdict:
    acknowledged: int
    lost: tuple[int, ...]  # acknowledged, missing from the final primary, no rewind to blame
    discarded_by_rewind: tuple[int, ...]  # acknowledged, missing, and thrown away by a rewind
    dual_primary: tuple[DualPrimary, ...]
    failed_but_present: tuple[int, ...]  # reported as certainly failed, yet committed
    unknown_present: tuple[int, ...]  # in the final table but never attempted
    nemeses: tuple[NemesisReport, ...] = field(default=())
    loss_windows: tuple[LossWindow, ...] = field(default=())

    @property
    def losses_explained(self) -> bool:
        return all(w.explained for w in self.loss_windows)

    @property
    def all_healed(self) -> bool:
        return all(n.healed_within_bound for n in self.nemeses)

    @property
    def valid(self) -> bool:
        return not (self.lost or self.discarded_by_rewind or self.dual_primary or self.failed_but_present
                    or self.unknown_present) and self.all_healed

    def summary(self) -> str:
        lines = [f"{self.acknowledged} acknowledged, {len(self.lost)} lost, "
                 f"{len(self.discarded_by_rewind)} discarded by rewind, {len(self.dual_primary)} dual-primary, "
                 f"{len(self.failed_but_present)} failed-but-present, {len(self.unknown_present)} unknown"]
        for n in self.nemeses:
            healed = f"healed in {n.healed_in:.1f}s" if n.healed_in is not None else "NOT healed"
            lag = "" if n.lag_before is None else f"  lag before {n.lag_before * 1000:.1f}ms"
            lines.append(f"  {n.name:<24} longest gap {n.longest_gap:6.2f}s  {healed}{lag}"
                         + ("" if n.healed_within_bound else "  (over the bound)"))
        for w in self.loss_windows:
            why = f"in the replication window of {w.nemesis}" if w.explained else "UNEXPLAINED"
            lines.append(f"  {len(w.values)} acknowledged by {w.node} in ({w.first_ack:.3f}, {w.last_ack:.3f}) "
                         f"missing, {w.last_ack - w.first_ack:.3f}s against a lag of {w.lag:.3f}s: {why}")
        for d in self.dual_primary:
            lines.append(f"  dual primary {d.first}/{d.second} in ({d.start:.3f}, {d.end:.3f}) witness {d.witness}")
        return "\n".join(lines)


def check(history: History, heal_bound: float) -> Verdict:
    acked = [op for op in history.ops if op.outcome is Outcome.OK]
    missing = [op for op in acked if op.value not in history.final]
    discarded = {op.value for op in missing if _rewound(op, history.rewinds)}
    attempted = {op.value for op in history.ops}
    missing_values = {op.value for op in missing}
    return Verdict(
        acknowledged=len(acked),
        lost=tuple(sorted(op.value for op in missing if op.value not in discarded)),
        discarded_by_rewind=tuple(sorted(discarded)),
        dual_primary=tuple(dual_primaries(history.ops)),
        failed_but_present=tuple(sorted(op.value for op in history.ops
                                        if op.outcome is Outcome.FAILED and op.value in history.final)),
        unknown_present=tuple(sorted(history.final - attempted)),
        nemeses=tuple(_nemesis_reports(history, acked, heal_bound)),
        loss_windows=tuple(loss_windows(history.ops, missing_values, history.nemeses, history.lag)),
    )


def _rewound(op: Op, rewinds: Iterable[Rewind]) -> bool:
    """Was this acknowledged write on a node that a rewind later cut back?"""
    for r in rewinds:
        if r.discarded is not None:
            if op.value in r.discarded:
                return True
        elif r.node == op.node and op.end <= r.at:
            return True
    return False


def dual_primaries(ops: Iterable[Op]) -> list[DualPrimary]:
    """Windows in which two nodes were certainly writable at once (see the module docstring)."""
    by_node: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_node[op.node].append(op)
    for attempts in by_node.values():
        attempts.sort(key=lambda o: o.start)
    acked_by_node = {n: sorted((o for o in a if o.outcome is Outcome.OK), key=lambda o: o.start)
                     for n, a in by_node.items()}
    starts = {n: [o.start for o in a] for n, a in acked_by_node.items()}
    found: list[DualPrimary] = []
    for node, attempts in by_node.items():
        for a1, a2 in zip(attempts, attempts[1:], strict=False):
            if a1.outcome is not Outcome.OK or a2.outcome is not Outcome.OK:
                continue
            for other, acked in acked_by_node.items():
                if other == node:
                    continue
                # One writer's attempts never overlap, so the first to start after a1 ends first.
                i = bisect.bisect_right(starts[other], a1.end)
                if i < len(acked) and acked[i].end < a2.start:
                    found.append(DualPrimary(node, other, a1.end, a2.start, acked[i].value))
    return _merge(found)


def loss_windows(ops: Iterable[Op], missing: set[int], nemeses: Iterable[Nemesis],
                 lag: Iterable[LagSample] = ()) -> list[LossWindow]:
    """Group missing acknowledged writes by node and uninterrupted run, and say whether each is a
    replication window (see LossWindow)."""
    by_node: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_node[op.node].append(op)
    faults = sorted(nemeses, key=lambda n: n.start)
    samples = tuple(lag)
    windows: list[LossWindow] = []
    for node, attempts in sorted(by_node.items()):
        attempts.sort(key=lambda o: o.start)
        run: list[Op] = []
        ends: list[Op | None] = [*attempts, None]  # None closes the last run
        for attempt in ends:
            if attempt is not None and attempt.outcome is Outcome.OK:
                run.append(attempt)
                continue
            windows.extend(_windows_of_run(node, run, missing, faults, samples))
            run = []
    return sorted(windows, key=lambda w: w.first_ack)


def _windows_of_run(node: str, run: list[Op], missing: set[int], faults: list[Nemesis],
                    samples: tuple[LagSample, ...]) -> list[LossWindow]:
    lost = [i for i, op in enumerate(run) if op.value in missing]
    if not lost:
        return []
    tail = run[lost[0]:]
    is_tail = len(lost) == len(tail)
    first, last = tail[0].end, run[lost[-1]].end
    lag = lag_bound(samples, node, first - LAG_LOOKBACK, last) or 0.0  # no sample: the tolerance alone
    bound = lag + LAG_TOLERANCE
    fault = next((n for n in reversed(faults) if n.start - bound <= first), None)
    explained = is_tail and last - first <= bound and fault is not None and first <= fault.heal
    values = tuple(run[i].value for i in lost)
    return [LossWindow(node, values, first, last, fault.name if fault else None, explained, lag)]


def _merge(windows: list[DualPrimary]) -> list[DualPrimary]:
    """One entry per pair of nodes and stretch of overlapping windows."""
    merged: list[DualPrimary] = []
    for w in sorted(windows, key=lambda d: (sorted((d.first, d.second)), d.start)):
        last = merged[-1] if merged else None
        if last and {last.first, last.second} == {w.first, w.second} and w.start <= last.end:
            merged[-1] = DualPrimary(last.first, last.second, last.start, max(last.end, w.end), last.witness)
        else:
            merged.append(w)
    return sorted(merged, key=lambda d: d.start)


def _nemesis_reports(history: History, acked: list[Op], heal_bound: float) -> list[NemesisReport]:
    nemeses = sorted(history.nemeses, key=lambda n: n.start)
    end = history.end if history.end is not None else max((op.end for op in history.ops), default=0.0)
    ack_times = sorted(op.end for op in acked)
    reports = []
    for i, n in enumerate(nemeses):
        until = nemeses[i + 1].start if i + 1 < len(nemeses) else max(end, n.start)
        points = [n.start] + [t for t in ack_times if n.start < t < until] + [until]
        gap = max(b - a for a, b in zip(points, points[1:], strict=False))
        healed_in = None if n.healed_at is None else n.healed_at - n.heal
        reports.append(NemesisReport(n.name, n.start, gap, healed_in, healed_in is not None and healed_in <= heal_bound,
                                     lag_bound(history.lag, None, n.start - LAG_LOOKBACK, n.start)))
    return reports
