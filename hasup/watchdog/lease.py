"""The lease rule (DESIGN.md §4): when the watchdog may be petted, and with which timeout.

Pure arithmetic on monotonic times, no I/O.  Election grants a lease
`valid_until` (etcd cannot expire the leader key before it).  The device
must fire no later than `valid_until - safety_margin`, so a pet with
timeout W at time `now` is allowed only if

    now + W + epsilon <= valid_until - safety_margin

where epsilon bounds the time between this check and the pet's syscall.
After each pet the clock is read again; a pet that landed later than
epsilon allowed is corrected by setting a shorter timeout (which is itself
a pet), and when not even one second fits the node must be reset.  When a
full-timeout pet no longer fits, a pet with the longest whole-second
timeout that does (`fitting_timeout`) ends within 1 s + epsilon of the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Linux watchdog timeouts are whole seconds; below one there is nothing left to set.
MIN_TIMEOUT = 1
# Pets come every timeout/2, but at least this often: a frozen watchdog worker then leaves the device
# nearly its whole timeout, which is the supervisor's time to replace it (hasup.timing).
MAX_PET_INTERVAL = 1.0


def pet_interval(timeout: float) -> float:
    return min(timeout / 2, MAX_PET_INTERVAL)


@dataclass(frozen=True)
class LeaseRule:
    safety_margin: float
    epsilon: float = 0.5  # check-to-syscall allowance; the worker makes no I/O in between

    def limit(self, valid_until: float) -> float:
        """The latest moment the device may fire."""
        return valid_until - self.safety_margin

    def may_pet(self, now: float, timeout: float, valid_until: float) -> bool:
        return now + timeout + self.epsilon <= self.limit(valid_until)

    def latest_start(self, timeout: float, valid_until: float) -> float:
        """The last moment a pet with this timeout may start (where may_pet turns false)."""
        return self.limit(valid_until) - self.epsilon - timeout

    def fitting_timeout(self, now: float, valid_until: float) -> int | None:
        """The longest whole-second timeout a pet started at `now` may set; None when not even 1 s fits."""
        room = self.limit(valid_until) - now - self.epsilon
        if room < MIN_TIMEOUT:
            return None
        return int(math.floor(room))

    def deadline_holds(self, landed_at: float, timeout: float, valid_until: float) -> bool:
        """A pet whose syscall happened no later than `landed_at` keeps the device inside the limit."""
        return landed_at + timeout <= self.limit(valid_until)


def settings_problem(ttl: float, loop_wait: float, retry_timeout: float, safety_margin: float,
                     epsilon: float = 0.5) -> str | None:
    """Why these timings cannot drive a watchdog safely, or None.

    A slow but healthy renewal (loop_wait, then up to retry_timeout) must land
    before the device can fire.  Whole-second timeouts make it fire up to
    MIN_TIMEOUT + epsilon before the limit (`fitting_timeout`), so that much
    comes off the room too; without it, an etcd answer that takes the whole
    retry_timeout (or a failsafe round after it) resets a healthy leader.
    """
    slack = epsilon + MIN_TIMEOUT
    if loop_wait + retry_timeout + slack > ttl - safety_margin:
        return (f"loop_wait + retry_timeout + {slack:g} must not exceed ttl - safety_margin "
                f"({loop_wait:g} + {retry_timeout:g} + {slack:g} > {ttl:g} - {safety_margin:g}; the {slack:g} s is "
                "the watchdog's whole-second granularity and the check-to-pet allowance)")
    return None


def device_timeout(ttl: float, loop_wait: float, safety_margin: float, epsilon: float = 0.5,
                   renewal_latency: float = 0.5) -> int | None:
    """The device timeout W: the largest that still lets a pet follow each renewal.

    A renewal that starts at t grants t + ttl; the next starts loop_wait later
    and takes up to renewal_latency, so a pet right after it needs
    W <= ttl - safety_margin - epsilon - loop_wait - renewal_latency.
    """
    w = math.floor(ttl - safety_margin - epsilon - loop_wait - renewal_latency)
    return w if w >= MIN_TIMEOUT else None


def effective_safety_margin(configured: float, ttl: float) -> float:
    """-1 means half of ttl, as in Patroni."""
    return ttl // 2 if configured == -1 else configured
