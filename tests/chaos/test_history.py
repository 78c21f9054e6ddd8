"""The checker is tested on histories whose anomalies are known."""

from __future__ import annotations

from tests.chaos.history import (
    LAG_LOOKBACK,
    LAG_TOLERANCE,
    History,
    LagSample,
    Nemesis,
    Op,
    Outcome,
    Rewind,
    Verdict,
    check,
    dual_primaries,
)

OK, FAILED, INDET = Outcome.OK, Outcome.FAILED, Outcome.INDETERMINATE
STEP = 0.01


class Recorder:
    """Builds histories: each node's writer attempts one write per STEP, values unique across writers."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.value = 0

    def run(self, node: str, start: float, end: float, outcome: Outcome = OK, took: float = 0.004) -> list[int]:
        values = []
        t = start
        while t < end - 1e-9:
            self.value += 1
            self.ops.append(Op(self.value, node, t, t + took, outcome))
            values.append(self.value)
            t += STEP
        return values

    def acked(self) -> set[int]:
        return {o.value for o in self.ops if o.outcome is OK}


def clean_failover() -> Recorder:
    """n1 primary; it dies at 1.0; n2 takes over at 3.0; n1 comes back as a replica; a switchover back at 5.0."""
    r = Recorder()
    r.run("n1", 0.0, 1.0)
    r.run("n1", 1.0, 6.0, FAILED)  # refused, then read-only...
    r.run("n2", 0.0, 3.0, FAILED)  # ...while n2 is a replica until 3.0
    r.run("n2", 3.0, 5.0)
    r.run("n2", 5.0, 5.3, INDET)  # switchover: n2's session is cut
    r.run("n2", 5.3, 8.0, FAILED)
    r.run("n1", 6.0, 8.0)  # n1 primary again, after a failure on its writer
    r.run("n3", 0.0, 8.0, FAILED)
    return r


def test_a_clean_history_reports_nothing():
    r = clean_failover()
    nemeses = (Nemesis("kill", 1.0, 1.5, 4.0), Nemesis("switchover", 5.0, 5.0, 6.5))
    verdict = check(History(tuple(r.ops), frozenset(r.acked()), nemeses=nemeses), heal_bound=10)
    assert verdict.valid, verdict.summary()
    assert verdict.lost == () and verdict.dual_primary == () and verdict.discarded_by_rewind == ()
    assert verdict.acknowledged == len(r.acked())
    kill, switchover = verdict.nemeses
    assert 1.99 < kill.longest_gap < 2.01  # n1's last ack at 0.994, n2's first at 3.004
    assert 0.99 < switchover.longest_gap < 1.01  # n2's last at 4.994, n1's first at 6.004


def test_a_lost_write_is_reported():
    r = clean_failover()
    acked = sorted(r.acked())
    final = frozenset(r.acked()) - {acked[10]}
    verdict = check(History(tuple(r.ops), final), heal_bound=10)
    assert verdict.lost == (acked[10],)
    assert not verdict.valid


def test_indeterminate_writes_may_be_present_or_absent():
    r = clean_failover()
    indeterminate = [o.value for o in r.ops if o.outcome is INDET]
    some = frozenset(indeterminate[: len(indeterminate) // 2])
    verdict = check(History(tuple(r.ops), frozenset(r.acked()) | some), heal_bound=10)
    assert verdict.valid, verdict.summary()
    assert verdict.acknowledged == len(r.acked())


def test_a_failed_write_that_was_committed_is_reported():
    r = clean_failover()
    failed = next(o.value for o in r.ops if o.outcome is FAILED)
    verdict = check(History(tuple(r.ops), frozenset(r.acked() | {failed})), heal_bound=10)
    assert verdict.failed_but_present == (failed,)
    assert not verdict.valid


def test_a_value_nobody_wrote_is_reported():
    r = clean_failover()
    verdict = check(History(tuple(r.ops), frozenset(r.acked() | {10**9})), heal_bound=10)
    assert verdict.unknown_present == (10**9,)


def test_a_dual_primary_window_is_reported():
    """n1's supervisor freezes while PostgreSQL keeps serving; n2 is promoted at 3.0; n1 is fenced at 4.0."""
    r = Recorder()
    r.run("n1", 0.0, 4.0)
    r.run("n1", 4.0, 6.0, FAILED)
    r.run("n2", 0.0, 3.005, FAILED)
    r.run("n2", 3.005, 6.0)  # the writers are not in lockstep: n2's writes fall between n1's
    windows = dual_primaries(r.ops)
    assert len(windows) == 1, windows
    w = windows[0]
    assert {w.first, w.second} == {"n1", "n2"}
    assert 2.99 < w.start < 3.01 and 3.98 < w.end < 4.01
    verdict = check(History(tuple(r.ops), frozenset(r.acked())), heal_bound=10)
    assert not verdict.valid and len(verdict.dual_primary) == 1


