"""What a crash loop means per kind of worker (hasup.supervision.crash_policy): restart delays, the sliding
window, the lease guard, the vip's early restart, and the order of a safe give-up."""

from __future__ import annotations

import pytest

from hasup import ipc
from hasup.supervision import crash_policy as cp
from hasup.supervision.crash_policy import GiveUp, Stopped


def delays(kind: str, deaths: int, mode: str = "automatic") -> list[float | None]:
    policy = cp.policy_for(kind, mode)
    return [cp.verdict(policy, n).restart_in for n in range(1, deaths + 1)]


# One row per kind: the delay after the 1st, 2nd, ... death within the window (None: give up).
DELAYS = [
    ("election", "automatic", [0.0, 1.0, 2.0, 4.0, 8.0, None]),
    ("postgres", "automatic", [0.5, 1.0, 2.0, 4.0, 8.0, None]),
    ("watchdog", "automatic", [0.0, 1.0, 1.0, 1.0, 1.0, None]),
    ("watchdog", "required", [0.0, 1.0, 1.0, 1.0, 1.0, None]),
    ("watchdog", "off", [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]),
    ("api", "automatic", [0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]),
    ("vip", "off", [0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]),
]


@pytest.mark.parametrize(("kind", "mode", "expected"), DELAYS, ids=[f"{k}-{m}" for k, m, _ in DELAYS])
def test_restart_delays_by_kind(kind, mode, expected):
    assert delays(kind, len(expected), mode) == expected


@pytest.mark.parametrize(("kind", "mode", "gives_up"), [
    ("election", "off", True), ("postgres", "off", True), ("watchdog", "automatic", True),
    ("watchdog", "required", True), ("watchdog", "off", False), ("api", "required", False), ("vip", "required", False),
])
def test_who_gives_up_and_who_keeps_restarting(kind, mode, gives_up):
    policy = cp.policy_for(kind, mode)
    assert (policy.on_spent is cp.OnSpent.GIVE_UP) == gives_up
    for deaths in range(cp.BUDGET + 1, 200):  # never a give-up for the others, however long the loop
        v = cp.verdict(policy, deaths)
        assert v.crash_loop and (v.restart_in is None) == gives_up
        assert v.restart_in is None or 0 < v.restart_in <= cp.LOOP_CAP
    assert not any(cp.verdict(policy, n).crash_loop for n in range(1, cp.BUDGET + 1))


def test_the_window_forgets_deaths_older_than_300_s():
    w = cp.DeathWindow()
    assert [w.record(t) for t in (0.0, 10.0, 20.0, 30.0, 40.0)] == [1, 2, 3, 4, 5]
    assert w.count(299.9) == 5
    assert w.count(300.0) == 4  # the death at 0 is exactly 300 s old: forgotten
    assert w.count(340.0) == 0
    assert w.record(341.0) == 1


def test_the_window_slides_death_by_death():
    """A steady death every 61 s never spends the budget: at most 5 are ever within 300 s."""
    w = cp.DeathWindow()
    counts = [w.record(61.0 * i) for i in range(50)]
    assert max(counts) == 5 and counts[:5] == [1, 2, 3, 4, 5]
    policy = cp.policy_for("election", "automatic")
    assert all(cp.verdict(policy, n).restart_in is not None for n in counts)


def test_two_incidents_apart_do_not_add_up():
    """One corrupt value costs four election deaths; the next, ten minutes later, four more: no crash loop."""
    w = cp.DeathWindow()
    policy = cp.policy_for("election", "automatic")
    first = [w.record(t) for t in (0.0, 5.0, 15.0, 30.0)]
    second = [w.record(t) for t in (600.0, 605.0, 615.0, 630.0)]
    assert first == second == [1, 2, 3, 4]
    assert all(cp.verdict(policy, n).restart_in is not None for n in first + second)
    # Whereas six deaths within 300 s are a crash loop, whenever they happen.
    assert [w.record(t) for t in (700.0, 701.0)] == [5, 6] and cp.verdict(policy, 6).restart_in is None


# -- while election is down --------------------------------------------------------------------------


def view(holds: bool = True, valid_until: float = 100.0, paused: bool = False) -> ipc.ClusterView:
    return ipc.ClusterView(read_at=1.0, read_at_wall=1.0, leader="n1" if holds else "n2", holds_lock=holds,
                           lock_valid_until=valid_until, members={}, config={}, history=(), optime=None,
                           initialize=None, sync=None, failover=None, paused=paused)


def pg(role: str = "primary", pid: int | None = 42, state: str = "running") -> ipc.PgState:
    return ipc.PgState(state, role, False, True, 1.0, postmaster_pid=pid)


