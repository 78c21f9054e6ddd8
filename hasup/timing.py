"""Every deadline hasup keeps, derived from the settings in one place, with the rules between them.

The workers and the supervisor read their timeouts from here: the figures fixed in code (probe
interval, keepalives, heartbeats, the lease rule's epsilon, the HAProxy check the docs ship) and
the bounds derived from them (`Figures`), and those that also depend on the settings
(`Deadlines`).  `Deadlines.problems()` says which rule a combination breaks.  Its static part (the
fixed figures and the node's own postgresql.health_deadline) is checked when the file is loaded: a
broken one is a configuration error.  The whole of it is checked at start and whenever the
dynamic configuration changes; then a broken rule is logged, since etcd's values are the
cluster's, not this node's to refuse.  Nothing here imports from the rest of hasup.

The chain that matters most, for a leader whose election worker freezes: the last lease was
granted at r, valid until r + ttl; the watchdog fires no earlier than r + ttl - safety_margin -
EPSILON - MIN_TIMEOUT (whole-second device timeouts); the freeze can come just before the next
renewal at r + loop_wait; the supervisor notices within the election heartbeat, kills and
respawns it, and the new worker renews.  So the election heartbeat must fit in what is left, or a
frozen election worker costs a reset.  The replacement assumes SIGABRT ends a worker (its default
action; faulthandler dumps the stack and re-raises it): one that survives it costs ABORT_GRACE more.

The chain behind /primary: the postgres worker probes every PROBE_INTERVAL (each probe bounded by
PROBE_TIMEOUT) and sends its PgState when it changes, or unchanged after KEEPALIVE; the api
renders what it receives at once.  So a live worker's last probe, as /primary sees it, is never
older than KEEPALIVE + PROBE_INTERVAL + PROBE_TIMEOUT plus the trip (DELIVERY); past that the
worker or the api is stuck and role paths answer 503, before HAProxy's inter x fall would notice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# -- the lease rule (docs/design.md §4, hasup.watchdog.lease) --------------------------------------
EPSILON = 0.5  # bounds the time between the lease check and the pet's syscall; the worker makes no I/O between
MIN_TIMEOUT = 1  # Linux watchdog timeouts are whole seconds; below one there is nothing left to set
# Pets come every timeout/2, but at least this often: a frozen watchdog worker then leaves the device
# nearly its whole timeout, which is the supervisor's time to replace it (Deadlines.watchdog_heartbeat).
MAX_PET_INTERVAL = 1.0
RENEWAL_LATENCY = 0.5  # how late a healthy renewal may land after it starts, for the choice of W

# -- PostgreSQL's health ------------------------------------------------------------------------
PROBE_INTERVAL = 1.0  # a healthy PostgreSQL is probed this often
PROBE_TIMEOUT = 1.0  # a trivial read-only query that takes longer counts as a failed probe
# The probe's costly facts that no quick column hints at (pending_restart after a reload from outside, say)
# are re-read this often; what election acts on at once (role, timeline, replication rows) is hinted at.
FULL_PROBE_INTERVAL = 10.0
# hasup's own reload: PostgreSQL takes its SIGHUP within milliseconds; read pending_restart this much later.
RELOAD_SETTLE = 1.0
FAILED_PROBES_TO_FENCE = 2  # one slow probe is a blip, never a reason to kill a primary
FENCE_TIMEOUT = 1.0  # the supervisor's bound for killing and confirming a hung PostgreSQL
DEFAULT_HEALTH_DEADLINE = 3.0
# A PostgreSQL action that failed (a follow that waits for the leader's checkpoint, a start that exits)
# is decided again this much later, not at once: what made it fail rarely ends within milliseconds, and
# an immediate retry loops, hammering the leader and the log.
FAILED_ACTION_RETRY = 1.0
# postgresql.callback_timeout: a callback (on_start, on_role_change, ...) still running after this is
# killed with its process group. Hooks move a VIP, update DNS or pgbouncer: seconds. A minute, like
# pg_ctl_timeout's default, leaves room for a slow retry yet ends a hung script; nothing waits for it.
DEFAULT_CALLBACK_TIMEOUT = 60.0

# -- reports between processes ---------------------------------------------------------------------
# An unchanged PgState is re-sent this often: an idle node should not pay for a message every probe,
# yet /primary must see a fresh probe well within HAProxy's inter x fall (Figures.primary_staleness).
KEEPALIVE = 3.0
DELIVERY = 0.5  # a message's trip through the supervisor's outbox to its reader, and what the reader does with it
RERENDER = 5.0  # the api re-renders at least this often, so produced_at proves its reader thread turns
# The reader thread's wait ends when the next render is due (hasup.workers.api ChannelReader._wait); then it
# renders and writes the snapshot.  The slack is for a busy machine's scheduling.
RENDER_SLACK = 1.0
REPORT_SLACK = 1.0  # what a failing worker's report may take beyond its probe, generously (pg_report_max_age)

# -- the supervisor's watch over its workers --------------------------------------------------------
RESPAWN = 0.5  # fork a worker, read etcd once, renew: what a replacement election worker needs
# A frozen worker is noticed its heartbeat after its last answer, however often it is pinged: how often
# decides only how much of the heartbeat a healthy worker has left to answer in, and what an idle node
# spends on pings (each costs the supervisor and the worker a wake-up).  A worker is pinged a third of
# its heartbeat apart, never more often than FAST_PING_INTERVAL, and, where a budget bounds heartbeat and
# ping together (election, watchdog), within what the heartbeat leaves of it.
FAST_PING_INTERVAL = 0.5
PINGS_PER_HEARTBEAT = 3
PING_INTERVAL = 2.0  # the postgres worker's: its heartbeat must cover one ping interval and one blocked probe
MAX_ELECTION_HEARTBEAT = 5.0
POSTGRES_HEARTBEAT = 5.0  # its loop blocks on one probe (1 s) or one pg_controldata at most
OTHER_HEARTBEAT = 15.0
ABORT_GRACE = 2.0  # SIGABRT lets a stuck worker dump its stack; SIGKILL follows if it is still there after this

# -- the load balancer in front (docs/haproxy.cfg, `default-server inter 2s fall 3`) -----------------
# The api trusts election's ClusterView for loop_wait + retry_timeout (a cycle, and its slowest etcd read)
# plus this much delivery and scheduling slack, and never longer than ttl: past it the leader key may
# have expired unseen.
VIEW_SLACK = 2.0
HAPROXY_INTER = 2.0  # seconds between HAProxy's checks of /primary and /replica
HAPROXY_FALL = 3  # failed checks in a row before HAProxy marks a server down


@dataclass(frozen=True)
class Figures:
    """The figures fixed in code, and the bounds derived from them alone.

    One field per figure a rule depends on, so a test can break each rule with one `replace()`;
    hasup itself only ever uses `FIGURES`, the module's constants.
    """

    probe_interval: float = PROBE_INTERVAL
    probe_timeout: float = PROBE_TIMEOUT
    failed_probes_to_fence: int = FAILED_PROBES_TO_FENCE
    keepalive: float = KEEPALIVE
    delivery: float = DELIVERY
    rerender: float = RERENDER
    render_slack: float = RENDER_SLACK
    report_slack: float = REPORT_SLACK
    ping_interval: float = PING_INTERVAL
    postgres_heartbeat: float = POSTGRES_HEARTBEAT
    haproxy_inter: float = HAPROXY_INTER
    haproxy_fall: int = HAPROXY_FALL

    @property
    def min_health_deadline(self) -> float:
        """The failed probes a fence needs, back to back: a slow probe alone never fences."""
        return self.failed_probes_to_fence * self.probe_timeout + self.probe_interval

    @property
    def report_gap(self) -> float:
        """The longest a live postgres worker whose probes succeed goes without sending a PgState."""
        return self.keepalive + self.probe_interval + self.probe_timeout

    @property
    def pg_state_max_age(self) -> float:
        """The api's bound on a PgState's probe_at: older, the worker is stuck and role paths answer 503."""
        return self.report_gap + self.delivery

    @property
    def snapshot_max_age(self) -> float:
        """The api's bound on its snapshot's produced_at: older, its reader thread is stuck."""
        return self.rerender + self.render_slack

    @property
    def primary_staleness(self) -> float:
        """The oldest probe a 200 on /primary can rest on.  The snapshot's age adds nothing: the probe
        it carries is never newer than its render, so the PgState bound is the one that binds."""
        return self.pg_state_max_age

    @property
    def haproxy_down_after(self) -> float:
        """How long HAProxy keeps sending clients to a server whose checks fail (inter x fall)."""
        return self.haproxy_inter * self.haproxy_fall

    @property
    def stale_pgstate(self) -> float:
        """Election acts on no PgState received longer ago: its worker is stuck or being replaced.
        A live worker's loop blocks for less than its heartbeat, or the supervisor replaces it."""
        return self.keepalive + self.probe_interval + self.postgres_heartbeat + self.delivery

    @property
    def pg_report_max_age(self) -> float:
        """A PgState older than this does not vouch for the failed probes it reports (fencing):
        a worker whose probes fail sends a report after every probe."""
        return self.probe_interval + self.probe_timeout + self.report_slack

    def problems(self) -> list[str]:
        """Each rule between the fixed figures that they break, one line each."""
        out = []
        if self.ping_interval + self.probe_timeout >= self.postgres_heartbeat:
            out.append(f"timing: a postgres worker blocked on one probe ({self.probe_timeout:g} s) must answer the "
                       f"next ping ({self.ping_interval:g} s apart) within its heartbeat of "
                       f"{self.postgres_heartbeat:g} s")
        if self.stale_pgstate <= self.pg_state_max_age:
            out.append(f"timing: election would take a live postgres worker's PgState for stale (after "
                       f"{self.stale_pgstate:g} s; a live one reports within {self.pg_state_max_age:g} s)")
        if self.pg_report_max_age <= self.probe_interval + self.probe_timeout + self.delivery:
            out.append(f"timing: a postgres worker failing its probes reports every "
                       f"{self.probe_interval + self.probe_timeout + self.delivery:g} s, but its reports vouch "
                       f"for only {self.pg_report_max_age:g} s: a hung primary would never be fenced")
        if self.primary_staleness >= self.haproxy_down_after:
            out.append(f"timing: /primary may answer from a probe {self.primary_staleness:g} s old "
                       f"(keepalive {self.keepalive:g} + probe interval {self.probe_interval:g} + probe timeout "
                       f"{self.probe_timeout:g} + delivery {self.delivery:g}), not below HAProxy's inter x fall "
                       f"({self.haproxy_inter:g} s x {self.haproxy_fall} = {self.haproxy_down_after:g} s, "
                       "docs/haproxy.cfg)")
        return out


