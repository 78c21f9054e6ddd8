"""Petting a watchdog device under the lease rule, with the clock and the device injected.

The watchdog worker drives a Petter; tests drive it with a fake clock and a
recording device, so every path of the rule runs without a kernel device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hasup.watchdog.lease import LeaseRule


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


@dataclass
class PetResult:
    action: str  # "armed", "pet", "shortened", "no lease", "not due", "reset"
    timeout: int | None = None


class Petter:
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

    def on_lease(self, valid_until: float) -> None:
        # Leases only move forward: an older one arriving late changes nothing.
        if self.valid_until is None or valid_until > self.valid_until:
            self.valid_until = valid_until

    def due(self, now: float) -> bool:
        if not self.armed or self.last_pet is None or self.current is None:
            return True
        return now >= self.last_pet + self.current / 2

    def step(self) -> PetResult:
        """Pet now if the rule allows; arm first if needed."""
        now = self.clock()
        if self.valid_until is None or not self.rule.may_pet(now, self.timeout if not self.armed
                                                             else (self.current or self.timeout), self.valid_until):
            # Petting stops: the device fires by last pet + timeout, which the rule kept inside the limit.
            return PetResult("no lease", self.current)
        if not self.due(now):
            return PetResult("not due", self.current)
        if not self.armed:
            return self._arm()
        self.device.keepalive()
        return self._recheck(self.clock(), "pet")

    def _arm(self) -> PetResult:
        self.device.open()
        self.armed = True
        # Opening armed the device with its default timeout; set ours at once.
        actual = self.device.set_timeout(self.timeout)
        landed = self.clock()
        self.current = actual
        if actual > self.timeout:
            # The device would fire later than we can allow: it is unusable for the rule.
            self.device.disarm()
            self.armed = False
            self.current = None
            raise DeviceError(f"device set a timeout of {actual}s when {self.timeout}s was asked")
        return self._recheck(landed, "armed")

    def _recheck(self, landed: float, action: str) -> PetResult:
        """After a pet returned: keep the deadline inside the limit, shortening or resetting."""
        assert self.valid_until is not None and self.current is not None
        self.last_pet = landed
        while not self.rule.deadline_holds(landed, self.current, self.valid_until):
            w = self.rule.fitting_timeout(self.clock(), self.valid_until)
            if w is None:
                self.reset("watchdog: the lease ends before even a 1 s timeout would; resetting")
                return PetResult("reset")
            actual = self.device.set_timeout(w)
            landed = self.clock()
            self.last_pet, self.current, action = landed, actual, "shortened"
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
