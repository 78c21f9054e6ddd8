"""The lease rule: for any renewals, pets, delays and clock readings, the device never outlives the limit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasup.timing import EPSILON, device_timeout, effective_safety_margin, settings_problem
from hasup.watchdog.lease import LeaseRule, pet_interval
from hasup.watchdog.petter import WAKE_SLACK, DeviceError, PetResult, Petter

RULE = LeaseRule(safety_margin=3, epsilon=EPSILON)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeDevice:
    """Records when each pet's syscall happened and the deadline it set; `lag` delays the next syscall."""

    def __init__(self, clock: FakeClock, refuse_below: int = 0, einval_below: int = 0) -> None:
        self.clock = clock
        self.lag = 0.0
        self.refuse_below = refuse_below  # a coarse device: never sets less than this
        self.einval_below = einval_below  # like a Linux driver's min_timeout: shorter ones fail, nothing changes
        self.deadline: float | None = None
        self.timeout: int | None = None
        self.events: list[tuple[str, float, int | None]] = []
        self.fired_at: float | None = None  # when the timer ran out (the node would have been reset)

    def advance(self, seconds: float) -> None:
        """Let time pass; the device fires if its deadline is crossed."""
        target = self.clock.t + seconds
        if self.fired_at is None and self.deadline is not None and self.deadline < target:
            self.fired_at = self.deadline
        self.clock.t = target

    def _syscall(self) -> float:
        self.advance(self.lag)
        self.lag = 0.0
        return self.clock.t

    def open(self) -> None:
        t = self._syscall()
        self.timeout = 60  # a kernel default, far too long: must be replaced at once
        self.deadline = t + 60
        self.events.append(("open", t, 60))

    def set_timeout(self, seconds: int) -> int:
        if seconds < self.einval_below:
            self.events.append(("einval", self.clock.t, seconds))
            raise DeviceError(f"WDIOC_SETTIMEOUT {seconds}: Invalid argument")
        t = self._syscall()
        self.timeout = max(seconds, self.refuse_below)
        self.deadline = t + self.timeout
        self.events.append(("set_timeout", t, self.timeout))
        return self.timeout

    def keepalive(self) -> None:
        t = self._syscall()
        assert self.timeout is not None
        self.deadline = t + self.timeout
        self.events.append(("keepalive", t, self.timeout))

    def disarm(self) -> None:
        self.deadline = None
        self.events.append(("disarm", self.clock.t, None))


def make(timeout: int = 4, refuse_below: int = 0, einval_below: int = 0):
    clock = FakeClock()
    device = FakeDevice(clock, refuse_below, einval_below)
    resets: list[str] = []
    return clock, device, Petter(RULE, device, clock, timeout, resets.append), resets


events = st.lists(st.one_of(
    st.tuples(st.just("renew"), st.floats(0.0, 2.0)),   # a renewal that took this long to land
    st.tuples(st.just("wait"), st.floats(0.0, 6.0)),
    st.tuples(st.just("pet"), st.floats(0.0, 0.5)),     # delay between check and syscall, within epsilon
    st.tuples(st.just("slow_pet"), st.floats(0.5, 4.0)),  # beyond epsilon: the recheck must repair it
), max_size=60)


@settings(max_examples=500, deadline=None)
@given(events)
def test_device_deadline_never_passes_the_limit(seq):
    clock, device, petter, resets = make()
    lease_start: float | None = None
    for kind, x in seq:
        if resets:
            break
        if kind == "renew":
            lease_start = clock.t  # read before the write, as election does
            clock.t += x
            petter.on_lease(lease_start + 10)  # ttl 10
        elif kind == "wait":
            clock.t += x
        else:
            seen = len(device.events)
            device.lag = x
            try:
                petter.step()
            except DeviceError:
                pytest.fail("the fake device honours every timeout")
            device.lag = 0.0
        if device.deadline is not None and not resets:
            assert petter.valid_until is not None
            limit = RULE.limit(petter.valid_until)
            # After any completed step the deadline is inside the limit (late pets were repaired).
            assert device.deadline <= limit + 1e-9, (device.events, limit)
            if kind == "pet":
                # Within epsilon, not even the moment of the syscall broke the rule.
                assert all(t + w <= limit + 1e-9 for e, t, w in device.events[seen:] if e != "open" and w)