FIGURES = Figures()
MIN_HEALTH_DEADLINE = FIGURES.min_health_deadline
PG_STATE_MAX_AGE = FIGURES.pg_state_max_age
SNAPSHOT_MAX_AGE = FIGURES.snapshot_max_age
PRIMARY_STALENESS = FIGURES.primary_staleness
STALE_PGSTATE = FIGURES.stale_pgstate
PG_REPORT_MAX_AGE = FIGURES.pg_report_max_age


# -- the lease rule's arithmetic on the settings (docs/design.md §4) --------------------------------


def view_max_age(ttl: float, loop_wait: float, retry_timeout: float) -> float:
    """How old election's ClusterView may be before the api stops answering from it."""
    return min(ttl, loop_wait + retry_timeout + VIEW_SLACK)


def effective_safety_margin(configured: float, ttl: float) -> float:
    """-1 means half of ttl, as in Patroni."""
    return ttl // 2 if configured == -1 else configured


def settings_problem(ttl: float, loop_wait: float, retry_timeout: float, safety_margin: float,
                     epsilon: float = EPSILON) -> str | None:
    """Why these timings cannot drive a watchdog safely, or None.

    A slow but healthy renewal (loop_wait, then up to retry_timeout) must land before the device
    can fire.  Whole-second timeouts make it fire up to MIN_TIMEOUT + epsilon before the limit
    (`LeaseRule.fitting_timeout`), so that much comes off the room too; without it, an etcd answer
    that takes the whole retry_timeout (or a failsafe round after it) resets a healthy leader.
    """
    slack = epsilon + MIN_TIMEOUT
    if loop_wait + retry_timeout + slack > ttl - safety_margin:
        return (f"loop_wait + retry_timeout + {slack:g} must not exceed ttl - safety_margin "
                f"({loop_wait:g} + {retry_timeout:g} + {slack:g} > {ttl:g} - {safety_margin:g}; the {slack:g} s is "
                "the watchdog's whole-second granularity and the check-to-pet allowance)")
    return None