def test_a_single_interleaved_ack_is_a_dual_primary():
    """The shortest overlap the writers can see: one ack by n2 between two consecutive acks of n1."""
    ops = [Op(1, "n1", 0.00, 0.01, OK), Op(3, "n1", 0.03, 0.04, OK),
           Op(2, "n2", 0.015, 0.025, OK)]
    assert [(w.first, w.second, w.witness) for w in dual_primaries(ops)] == [("n1", "n2", 2)]


def test_overlapping_acks_without_certain_order_are_not_a_dual_primary():
    """n2's ack overlaps n1's in time, but the commits may have happened in failover order."""
    ops = [Op(1, "n1", 0.00, 0.01, OK), Op(3, "n1", 0.02, 0.10, OK),  # n1's last ack arrives late
           Op(4, "n1", 0.11, 0.12, FAILED),
           Op(2, "n2", 0.05, 0.06, OK)]  # n2 commits before n1's reply arrives: n1 may have committed first
    assert dual_primaries(ops) == []


def test_a_failed_attempt_between_acks_is_a_change_of_role_not_a_dual_primary():
    ops = [Op(1, "n1", 0.00, 0.01, OK), Op(2, "n1", 0.02, 0.03, INDET), Op(5, "n1", 0.30, 0.31, OK),
           Op(3, "n2", 0.10, 0.11, OK), Op(4, "n2", 0.12, 0.13, FAILED)]
    assert dual_primaries(ops) == []


def test_a_write_discarded_by_a_rewind_is_reported_apart_from_lost():
    """n1 is partitioned but acknowledges writes (asynchronous), n2 takes over, n1 is rewound at 5.0."""
    r = Recorder()
    before = r.run("n1", 0.0, 1.0)
    r.run("n1", 1.0, 1.2, OK)  # acknowledged on the cut-off primary, never replicated
    cut_off = r.ops[len(before):]
    r.run("n1", 1.2, 6.0, FAILED)
    r.run("n2", 0.0, 3.0, FAILED)
    r.run("n2", 3.0, 6.0)
    final = frozenset(r.acked()) - {o.value for o in cut_off}
    rewinds = (Rewind("n1", 5.0),)
    verdict = check(History(tuple(r.ops), final, rewinds), heal_bound=10)
    assert verdict.discarded_by_rewind == tuple(o.value for o in cut_off)
    assert verdict.lost == ()
    assert not verdict.valid
    # With the rewind's own record of what it threw away, only those values are blamed on it.
    one = cut_off[0].value
    verdict = check(History(tuple(r.ops), final, (Rewind("n1", 5.0, frozenset({one})),)), heal_bound=10)
    assert verdict.discarded_by_rewind == (one,)
    assert verdict.lost == tuple(o.value for o in cut_off[1:])


def test_healing_is_judged_against_the_bound():
    r = clean_failover()
    nemeses = (Nemesis("slow", 0.5, 1.0, 9.0), Nemesis("never", 6.0, 6.5, None))
    verdict = check(History(tuple(r.ops), frozenset(r.acked()), nemeses=nemeses, end=8.0), heal_bound=5)
    slow, never = verdict.nemeses
    assert slow.healed_in == 8.0 and not slow.healed_within_bound
    assert never.healed_in is None and not never.healed_within_bound
    assert not verdict.all_healed and not verdict.valid


def test_the_longest_gap_counts_a_fault_after_which_writes_never_resumed():
    r = Recorder()
    r.run("n1", 0.0, 1.0)
    verdict = check(History(tuple(r.ops), frozenset(r.acked()), nemeses=(Nemesis("kill", 1.0, 1.0, 3.0),),
                            end=4.0), heal_bound=5)
    assert verdict.nemeses[0].longest_gap == 3.0


def partitioned_async_primary() -> tuple[Recorder, list[int], list[int]]:
    """n1 acknowledges writes alone after a partition at 1.0 (asynchronous), n2 takes over at 3.0."""
    r = Recorder()
    shipped = r.run("n1", 0.0, 1.0)
    unshipped = r.run("n1", 1.0, 1.4)  # acknowledged on the cut-off primary until it steps down: 0.39 s of acks
    r.run("n1", 1.4, 6.0, FAILED)
    r.run("n2", 0.0, 3.0, FAILED)
    r.run("n2", 3.0, 6.0)
    return r, shipped, unshipped


def lag(node: str, seconds: float, start: float = 0.0, end: float = 1.4) -> tuple[LagSample, ...]:
    """The lag sampled on `node` every 0.25 s from start to end, always the same."""
    return tuple(LagSample(node, start + i * 0.25, seconds) for i in range(int((end - start) / 0.25) + 1))


def lost_tail(unshipped: list[int], samples: tuple[LagSample, ...], partition: Nemesis | None = None) -> Verdict:
    """The verdict when n1's writes `unshipped` are missing in the end."""
    r, _, _ = partitioned_async_primary()
    final = frozenset(r.acked()) - set(unshipped)
    nemeses = (partition or Nemesis("partition-leader", 1.0, 4.0, 5.0),)
    return check(History(tuple(r.ops), final, nemeses=nemeses, lag=samples), heal_bound=10)