# How early the device may fire, before the limit of the newest lease it was petted under.  Shorter
# pets happen only in the last WAKE_SLACK seconds their timeout fits (deadline >= limit - epsilon -
# WAKE_SLACK); a pet that landed late is repaired with the longest timeout that still fits, which
# ends within 1 s + epsilon of the limit (and a reset happens only when not even 1 s fits).
PROMPT_BOUND = RULE.epsilon + WAKE_SLACK
LATE_PET_BOUND = RULE.epsilon + 1
TTL = 10
STEP_GAP = 0.5  # the worker model: stepped at least this often (no more than WAKE_SLACK)


class Worker:
    """Drives a Petter the way the watchdog worker does, and records when the node was reset."""

    def __init__(self) -> None:
        self.clock, self.device, self.petter, self.resets = make()
        self.reset_at: float | None = None
        self.stuck = False  # the device fired inside a pet that took longer than epsilon
        self.late_pet = False  # a pet since the last renewal took longer than epsilon

    @property
    def over(self) -> bool:
        return self.device.fired_at is not None or self.reset_at is not None

    def check_safety(self) -> None:
        if self.device.deadline is not None and not self.over and self.petter.valid_until is not None:
            assert self.device.deadline <= RULE.limit(self.petter.valid_until) + 1e-9, self.device.events

    def step(self, lag: float = 0.0) -> None:
        if self.over:
            return
        self.device.lag = lag
        self.petter.step()
        self.device.lag = 0.0
        if self.resets and self.reset_at is None:
            self.reset_at = self.clock.t
        if lag > RULE.epsilon:
            self.late_pet = True
            self.stuck = self.device.fired_at is not None
        self.check_safety()

    def wait(self, seconds: float) -> None:
        """Time passes; the worker steps at least every STEP_GAP."""
        end = self.clock.t + seconds
        while not self.over and self.clock.t < end:
            self.device.advance(min(STEP_GAP, end - self.clock.t))
            self.step()

    def sleep(self, seconds: float) -> None:
        """Time passes; the worker wakes only when next_due() says (a lease would wake it too)."""
        end = self.clock.t + seconds
        for _ in range(1000):
            due = self.petter.next_due() if self.petter.armed else None
            if self.over or due is None or due > end:
                break
            before = len(self.device.events)
            self.device.advance(max(0.0, due - self.clock.t))
            self.step()
            assert self.over or len(self.device.events) > before, "next_due() woke the worker for nothing"
        else:
            pytest.fail("next_due() keeps the worker busy")
        if not self.over:
            self.device.advance(max(0.0, end - self.clock.t))

    def renew(self, latency: float, wait) -> None:
        """A renewal read the clock, took `latency` to land, and its lease woke the worker."""
        start = self.clock.t
        wait(latency)
        if not self.over:
            self.petter.on_lease(start + TTL)
            self.late_pet = False
            self.step()

    def check_fired_in_time(self) -> None:
        """However the run ended, the node was not reset earlier than the bound allows."""
        fired = self.reset_at if self.reset_at is not None else self.device.fired_at
        if fired is None or self.stuck:
            return  # still alive, or a pet hung past the deadline: the worker's fault, not the rule's
        limit = RULE.limit(self.petter.valid_until)
        bound = LATE_PET_BOUND if self.late_pet else PROMPT_BOUND
        assert fired <= limit + 1e-9
        assert limit - fired <= bound + 1e-9, (limit, fired, self.device.events)


worker_events = st.lists(st.one_of(
    # Renewals that land within ttl - safety_margin - epsilon - W (2.5 s) of their start.
    st.tuples(st.just("renew"), st.floats(0.0, 2.0), st.just(0.0)),
    st.tuples(st.just("step"), st.floats(0.0, STEP_GAP), st.floats(0.0, RULE.epsilon)),  # gap, syscall lag
    st.tuples(st.just("slow_step"), st.floats(0.0, STEP_GAP), st.floats(RULE.epsilon, 4.0)),
), min_size=1, max_size=40)