def device_timeout(ttl: float, loop_wait: float, safety_margin: float, epsilon: float = EPSILON,
                   renewal_latency: float = RENEWAL_LATENCY) -> int | None:
    """The device timeout W: the largest that still lets a pet follow each renewal.

    A renewal that starts at t grants t + ttl; the next starts loop_wait later and takes up to
    renewal_latency, so a pet right after it needs
    W <= ttl - safety_margin - epsilon - loop_wait - renewal_latency.
    """
    w = math.floor(ttl - safety_margin - epsilon - loop_wait - renewal_latency)
    return w if w >= MIN_TIMEOUT else None


# -- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deadlines:
    ttl: float
    loop_wait: float
    retry_timeout: float
    safety_margin: float
    health_deadline: float = DEFAULT_HEALTH_DEADLINE
    watchdog_on: bool = True  # watchdog.mode is not off
    figures: Figures = FIGURES
    fence_on: bool = False  # watchdog.software_fence

    @classmethod
    def of(cls, ttl: float, loop_wait: float, retry_timeout: float, safety_margin: float,
           health_deadline: float = DEFAULT_HEALTH_DEADLINE, watchdog_on: bool = True,
           figures: Figures = FIGURES, fence_on: bool = False) -> Deadlines:
        return cls(float(ttl), float(loop_wait), float(retry_timeout),
                   float(effective_safety_margin(safety_margin, ttl)), float(health_deadline), watchdog_on, figures,
                   fence_on)

    @property
    def watchdog_timeout(self) -> int | None:
        """W (docs/design.md §4); None when no whole second fits."""
        return device_timeout(self.ttl, self.loop_wait, self.safety_margin)

    @property
    def earliest_reset(self) -> float:
        """Seconds after a renewal's start before which the watchdog cannot fire (whole-second timeouts)."""
        return self.ttl - self.safety_margin - EPSILON - MIN_TIMEOUT

    @property
    def election_room(self) -> float:
        """Seconds from a frozen election worker's last answer until it must have been noticed (heartbeat plus
        ping interval, as the tests model it) for a replacement to renew before the earliest reset."""
        return self.earliest_reset - self.loop_wait - RESPAWN

    @property
    def election_budget(self) -> float:
        """Seconds from a frozen election worker's last answer until a replacement must have renewed."""
        return self.earliest_reset - self.loop_wait - RESPAWN - FAST_PING_INTERVAL

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
            return self.figures.postgres_heartbeat
        return OTHER_HEARTBEAT

    @property
    def watchdog_heartbeat(self) -> float:
        """A frozen watchdog worker holds the device open without petting it: the device fires W after the
        last pet (at most MAX_PET_INTERVAL before the freeze) unless a replacement opens and pets it first.
        With the software fence it also owes a fence at `earliest_reset` after the last lease it saw
        (fence_budget).  Its loop makes no I/O beyond the device, /proc and the lease pipe, so a short
        heartbeat is safe."""
        room = self.watchdog_room
        if room is None:
            return OTHER_HEARTBEAT
        fits = room - self.watchdog_ping_share
        # Under a second no replacement is in time anyway: a frozen worker costs a reset (or a fence not
        # made) either way, and a hair-trigger heartbeat would only restart a busy one.
        return min(OTHER_HEARTBEAT, fits) if fits >= 1.0 else OTHER_HEARTBEAT

    @property
    def fence_budget(self) -> float:
        """Seconds from a frozen watchdog worker's last answer until it must have been noticed for a
        replacement to make the software fence in time: the last lease it saw may be loop_wait +
        RENEWAL_LATENCY old, and the fence it owes falls due `earliest_reset` after that lease's renewal
        began (hasup.watchdog.fence)."""
        return self.earliest_reset - self.loop_wait - RENEWAL_LATENCY - RESPAWN

    @property
    def watchdog_room(self) -> float | None:
        """Seconds from a frozen watchdog worker's last answer until it must have been noticed (heartbeat plus
        ping interval) for a replacement to pet before the device fires and to make the fence the worker
        owes; None when it owes neither."""
        rooms = []
        w = self.watchdog_timeout
        if w is not None and self.watchdog_on:
            rooms.append(w - MAX_PET_INTERVAL - RESPAWN - EPSILON)
        if self.fence_on:
            rooms.append(self.fence_budget)
        return min(rooms) if rooms else None

    @property
    def watchdog_ping_share(self) -> float:
        """The part of watchdog_room its pings take: a quarter, leaving the heartbeat three pings long."""
        room = self.watchdog_room or 0.0
        return max(FAST_PING_INTERVAL, room / (PINGS_PER_HEARTBEAT + 1))

    def ping_interval(self, role: str) -> float:
        """How often the supervisor pings a worker (see FAST_PING_INTERVAL)."""
        if role == "postgres":
            return self.figures.ping_interval
        heartbeat = self.heartbeat(role)
        spare = float("inf")
        if role == "election":
            spare = self.election_room - heartbeat
        elif role == "watchdog" and self.watchdog_room is not None and heartbeat < OTHER_HEARTBEAT:
            spare = self.watchdog_room - heartbeat
        return max(FAST_PING_INTERVAL, min(heartbeat / PINGS_PER_HEARTBEAT, spare))

    @property
    def pg_report_max_age(self) -> float:
        return self.figures.pg_report_max_age

    def static_problems(self) -> list[str]:
        """The rules that involve only the fixed figures and this node's own file; a broken one is a
        configuration error (hasup.config.file)."""
        out = []
        minimum = self.figures.min_health_deadline
        if self.health_deadline < minimum:
            out.append(f"postgresql.health_deadline: must be at least {minimum:g} s "
                       f"({self.figures.failed_probes_to_fence} failed probes of {self.figures.probe_timeout:g} s, "
                       f"{self.figures.probe_interval:g} s apart), got {self.health_deadline:g}")
        return out + self.figures.problems()

    def lease_problems(self, watchdog: bool) -> list[str]:
        """The rules that involve the cluster's timing (ttl, loop_wait, retry_timeout) with a watchdog."""
        if not watchdog:
            return []
        out = []
        problem = settings_problem(self.ttl, self.loop_wait, self.retry_timeout, self.safety_margin)
        if problem:
            out.append(f"watchdog: {problem}")
        elif self.watchdog_timeout is None:
            out.append("watchdog: no device timeout of at least 1 s fits ttl - safety_margin - loop_wait")
        if self.election_budget < 1.0:
            needed = self.ttl - self.safety_margin - self.loop_wait - self.election_budget + 1.0
            out.append(f"watchdog: a frozen election worker cannot be replaced before the watchdog resets the "
                       f"node: ttl - safety_margin - loop_wait must be at least {needed:g} s")
        return out

    def problems(self, watchdog: bool) -> list[str]:
        """Each rule these settings break, one line each (empty: all hold)."""
        return self.static_problems() + self.lease_problems(watchdog)