def test_a_lost_tail_within_the_measured_lag_is_its_replication_window():
    _, _, unshipped = partitioned_async_primary()
    verdict = lost_tail(unshipped, lag("n1", 0.5))  # a slow replica: half a second behind
    (window,) = verdict.loss_windows
    assert window.node == "n1" and window.values == tuple(unshipped)
    assert window.nemesis == "partition-leader" and window.explained and window.lag == 0.5
    assert verdict.losses_explained


def test_a_lost_tail_longer_than_the_measured_lag_is_lost():
    """The anomaly the bound exists for: a cut-off primary that went on acknowledging writes for 0.39 s while
    its replica trailed by 20 ms.  Those writes were never in flight to anyone: they are lost, not explained."""
    _, _, unshipped = partitioned_async_primary()
    verdict = lost_tail(unshipped, lag("n1", 0.02))
    (window,) = verdict.loss_windows
    assert window.values == tuple(unshipped) and window.lag == 0.02
    assert window.last_ack - window.first_ack > window.lag + LAG_TOLERANCE
    assert not window.explained and not verdict.losses_explained


def test_without_a_lag_sample_only_the_tolerance_explains():
    _, _, unshipped = partitioned_async_primary()
    assert not lost_tail(unshipped, ()).losses_explained  # 0.39 s > the tolerance
    r = Recorder()  # n1 dies at 1.03: its last 3 writes, within 30 ms of each other, had not reached n2
    r.run("n1", 0.0, 1.0)
    tail = r.run("n1", 1.0, 1.03)
    r.run("n1", 1.03, 6.0, FAILED)
    r.run("n2", 3.0, 6.0)
    verdict = check(History(tuple(r.ops), frozenset(r.acked()) - set(tail),
                            nemeses=(Nemesis("sigkill-leader-tree", 1.03, 1.03, 5.0),)), heal_bound=10)
    assert len(tail) == 3 and [w.explained for w in verdict.loss_windows] == [True]


def test_only_the_primarys_own_recent_lag_counts():
    """A slow standby of another node, or a lag spike long before the tail, does not widen the bound."""
    _, _, unshipped = partitioned_async_primary()
    elsewhere = lag("n2", 5.0)
    long_ago = (LagSample("n1", 1.0 - LAG_LOOKBACK - 1.0, 5.0),)
    recent = lag("n1", 0.02)
    assert not lost_tail(unshipped, elsewhere + long_ago + recent).losses_explained
    assert lost_tail(unshipped, elsewhere + recent + (LagSample("n1", 1.2, 5.0),)).losses_explained


def test_a_hole_inside_a_run_is_not_a_replication_window():
    """A write lost while later writes of the same primary survived cannot be explained by replication lag."""
    r, shipped, unshipped = partitioned_async_primary()
    partition = Nemesis("partition-leader", 1.0, 4.0, 5.0)
    final = frozenset(r.acked()) - {unshipped[1]}
    verdict = check(History(tuple(r.ops), final, nemeses=(partition,), lag=lag("n1", 0.5)), heal_bound=10)
    (window,) = verdict.loss_windows
    assert window.values == (unshipped[1],) and not window.explained
    assert not verdict.losses_explained


def test_a_tail_that_began_long_before_any_fault_is_not_a_replication_window():
    r, shipped, unshipped = partitioned_async_primary()
    late = Nemesis("partition-leader", 1.0 + 3 * 1.0, 4.5, 5.0)  # the tail began 3 s before it
    assert [w.explained for w in lost_tail(unshipped, lag("n1", 0.5), late).loss_windows] == [False]
    final = frozenset(r.acked()) - set(unshipped)
    verdict = check(History(tuple(r.ops), final, lag=lag("n1", 0.5)), heal_bound=10)  # no fault at all
    assert [w.nemesis for w in verdict.loss_windows] == [None] and not verdict.losses_explained


def test_each_fault_reports_the_lag_before_it():
    r = clean_failover()
    nemeses = (Nemesis("kill", 1.0, 1.5, 4.0), Nemesis("switchover", 5.0, 5.0, 6.5))
    samples = (LagSample("n1", 0.5, 0.01), LagSample("n1", 0.9, 0.03), LagSample("n2", 4.5, 0.002),
               LagSample("n1", 1.5, 9.0))  # after the kill: not before it
    verdict = check(History(tuple(r.ops), frozenset(r.acked()), nemeses=nemeses, lag=samples), heal_bound=10)
    assert [n.lag_before for n in verdict.nemeses] == [0.03, 9.0]  # the switchover's 10 s look back to 1.5
    verdict = check(History(tuple(r.ops), frozenset(r.acked()), nemeses=nemeses), heal_bound=10)
    assert [n.lag_before for n in verdict.nemeses] == [None, None]
