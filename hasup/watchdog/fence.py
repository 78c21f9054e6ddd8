"""The software fence (docs/design.md §4): when the watchdog worker kills PostgreSQL itself.

Pure arithmetic and wording, no I/O.  The lease says etcd cannot expire
our leader key before `valid_until`; the device must fire by
`valid_until - safety_margin`, and with whole-second timeouts it may fire
up to MIN_TIMEOUT + EPSILON before that (hasup.timing, `earliest_reset`).
The fence acts at that earliest moment: before any device could fire, so
a stalled lease costs a PostgreSQL restart rather than a machine reset,
and no earlier, so a slow but healthy renewal, which the lease rule
already gives that much room (`settings_problem`), never fences.
"""

from __future__ import annotations

from dataclasses import dataclass

from hasup.timing import EPSILON, MIN_TIMEOUT

# Before the lease rule's limit: the device's whole-second granularity and the check-to-syscall allowance.
FENCE_LEAD = MIN_TIMEOUT + EPSILON
RETRY = 0.2  # seconds between attempts while a kill stays unconfirmed

DEVICE, FENCE, NONE = "device", "software fence", "none"


def fence_at(valid_until: float, safety_margin: float) -> float:
    """The moment a lease that was not renewed makes the fence kill PostgreSQL (monotonic)."""
    return valid_until - safety_margin - FENCE_LEAD


@dataclass(frozen=True)
class FenceInputs:
    enabled: bool  # watchdog.software_fence, and the lease's timings keep the lease rule
    valid_until: float | None  # the newest lease; None while not leading (never leased, or disarmed)
    safety_margin: float
    fenced_lease: float | None  # the valid_until of the lease a confirmed fence already acted on


def fence_due(now: float, f: FenceInputs) -> bool:
    """Must PostgreSQL be killed now?  Once per lease: a confirmed fence is not repeated until a new one."""
    if not f.enabled or f.valid_until is None or f.fenced_lease == f.valid_until:
        return False
    return now >= fence_at(f.valid_until, f.safety_margin)


def next_check(now: float, f: FenceInputs) -> float | None:
    """Seconds until fence_due may turn true without a new message; None: not before a new lease."""
    if not f.enabled or f.valid_until is None or f.fenced_lease == f.valid_until:
        return None
    return max(0.0, fence_at(f.valid_until, f.safety_margin) - now)


def protection(mode: str, device_problem: str | None, software_fence: bool) -> str:
    """What stops this node's PostgreSQL when its lease runs out unrenewed: DEVICE, FENCE or NONE.

    With a device the fence still acts first (DEVICE covers both); the device is the last line for a
    watchdog worker that is itself stuck.
    """
    if mode != "off" and device_problem is None:
        return DEVICE
    return FENCE if software_fence else NONE


def protection_line(mode: str, device: str, device_problem: str | None, software_fence: bool) -> str:
    """The one line logged at start."""
    kind = protection(mode, device_problem, software_fence)
    if kind == DEVICE:
        first = ", the software fence acting first" if software_fence else " (watchdog.software_fence is off)"
        return f"lease protection: device {device}{first}"
    why = "watchdog.mode is off" if mode == "off" else str(device_problem)
    if kind == FENCE:
        return f"lease protection: software fence ({why}); a freeze of every hasup process at once is not covered"
    return f"lease protection: none ({why}, watchdog.software_fence is off)"


@dataclass
class FenceHistory:
    """The software fence's record for /patroni and /metrics across watchdog worker restarts.

    Each watchdog worker counts its fences from 0, and one is often replaced right after a fence (a
    supervisor that thaws finds every worker's heartbeat overdue).  The supervisor, which relays every
    WatchdogState, keeps the sum and the latest time.
    """

    retired: int = 0  # fences counted by workers that have since been replaced
    current: int = 0  # the count the latest report carried
    last: float | None = None

    def carry(self, fences: int, last_fence: float | None) -> tuple[int, float | None]:
        """(the node's fences so far, the latest fence's time) given one worker's report."""
        if fences < self.current:
            self.retired += self.current  # a new worker: the old one's count stays
        self.current = fences
        if last_fence is not None and (self.last is None or last_fence > self.last):
            self.last = last_fence
        return self.retired + self.current, self.last