@pytest.mark.parametrize(("v", "p", "now", "lapsing"), [
    (view(), pg(), 93.9, False),  # more than the margin (6 s) left
    (view(), pg(), 94.0, True),
    (view(), pg(), 150.0, True),  # already over: still stop it
    (view(paused=True), pg(), 150.0, False),  # paused: nobody fails over, the operator owns PostgreSQL
    (view(holds=False), pg(), 150.0, False),  # not our lock
    (view(), pg(role="replica"), 150.0, False),
    (view(), pg(pid=None, state="stopped"), 150.0, False),
    (None, pg(), 150.0, False),
    (view(), None, 150.0, False),
])
def test_lease_guard(v, p, now, lapsing):
    assert cp.lease_lapsing(v, p, now, margin=6.0) == lapsing


def test_lease_deadline_matches_the_guard():
    assert cp.lease_deadline(view(valid_until=100.0), 6.0) == 94.0
    assert cp.lease_deadline(view(paused=True), 6.0) is None and cp.lease_deadline(view(holds=False), 6.0) is None


@pytest.mark.parametrize(("held", "v", "now", "restart"), [
    (True, view(valid_until=100.0), 50.0, False),  # still the leader: the backoff may run its course
    (True, view(valid_until=100.0), 99.5, True),  # the lease is about to end (LEASE_MARGIN)
    (True, view(holds=False), 50.0, True),  # someone else leads now
    (False, view(holds=False), 50.0, False),  # it never held the address
])
def test_a_backed_off_vip_worker_comes_back_at_once_when_the_address_must_go(held, v, now, restart):
    assert cp.vip_restart_now(held, v, pg(), now) == restart


# -- giving up -----------------------------------------------------------------------------------------


class FakeNode:
    """GiveUpOps that records every call, with PostgreSQL and election scripted by the test."""

    def __init__(self, *, postmaster: bool = True, stops_after: int = 0, election: bool = True,
                 confirmed: bool = True, releases: bool = True) -> None:
        self.calls: list[str] = []
        self.postmaster = postmaster
        self.stops_after = stops_after  # polls of postmaster_alive() after SIGQUIT before it is gone
        self.election = election
        self.confirmed = confirmed
        self.releases = releases
        self.told = False

    def stop_election(self) -> None:
        self.calls.append("stop_election")

    def quit_postmaster(self) -> bool:
        self.calls.append("quit_postmaster")
        return self.postmaster

    def postmaster_alive(self) -> bool:
        if not self.postmaster:
            return False
        if self.stops_after <= 0:
            self.postmaster = False
            return False
        self.stops_after -= 1
        return True

    def confirm_stopped(self) -> Stopped:
        self.calls.append("confirm_stopped")
        return Stopped(self.confirmed, (42,) if self.postmaster else (), "test")

    def election_alive(self) -> bool:
        return self.election

    def tell_election_stopped(self, stopped: Stopped) -> None:
        assert stopped.confirmed
        self.calls.append("tell_election_stopped")
        self.told = True

    def lock_released(self) -> bool:
        return self.told and self.releases

    def disarm(self, reason: str) -> None:
        self.calls.append("disarm")


def run(node: FakeNode, until: float = 100.0, step: float = 0.5) -> float:
    """Step a GiveUp until it is done; the (fake) time it took."""
    g = GiveUp(node, "postgres", 0.0, release_grace=15.0)
    t = 0.0
    while not g.step(t):
        t += step
        assert t < until, f"still {g.phase} at {t}"
    assert g.done and g.step(t + 1)  # done stays done, and does nothing more
    return t


def test_give_up_stops_postgres_then_lets_election_release_then_disarms():
    node = FakeNode(stops_after=3)
    took = run(node)
    assert node.calls == ["stop_election", "quit_postmaster", "confirm_stopped", "tell_election_stopped", "disarm"]
    assert took < 5


def test_give_up_without_election_disarms_once_postgres_is_confirmed_gone():
    node = FakeNode(election=False)
    run(node)
    assert node.calls == ["stop_election", "quit_postmaster", "confirm_stopped", "disarm"]


def test_a_postmaster_that_ignores_sigquit_is_killed_at_the_grace_deadline():
    node = FakeNode(stops_after=10_000)
    took = run(node)
    assert cp.STOP_GRACE <= took < cp.STOP_GRACE + 1
    assert node.calls[2:] == ["confirm_stopped", "tell_election_stopped", "disarm"]


def test_an_unconfirmed_stop_keeps_the_lock_and_the_device_armed():
    node = FakeNode(confirmed=False, stops_after=10_000)
    run(node)
    assert "tell_election_stopped" not in node.calls and "disarm" not in node.calls


def test_an_election_that_never_confirms_the_release_is_waited_for_within_a_bound():
    node = FakeNode(releases=False)
    took = run(node)
    assert node.calls[-2:] == ["tell_election_stopped", "disarm"]
    assert 15.0 <= took < 16.0


def test_with_no_postgresql_running_giving_up_is_immediate():
    node = FakeNode(postmaster=False, election=False)
    assert run(node) == 0.0
    assert node.calls == ["stop_election", "quit_postmaster", "confirm_stopped", "disarm"]