@settings(max_examples=500, deadline=None)
@given(worker_events)
def test_stepped_often_the_device_fires_within_the_bound_before_the_limit(seq):
    w = Worker()
    for kind, x, lag in [("renew", 0.0, 0.0), *seq]:
        if kind == "renew":
            w.renew(x, w.wait)
        elif not w.over:
            w.device.advance(x)
            w.step(lag)
    w.wait(TTL)  # no more renewals: the lease runs out
    assert w.over
    w.check_fired_in_time()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 6.0), st.floats(0.0, 2.0)), max_size=12))
def test_woken_by_next_due_the_worker_uses_the_lease_to_its_end(renewals):
    w = Worker()
    w.renew(0.0, w.sleep)
    for gap, latency in renewals:
        w.sleep(gap)
        w.renew(latency, w.sleep)
    w.sleep(TTL)
    assert w.over and not w.late_pet
    w.check_fired_in_time()


def test_arming_replaces_the_default_timeout_and_counts_as_a_pet():
    clock, device, petter, _ = make()
    petter.on_lease(clock.t + 10)
    assert petter.step().action == "armed"
    assert [e[0] for e in device.events] == ["open", "set_timeout"] and device.timeout == 4
    assert device.deadline == clock.t + 4 <= RULE.limit(petter.valid_until)


def test_no_lease_no_pet_and_the_device_fires_in_time():
    clock, device, petter, _ = make()
    petter.on_lease(clock.t + 10)
    petter.step()
    clock.t += 2.5
    assert petter.step().action == "pet"
    clock.t += 2.5  # the lease is not renewed: 1000+10-3 = 1007 is the limit
    assert petter.step().action == "not due"  # 1 s would end at 1006, before the 1006.5 in force
    clock.t = 1005.5  # the last moment 1 s fits: still no later than 1006.5
    assert petter.step().action == "not due"
    clock.t += 0.1
    assert petter.step().action == "no lease"
    assert device.deadline == 1006.5 <= 1007


def test_a_stalled_lease_is_used_to_the_last_whole_second():
    # ttl 10, loop_wait 2, safety_margin 3 (W = 4); the renewal that started at 1000 is the last one.
    clock, device, petter, _ = make()
    clock.t = 999.0
    petter.on_lease(1000.0 + 10)  # limit 1007
    assert petter.step().action == "armed"
    clock.t = 1001.0
    assert petter.step().action == "pet"
    assert petter.next_due() == 1002.0  # full pets every MAX_PET_INTERVAL while 4 s fits (until 1002.5)
    clock.t = 1002.0
    assert petter.step().action == "pet"  # the last full pet: the device fires at 1006 unless petted again
    # 3 s would end no later (1003 + 3); 2 s fits from 1004 to 1004.5 and ends later: aim inside that window.
    assert petter.next_due() == 1004.25
    clock.t = 1004.25
    assert petter.step() == PetResult("retimed", 2)
    assert device.deadline == 1006.25
    assert RULE.limit(petter.valid_until) - device.deadline <= RULE.epsilon + WAKE_SLACK
    assert petter.next_due() is None  # no pet can end later now; only a renewal changes that
    assert [e[0] for e in device.events] == ["open", "set_timeout", "keepalive", "keepalive", "set_timeout"]


def test_a_renewal_brings_the_full_timeout_back_at_once_and_only_once():
    clock, device, petter, _ = make()
    petter.on_lease(clock.t + 10)  # limit 1007
    petter.step()
    clock.t = 1003.9
    assert petter.step().action == "not due"  # 2 s fits (room 2.6), but its window opens at 1004
    clock.t = 1004.2
    assert petter.step() == PetResult("retimed", 2)
    clock.t = 1004.4
    petter.on_lease(1004.0 + 10)  # a renewal that started at 1004 lands: 4 s fits again
    assert petter.next_due() == clock.t
    assert petter.step() == PetResult("retimed", 4)
    assert device.events[-1] == ("set_timeout", 1004.4, 4)
    for _ in range(42):  # stepped often for 2.1 s, it keeps the timeout and pets once per MAX_PET_INTERVAL
        clock.t += 0.05
        petter.step()
    assert [e[0] for e in device.events[4:]] == ["keepalive", "keepalive"]
    assert [e[1] for e in device.events[4:]] == [pytest.approx(1005.4, abs=0.06), pytest.approx(1006.4, abs=0.11)]


