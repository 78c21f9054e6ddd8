"""Petting a watchdog device under the lease rule, with the clock and the device injected.

The watchdog worker drives a Petter; tests drive it with a fake clock and a
recording device, so every path of the rule runs without a kernel device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hasup.watchdog.lease import MIN_TIMEOUT, LeaseRule, pet_interval


class DeviceError(Exception):
    """The device cannot be used as asked (cannot open, refuses the timeout, ...)."""


class Device(Protocol):
    def open(self) -> None:
        """Open (arms the device with its default timeout: this is a pet)."""

    def set_timeout(self, seconds: int) -> int:
        """Set the timeout (a pet); returns the timeout the device actually applied."""

    def keepalive(self) -> None:
        """Pet."""

    def disarm(self) -> None:
        """Magic close: stop the timer and close."""


# A shorter-timeout pet happens only in the last WAKE_SLACK seconds in which its timeout still
# fits, so it ends at or after limit - epsilon - WAKE_SLACK.  The worker aims at the start of that
# window, so it may wake up to this late; a caller stepping at least this often never misses one.
WAKE_SLACK = 0.5


@dataclass
class PetResult:
    # "armed", "pet" (keepalive), "retimed" (a pet that set another timeout: shorter while the lease runs
    # out, longer again after a renewal), "shortened" (a late pet repaired), "refused" (the device would
    # not take a shorter timeout; nothing changed), "no lease", "not due", "reset"
    action: str
    timeout: int | None = None


class Petter:
    """Pets so the device fires as late as the lease rule allows.

    While a pet with the full timeout fits, it pets with it every current/2.  After that (the lease
    was not renewed in time) it pets with the longest whole-second timeout that still fits, so the
    device fires no more than epsilon + WAKE_SLACK before the limit (1 s + epsilon after a pet
    that landed late) instead of up to W/2 + epsilon; a renewal that lets a longer timeout fit
    brings it back at once.
    """

    def __init__(self, rule: LeaseRule, device: Device, clock: Callable[[], float], timeout: int,
                 reset: Callable[[str], None]) -> None:
        self.rule = rule
        self.device = device
        self.clock = clock
        self.timeout = timeout  # W: what we ask for on arming
        self.reset = reset  # resets the node the way the device would
        self.valid_until: float | None = None
        self.armed = False
        self.current: int | None = None  # the timeout in force on the device
        self.last_pet: float | None = None  # clock reading after the last pet returned
        self.earliest_deadline: float | None = None  # clock before the last pet's syscall + current
        self.full = timeout  # the longest timeout we pet with: W, or less if the device clamps it
        self.shortest = MIN_TIMEOUT  # raised when the device will not take a shorter timeout

    def on_lease(self, valid_until: float) -> None:
        # Leases only move forward: an older one arriving late changes nothing.
        if self.valid_until is None or valid_until > self.valid_until:
            self.valid_until = valid_until

    def _target(self, now: float) -> int | None:
        """The timeout a pet starting at `now` would set: the full one if it fits, else the longest that does."""
        assert self.valid_until is not None
        if self.rule.may_pet(now, self.full, self.valid_until):
            target: int | None = self.full
        else:
            target = self.rule.fitting_timeout(now, self.valid_until)
            if target is not None:
                target = min(target, self.full - 1)  # float rounding must not contradict may_pet
        return target if target is not None and target >= self.shortest else None

    def _interval(self, target: int) -> float:
        """Full pets come often (a frozen worker then leaves the device nearly all of it: hasup.timing);
        shorter ones, near the lease's end, every current/2 as their whole-second windows need."""
        assert self.current is not None
        return pet_interval(self.current) if target == self.full == self.current else self.current / 2

    def _due(self, now: float, target: int) -> bool:
        assert self.last_pet is not None and self.current is not None and self.earliest_deadline is not None
        assert self.valid_until is not None
        if target > self.current:
            # A renewal lets a longer timeout fit again: take it at once, the short deadline may be close.
            return True
        if now < self.last_pet + self._interval(target):
            return False
        if target < self.full and now < self.rule.latest_start(target, self.valid_until) - WAKE_SLACK:
            # Whole seconds: early in the span where `target` fits, it would end up to 1 s short of
            # what the same timeout gives at the end of that span.  Wait for its last WAKE_SLACK.
            return False
        # Never a pet that ends before the one in force: it would only bring the reset closer.
        return now + target > self.earliest_deadline

    def step(self) -> PetResult:
        """Pet now if the rule allows and a pet is due; arm first if needed."""
        now = self.clock()
        if self.valid_until is None:
            return PetResult("no lease", self.current)
        if not self.armed:
            if not self.rule.may_pet(now, self.timeout, self.valid_until):
                return PetResult("no lease", None)
            return self._arm()
        target = self._target(now)
        if target is None:
            # Petting stops: the device fires by its deadline, which the rule kept inside the limit.
            return PetResult("no lease", self.current)
        if not self._due(now, target):
            return PetResult("not due", self.current)
        if target == self.current:
            self.device.keepalive()
            return self._recheck(now, self.clock(), "pet")
        return self._retime(now, target)

    def next_due(self) -> float | None:
        """When step() next pets (monotonic, maybe already past); None: nothing to pet until a new lease.

        Mirrors step(): a full pet every pet_interval(current); a longer timeout at once; a shorter one
        current/2 after the last pet, at the start of its last WAKE_SLACK seconds, and only if it ends later
        than the pet in force.
        """
        if not self.armed or self.valid_until is None or self.last_pet is None or self.current is None:
            return None
        assert self.earliest_deadline is not None
        now = self.clock()
        target = self._target(now)
        if target is not None and target > self.current:
            return now
        at = max(now, self.last_pet + pet_interval(self.current))
        target = self._target(at)
        if target != self.full:
            at = max(now, self.last_pet + self.current / 2)
            target = self._target(at)
        if target is None:
            return None
        if target < self.full:
            end = self.rule.latest_start(target, self.valid_until)
            at = max(at, end - WAKE_SLACK)
            if at + target <= self.earliest_deadline:
                # A late full pet can leave the window's opening no better than the pet in force.
                at = max(at, end - WAKE_SLACK / 2)
        return at if at + target > self.earliest_deadline else None

    def _arm(self) -> PetResult:
        self.device.open()
        self.armed = True
        # Opening armed the device with its default timeout; set ours at once.
        started = self.clock()
        actual = self.device.set_timeout(self.timeout)
        landed = self.clock()
        self.current = actual
        if actual > self.timeout:
            # The device would fire later than we can allow: it is unusable for the rule.
            self.device.disarm()
            self.armed = False
            self.current = None
            raise DeviceError(f"device set a timeout of {actual}s when {self.timeout}s was asked")
        self.full = actual
        return self._recheck(started, landed, "armed")

    def _retime(self, started: float, target: int) -> PetResult:
        """Pet by setting another timeout (WDIOC_SETTIMEOUT pets)."""
        assert self.valid_until is not None and self.current is not None
        try:
            actual = self.device.set_timeout(target)
        except DeviceError:
            # Linux checks the value before it pets, so a refused shorter timeout changed nothing, and
            # the deadline already in force stays inside the limit.  Only a shortening is safe to
            # pass over, and only if even a pet with it landing now would have kept the rule.
            if target >= self.current or not self.rule.deadline_holds(self.clock(), target, self.valid_until):
                raise
            self.shortest = target + 1
            return PetResult("refused", self.current)
        landed = self.clock()
        if actual > target:
            self.shortest = max(self.shortest, target + 1)  # it rounds up: asking again is no use
        if actual < target:
            self.full = min(self.full, actual)  # it clamps: never ask for more than it gives
        self.current = actual
        return self._recheck(started, landed, "retimed")

    def _recheck(self, started: float, landed: float, action: str) -> PetResult:
        """After a pet returned: keep the deadline inside the limit, shortening or resetting."""
        assert self.valid_until is not None and self.current is not None
        self.last_pet = landed
        self.earliest_deadline = started + self.current
        while not self.rule.deadline_holds(landed, self.current, self.valid_until):
            started = self.clock()
            w = self.rule.fitting_timeout(started, self.valid_until)
            if w is None:
                self.reset("watchdog: the lease ends before even a 1 s timeout would; resetting")
                return PetResult("reset")
            actual = self.device.set_timeout(w)
            landed = self.clock()
            self.last_pet, self.current, action = landed, actual, "shortened"
            self.earliest_deadline = started + actual
            if actual > w:
                self.reset(f"watchdog: device refused a {w}s timeout while the lease runs out; resetting")
                return PetResult("reset")
        return PetResult(action, self.current)

    def disarm(self) -> None:
        """Only after PostgreSQL has stopped or been demoted: never on an error path."""
        if self.armed:
            self.device.disarm()
            self.armed = False
            self.current = None
            self.last_pet = None
            self.earliest_deadline = None
