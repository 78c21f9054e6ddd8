"""The lease rule (docs/design.md §4): when the watchdog may be petted, and with which timeout.

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

# The allowance, the device's granularity and the pet interval are deadline-table figures (hasup.timing),
# as is the arithmetic on the settings (settings_problem, device_timeout): one definition of each.
from hasup.timing import EPSILON, MAX_PET_INTERVAL, MIN_TIMEOUT


def pet_interval(timeout: float) -> float:
    return min(timeout / 2, MAX_PET_INTERVAL)


@dataclass(frozen=True)
class LeaseRule:
    safety_margin: float
    epsilon: float = EPSILON

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