def test_pets_are_due_every_pet_interval_not_in_a_busy_loop():
    clock, device, petter, _ = make()
    petter.on_lease(clock.t + 10)
    petter.step()
    for _ in range(200):  # stepped every 50 ms until the lease is used up
        clock.t += 0.05
        petter.step()
    pets = [(t, w) for e, t, w in device.events if e in ("keepalive", "set_timeout")]
    for (t0, w0), (t1, _) in zip(pets, pets[1:], strict=False):
        assert t1 - t0 >= pet_interval(w0) - 1e-9
    assert len(pets) <= 5
    assert RULE.limit(petter.valid_until) - device.deadline <= RULE.epsilon + WAKE_SLACK + 1e-9


def test_a_device_that_refuses_short_timeouts_keeps_its_deadline_and_is_not_asked_again():
    clock, device, petter, _ = make(einval_below=2)  # a Linux driver whose min_timeout is 2
    petter.on_lease(clock.t + 10)
    petter.step()
    clock.t = 1002.0
    petter.step()  # full pet: deadline 1006
    clock.t = 1005.4  # only 1 s fits, and would end at 1006.4
    assert petter.step().action == "refused"
    assert device.deadline == 1006.0 and petter.current == 4 and petter.shortest == 2
    clock.t += 0.01
    assert petter.step().action == "no lease"
    assert [e[0] for e in device.events].count("einval") == 1


def test_a_device_that_rounds_a_short_timeout_up_past_the_limit_resets_the_node():
    clock, device, petter, resets = make(refuse_below=2)  # every timeout below 2 s becomes 2 s
    petter.on_lease(clock.t + 10)  # limit 1007
    petter.step()
    clock.t = 1002.4
    petter.step()  # deadline 1006.4
    petter.on_lease(1000.3 + 10)  # limit 1007.3
    clock.t = 1005.7  # room 1.1: asks 1 s, gets 2 s, which ends at 1007.7
    assert petter.step().action == "reset" and resets  # the repair cannot get below 2 s either


def test_a_late_pet_is_shortened_and_a_hopeless_one_resets():
    clock, device, petter, resets = make()
    petter.on_lease(clock.t + 10)
    petter.step()
    clock.t += 2
    device.lag = 2.0  # the pet lands at +4: deadline +8 > limit +7
    assert petter.step().action == "shortened"
    assert device.deadline is not None and device.deadline <= 1007
    assert not resets


def test_a_pet_landing_too_late_for_any_timeout_resets_the_node():
    clock, device, petter, resets = make()
    petter.on_lease(clock.t + 10)  # limit 1007
    petter.step()
    clock.t = 1002.0  # due, and allowed: 1002 + 4 + 0.5 <= 1007
    device.lag = 5.0  # but the syscall lands at 1007: not even 1 s fits any more
    assert petter.step().action == "reset" and resets


def test_a_device_that_refuses_the_timeout_is_not_used():
    clock, device, petter, _ = make(refuse_below=30)
    petter.on_lease(clock.t + 10)
    with pytest.raises(DeviceError):
        petter.step()
    assert device.events[-1][0] == "disarm" and not petter.armed


def test_older_leases_never_move_the_limit_back():
    _, _, petter, _ = make()
    petter.on_lease(20.0)
    petter.on_lease(15.0)
    assert petter.valid_until == 20.0


def test_settings_and_timeout_choice():
    # The tightest profile the tests use (docs/operations.md, "Timing"): ttl 10, loop_wait 2, retry_timeout 3,
    # safety_margin 3.
    assert settings_problem(10, 2, 3, 3) is None
    assert device_timeout(10, 2, 3) == 4
    assert "must not exceed" in (settings_problem(10, 2, 5, 3) or "")
    assert device_timeout(10, 6, 3) is None  # no W >= 1 fits
    assert settings_problem(30, 10, 10, 5) is None  # Patroni's defaults: 10 + 10 + 1.5 <= 25
    # A renewal that takes all of retry_timeout must beat the device, which may fire 1.5 s before the limit.
    assert settings_problem(10, 1, 3, 5) is not None and settings_problem(10, 1, 3, 4) is None
    assert effective_safety_margin(-1, 30) == 15 and effective_safety_margin(5, 30) == 5
