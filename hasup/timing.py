"""Every deadline hasup keeps, derived from the settings in one place, with the rules between them.

DESIGN.md §5.  The workers and the supervisor read their timeouts from
`Deadlines`; `problems()` says which rule a combination of settings
breaks.  It is checked at start (a broken static setting is a
configuration error) and whenever the dynamic configuration changes (then
it is logged: etcd's values are the cluster's, not this node's to refuse).

The chain that matters most, for a leader whose election worker freezes:
the last lease was granted at r, valid until r + ttl; the watchdog fires
no earlier than r + ttl - safety_margin - epsilon - 1 (whole-second device
timeouts); the freeze can come just before the next renewal at r +
loop_wait; the supervisor notices within the election heartbeat, kills
and respawns it, and the new worker renews.  So the election heartbeat
must fit in what is left, or a frozen election worker costs a reset.
"""

from __future__ import annotations

from dataclasses import dataclass

from hasup.watchdog.lease import MAX_PET_INTERVAL, device_timeout, effective_safety_margin, settings_problem

PROBE_INTERVAL = 1.0  # a healthy PostgreSQL is probed this often
PROBE_TIMEOUT = 1.0  # a trivial read-only query that takes longer counts as a failed probe
FAILED_PROBES_TO_FENCE = 2  # one slow probe is a blip, never a reason to kill a primary
FENCE_TIMEOUT = 1.0  # the supervisor's bound for killing and confirming a hung PostgreSQL
EPSILON = 0.5  # the lease rule's check-to-pet allowance (hasup.watchdog.lease)
RESPAWN = 0.5  # fork a worker, read etcd once, renew: what a replacement election worker needs
DEFAULT_HEALTH_DEADLINE = 3.0
MIN_HEALTH_DEADLINE = FAILED_PROBES_TO_FENCE * PROBE_TIMEOUT + PROBE_INTERVAL
# postgresql.callback_timeout: a callback (on_start, on_role_change, ...) still running after this is
# killed with its process group. Hooks move a VIP, update DNS or pgbouncer: seconds. A minute, like
# pg_ctl_timeout's default, leaves room for a slow retry yet ends a hung script; nothing waits for it.
DEFAULT_CALLBACK_TIMEOUT = 60.0
FAST_PING_INTERVAL = 0.5  # the election and watchdog heartbeats are short: ping them often enough to measure
PING_INTERVAL = 2.0
MAX_ELECTION_HEARTBEAT = 5.0
POSTGRES_HEARTBEAT = 5.0  # its loop blocks on one probe (1 s) or one pg_controldata at most
OTHER_HEARTBEAT = 15.0


@dataclass(frozen=True)
class Deadlines:
    ttl: float
    loop_wait: float
    retry_timeout: float
    safety_margin: float
    health_deadline: float = DEFAULT_HEALTH_DEADLINE
    watchdog_on: bool = True  # watchdog.mode is not off

    @classmethod
    def of(cls, ttl: float, loop_wait: float, retry_timeout: float, safety_margin: float,
           health_deadline: float = DEFAULT_HEALTH_DEADLINE, watchdog_on: bool = True) -> Deadlines:
        return cls(float(ttl), float(loop_wait), float(retry_timeout),
                   float(effective_safety_margin(safety_margin, ttl)), float(health_deadline), watchdog_on)

    @property
    def watchdog_timeout(self) -> int | None:
        """W (DESIGN §4); None when no whole second fits."""
        return device_timeout(self.ttl, self.loop_wait, self.safety_margin, EPSILON)

    @property
    def election_budget(self) -> float:
        """Seconds from a frozen election worker's last answer until a replacement must have renewed."""
        earliest_reset = self.ttl - self.safety_margin - EPSILON - 1.0
        return earliest_reset - self.loop_wait - RESPAWN - FAST_PING_INTERVAL

    @property
    def election_heartbeat(self) -> float:
        # Never below 1 s: election's loop keeps answering while etcd calls run on
        # their own thread, but a busy machine can still delay it by a few hundred ms.
        return max(1.0, min(MAX_ELECTION_HEARTBEAT, self.election_budget))

    def heartbeat(self, role: str) -> float:
        """How long a worker may go without answering a ping before it is replaced."""
        if role == "election":
            return self.election_heartbeat
        if role == "watchdog":
            return self.watchdog_heartbeat
        if role == "postgres":
            return POSTGRES_HEARTBEAT
        return OTHER_HEARTBEAT

    @property
    def watchdog_heartbeat(self) -> float:
        """A frozen watchdog worker holds the device open without petting it: the device fires W after the
        last pet (at most MAX_PET_INTERVAL before the freeze) unless a replacement opens and pets it first.
        Its loop makes no I/O beyond the device, so a short heartbeat is safe."""
        w = self.watchdog_timeout
        if w is None or not self.watchdog_on:
            return OTHER_HEARTBEAT
        fits = w - MAX_PET_INTERVAL - FAST_PING_INTERVAL - RESPAWN - EPSILON
        # Under a second no replacement beats the device anyway: a frozen worker costs a reset either way,
        # and a hair-trigger heartbeat would only restart a busy one.
        return min(OTHER_HEARTBEAT, fits) if fits >= 1.0 else OTHER_HEARTBEAT

    @staticmethod
    def ping_interval(role: str) -> float:
        return FAST_PING_INTERVAL if role in ("election", "watchdog") else PING_INTERVAL

    @property
    def pg_report_max_age(self) -> float:
        """A PgState older than this does not prove a live postgres worker (it reports after every probe)."""
        return PROBE_INTERVAL + PROBE_TIMEOUT + 1.0

    def problems(self, watchdog: bool) -> list[str]:
        """Each rule these settings break, one line each (empty: all hold)."""
        out = []
        if self.health_deadline < MIN_HEALTH_DEADLINE:
            out.append(f"postgresql.health_deadline: must be at least {MIN_HEALTH_DEADLINE:g} s "
                       f"({FAILED_PROBES_TO_FENCE} failed probes of {PROBE_TIMEOUT:g} s, {PROBE_INTERVAL:g} s apart), "
                       f"got {self.health_deadline:g}")
        if watchdog:
            problem = settings_problem(self.ttl, self.loop_wait, self.retry_timeout, self.safety_margin, EPSILON)
            if problem:
                out.append(f"watchdog: {problem}")
            elif self.watchdog_timeout is None:
                out.append("watchdog: no device timeout of at least 1 s fits ttl - safety_margin - loop_wait")
            if self.election_budget < 1.0:
                needed = self.ttl - self.safety_margin - self.loop_wait - self.election_budget + 1.0
                out.append(f"watchdog: a frozen election worker cannot be replaced before the watchdog resets the "
                           f"node: ttl - safety_margin - loop_wait must be at least {needed:g} s")
        return out
