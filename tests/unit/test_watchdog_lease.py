"""The lease rule: for any renewals, pets, delays and clock readings, the device never outlives the limit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasup.watchdog.lease import LeaseRule, device_timeout, effective_safety_margin, settings_problem
from hasup.watchdog.petter import DeviceError, Petter

RULE = LeaseRule(safety_margin=3, epsilon=0.5)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeDevice:
    """Records when each pet's syscall happened and the deadline it set; `lag` delays the next syscall."""

    def __init__(self, clock: FakeClock, refuse_below: int = 0) -> None:
        self.clock = clock
        self.lag = 0.0
        self.refuse_below = refuse_below  # a coarse device: never sets less than this
        self.deadline: float | None = None
        self.timeout: int | None = None
        self.events: list[tuple[str, float, int | None]] = []

    def _syscall(self) -> float:
        self.clock.t += self.lag
        self.lag = 0.0
        return self.clock.t

    def open(self) -> None:
        t = self._syscall()
        self.timeout = 60  # a kernel default, far too long: must be replaced at once
        self.deadline = t + 60
        self.events.append(("open", t, 60))

    def set_timeout(self, seconds: int) -> int:
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


def make(timeout: int = 4, refuse_below: int = 0):
    clock = FakeClock()
    device = FakeDevice(clock, refuse_below)
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
    assert petter.step().action == "no lease"
    assert device.deadline is not None and device.deadline <= 1007


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
    # The tightest profile the issue names: ttl 10, loop_wait 2, retry_timeout 3, safety_margin 3.
    assert settings_problem(10, 2, 3, 3) is None
    assert device_timeout(10, 2, 3) == 4
    assert "must not exceed" in (settings_problem(10, 2, 5, 3) or "")
    assert device_timeout(10, 6, 3) is None  # no W >= 1 fits
    assert settings_problem(30, 10, 10, 5) is None  # Patroni's defaults: 10 + 10 + 0.5 <= 25
    assert effective_safety_margin(-1, 30) == 15 and effective_safety_margin(5, 30) == 5
