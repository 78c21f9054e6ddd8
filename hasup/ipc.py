"""Typed messages between the supervisor and its workers, and their framing.

Every pipe is a Unix socketpair.  Stream pairs carry length-prefixed JSON
frames; the election->watchdog lease pair is SOCK_SEQPACKET, where each
datagram is one whole frame, so a writer killed mid-send cannot tear it.

Messages are small frozen dataclasses.  Each declares where the supervisor
routes it (``ROUTE``) and whether it is a snapshot (latest value wins, so
queued copies coalesce) or something that must be delivered in order.

No frame is ever larger than MAX_FRAME, and the sender sees to it when it
makes the frame (``fit``): a message that carries outside data (a cluster
view holding etcd's values, a log line quoting one) loses its least needed
parts in a fixed order (``SHRINK``), says so once, and is dropped rather
than sent over the limit.  A configuration reload, which must arrive whole,
travels as several ``Part`` frames instead.  A receiver drops a frame over
the limit, or one it cannot decode, and counts it: a peer is only cut off
for a stream it can no longer follow.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from hasup.postgresql.state import PgStatus

FRAME_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 20  # no frame is larger, sent or received
# Senders aim this far below MAX_FRAME: the supervisor re-encodes what it relays with its own
# sequence number and clock, which may take a few more digits than the original's.
FRAME_SLACK = 256
MAX_MESSAGE = 16 * 1024  # design budget for one message (tests check it)
# A header announcing more than this is not an over-large message but a stream out of step.
MAX_SKIP = 64 << 20
BAD_FRAMES_IN_A_ROW = 8  # undecodable frames one after another: the stream is out of step
MAX_ASSEMBLED = 16 << 20  # bytes of one message sent in parts (a configuration reload)
LOG_REPEAT = 300.0  # seconds before the same trimming or dropping is logged again
MAX_COUNT = 10**15  # the largest counter a message may carry: more is a corrupt frame, not a busy node
SECRET_KEYS = frozenset({"password", "keyfile_password", "key_password", "sslpassword"})

log = logging.getLogger("hasup.ipc")


class ProtocolError(Exception):
    """The byte stream on a pipe cannot be decoded."""


class PeerClosed(Exception):
    """The other end of a pipe has gone away."""


@dataclass(frozen=True)
class Message:
    ROUTE: ClassVar[tuple[str, ...]] = ()
    SNAPSHOT: ClassVar[bool] = False
    SPLIT: ClassVar[bool] = False  # too large for one frame, it travels in Parts rather than shrinking


def check_count(name: str, value: object) -> None:
    """A counter field parsed at the boundary: an int in [0, MAX_COUNT], else the frame is rejected
    (decode turns the ValueError into a dropped, counted frame)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name}: expected a count from 0 to {MAX_COUNT}, got {str(value)[:40]!r}")


# -- heartbeats, logs, lifecycle ---------------------------------------------


@dataclass(frozen=True)
class Ping(Message):
    n: int


@dataclass(frozen=True)
class Pong(Message):
    n: int
    logs_lost: int = 0  # log records this worker dropped so far (its pipe was full): the supervisor adds them up

    def __post_init__(self) -> None:
        check_count("logs_lost", self.logs_lost)


@dataclass(frozen=True)
class LogRecord(Message):
    ROUTE = ("supervisor",)
    level: int
    logger: str
    message: str
    created: float  # wall clock, for humans
    role: str = ""


@dataclass(frozen=True)
class LogLoss(Message):
    """Supervisor -> api: log records lost so far on this node, by every worker and the writer (/metrics)."""

    SNAPSHOT = True
    lost: int

    def __post_init__(self) -> None:
        check_count("lost", self.lost)


@dataclass(frozen=True)
class ConfigChanged(Message):
    """The supervisor re-read the configuration file (SIGHUP)."""

    SPLIT = True  # a file may hold 1 MiB, more as JSON; a configuration cut short would be a wrong one
    raw: dict[str, Any]

    def __repr__(self) -> str:
        return f"ConfigChanged(raw={redact(self.raw)!r})"


@dataclass(frozen=True)
class Shutdown(Message):
    """Supervisor -> election: stop PostgreSQL in order, release the lock, report."""

    reason: str = "SIGTERM"


@dataclass(frozen=True)
class ApiListening(Message):
    """api -> supervisor: gunicorn listens (when_ready); one of the conditions for systemd's READY=1."""

    ROUTE = ("supervisor",)


@dataclass(frozen=True)
class ShutdownDone(Message):
    ROUTE = ("supervisor",)
    stopped_postgres: bool
    released_lock: bool
    left_running: bool = False  # paused cluster: PostgreSQL and the leader key stay, on purpose


# -- snapshots ----------------------------------------------------------------


@dataclass(frozen=True)
class PgState(Message):
    """What the postgres worker last saw of its PostgreSQL."""

    ROUTE = ("election", "api", "vip")
    SNAPSHOT = True
    state: str  # a PgStatus (hasup.postgresql.state): Patroni's PostgresqlState strings
    role: str  # primary, replica, uninitialized, demoted, promoted
    data_dir_empty: bool
    probe_ok: bool
    probe_at: float  # monotonic time these facts were last confirmed (a hung server: its last good probe)
    worker_pid: int = 0  # a new pid means requests in flight to the old worker were lost
    failed_probes: int = 0
    busy: str = ""  # long action in progress ("bootstrap", "creating replica", "promote", ...)
    postmaster_pid: int | None = None
    postmaster_start_time: str | None = None
    server_version: int | None = None
    sysid: str | None = None
    timeline: int | None = None
    # The timeline of the latest checkpoint: on a primary it lags `timeline` until the first
    # checkpoint after a promotion, and pg_rewind against it would see no fork before then.
    checkpoint_timeline: int | None = None
    wal_position: int | None = None  # primary: flush LSN; replica: max(received, replayed)
    received_location: int | None = None
    replayed_location: int | None = None
    replayed_timestamp: str | None = None
    replay_paused: bool | None = None
    replication_state: str | None = None
    upstream: str | None = None  # member this replica streams from, per its primary_conninfo
    replication: tuple[dict[str, Any], ...] = ()
    timeline_history: tuple[tuple[int, int, str], ...] = ()  # (tli, switch lsn, reason) on a primary
    pending_restart: bool = False
    controldata_state: str | None = None  # "in production", "shut down", ...
    sync_standby_names: str | None = None  # synchronous_standby_names as PostgreSQL runs with it
    slots: dict[str, int] | None = None  # leader: managed replication slots and positions (None: not known)
    retain_slots: tuple[str, ...] = ()  # leader: member slots kept, incl. vanished members within member_slots_ttl

    def __post_init__(self) -> None:
        # Parsed at the boundary: a state the postgres worker never emits is a broken frame, not a new
        # state for the policy to fall through on.  The enum's value, so the wire format stays a string.
        object.__setattr__(self, "state", PgStatus(self.state))
        # The policy resumes a paused replay on it (hasup.election.policy): a truthy string is no "yes".
        if self.replay_paused is not None and not isinstance(self.replay_paused, bool):
            raise ValueError(f"replay_paused: expected true, false or null, got {str(self.replay_paused)[:40]!r}")


@dataclass(frozen=True)
class ClusterView(Message):
    """Election's view of the cluster, for the API and the postgres worker."""

    ROUTE = ("api", "postgres", "vip")
    SNAPSHOT = True
    read_at: float  # monotonic time of the etcd read (0: never read)
    read_at_wall: float
    leader: str | None
    holds_lock: bool
    lock_valid_until: float  # monotonic; meaningful while holds_lock
    members: dict[str, dict[str, Any]]
    config: dict[str, Any]
    history: tuple[Any, ...]
    optime: int | None
    initialize: str | None
    sync: dict[str, Any] | None
    failover: dict[str, Any] | None
    paused: bool
    last_decision: str = ""
    scheduled_restart: dict[str, Any] | None = None  # this node's, as /patroni shows it
    status: dict[str, Any] = field(default_factory=dict)  # the status key (optime, slots, retain_slots)
    dcs_bad_values: int = 0  # etcd values rejected at the boundary so far (hasup.dcs.parse), for /metrics
    cycle_errors: int = 0  # election cycles that failed with an unexpected error so far, for /metrics
    # Monotonic: failsafe mode holds until then (this leader was confirmed by every member while etcd
    # was gone, or the leader pinged this member), for /patroni's failsafe_mode_is_active.
    failsafe_until: float = 0.0
    # What fit() left out to keep the view within a frame (VIEW_PARTS names); a consumer must not take
    # a part named here for the whole (the postgres worker keeps its last complete config and slots).
    left_out: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lease(Message):
    """The leader key cannot expire before valid_until (monotonic), by etcd's clock."""

    SNAPSHOT = True
    valid_until: float
    ttl: int
    loop_wait: int = 10
    retry_timeout: int = 10


@dataclass(frozen=True)
class WorkerRestarted(Message):
    """Supervisor -> election: a worker came back (a new watchdog worker needs the current lease now)."""

    role: str


@dataclass(frozen=True)
class Disarm(Message):
    """Election -> watchdog: PostgreSQL has stopped or been demoted; magic-close the device."""

    reason: str = ""


@dataclass(frozen=True)
class WatchdogState(Message):
    ROUTE = ("api", "election")
    SNAPSHOT = True
    mode: str
    armed: bool
    timeout: int | None
    last_pet: float | None
    lease_valid_until: float | None
    failed: bool = False
    reason: str = ""
    protection: str = ""  # device, software fence or none (hasup.watchdog.fence)
    fences: int = 0  # times the software fence killed PostgreSQL since this worker started
    last_fence: float | None = None  # wall clock of the last fence's kill
    last_fence_result: str = ""

    def __post_init__(self) -> None:
        check_count("fences", self.fences)
        if self.protection not in ("", "device", "software fence", "none"):
            raise ValueError(f"protection: expected device, software fence or none, got {str(self.protection)[:40]!r}")
        if self.last_fence is not None and (not isinstance(self.last_fence, int | float)
                                            or isinstance(self.last_fence, bool)):
            raise ValueError(f"last_fence: expected a time or null, got {str(self.last_fence)[:40]!r}")


# -- requests and replies -----------------------------------------------------


@dataclass(frozen=True)
class Request(Message):
    """A request with a correlation id and a deadline (monotonic).

    A reply past the deadline means the outcome is unknown, never that it failed.
    """

    ROUTE = ("postgres",)
    id: int
    deadline: float


@dataclass(frozen=True)
class Bootstrap(Request):
    pass


@dataclass(frozen=True)
class CreateReplica(Request):
    leader: str | None  # None: no member to clone from, only the no_leader replica methods run
    leader_conn_url: str | None


@dataclass(frozen=True)
class Start(Request):
    """Start PostgreSQL as it is (primary if it was one, else as a replica of `leader`)."""

    as_primary: bool
    leader: str | None = None
    leader_conn_url: str | None = None


@dataclass(frozen=True)
class Promote(Request):
    require_lsn: int | None = None  # refuse unless we have received WAL up to this (manual failover)


@dataclass(frozen=True)
class Demote(Request):
    """Switchover: CHECKPOINT, stop fast; reply with the shutdown checkpoint's LSN."""


@dataclass(frozen=True)
class Follow(Request):
    """Be a streaming replica of leader (None: a replica of nobody, yet).

    Stops a running primary (immediate), rewinds when timelines diverged and
    rewind is allowed, re-points primary_conninfo, starts or reloads.
    """

    leader: str | None
    leader_conn_url: str | None
    leader_timeline: int | None = None
    force_rewind: bool = False


@dataclass(frozen=True)
class Stop(Request):
    mode: str = "fast"  # smart, fast, immediate


@dataclass(frozen=True)
class SetSyncStandbys(Request):
    """Run with this synchronous_standby_names (re-render the configuration and reload)."""

    setting: str


@dataclass(frozen=True)
class ResumeReplay(Request):
    """pg_wal_replay_resume() on a replica whose WAL replay is paused."""


@dataclass(frozen=True)
class Restart(Request):
    """Stop fast and start again in the same role; timeout bounds the start (None: pg_ctl_timeout).

    leader: whom a replica streams from afterwards (the worker may have lost track of it)."""

    timeout: float | None = None
    leader: str | None = None
    leader_conn_url: str | None = None


@dataclass(frozen=True)
class Reinitialize(Request):
    """Stop (immediate), wipe the data directory, clone from leader and start as its replica.

    force: cancel whatever action is running first, instead of refusing."""

    leader: str
    leader_conn_url: str
    force: bool = False
    from_leader: bool = False  # pg_basebackup from the leader, not the create_replica_methods


# -- fencing -----------------------------------------------------------------------


@dataclass(frozen=True)
class Fence(Message):
    """election -> supervisor: kill every process of this node's hung PostgreSQL and confirm it."""

    ROUTE = ("supervisor",)
    postmaster_pid: int | None
    reason: str


@dataclass(frozen=True)
class FenceDone(Message):
    """supervisor -> election: only a confirmed fence lets election release the leader key."""

    confirmed: bool
    killed: tuple[int, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class StoppedForGiveUp(FenceDone):
    """supervisor -> election, when a crash loop ends the node: the supervisor stopped PostgreSQL itself
    and /proc confirms none of it is left.  Election may release the leader key on it as on a confirmed
    FenceDone (the same promise); a type of its own so no one reads a give-up as a fence."""


# -- admin requests from the REST API ---------------------------------------------


@dataclass(frozen=True)
class AdminRequest(Message):
    """api -> election: an operator's request (/restart, /reinitialize) that election must carry out.

    action is "restart", "cancel_restart", "reinitialize" or "failsafe"; params are already validated by the api.
    """

    ROUTE = ("election",)
    id: int
    deadline: float
    action: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AdminReply(Message):
    """election -> api: the HTTP status and the plain-text message Patroni answers with."""

    ROUTE = ("api",)
    id: int
    code: int
    message: str


@dataclass(frozen=True)
class Reply(Message):
    ROUTE = ("election",)
    id: int
    request: str
    ok: bool
    message: str = ""
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Part(Message):
    """One piece of a SPLIT message's encoding; the receiving Channel puts them together again.

    The pieces of one message are queued together and a stream keeps their order, so they
    arrive one after another: index 0 starts a message, count ends it."""

    total: int  # bytes of the whole encoding
    index: int
    count: int
    data: str  # a slice of the encoding (ASCII: json.dumps escapes everything else)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.__name__: cls
    for cls in (
        Ping, Pong, LogRecord, LogLoss, ConfigChanged, Shutdown, ApiListening, ShutdownDone, PgState, ClusterView,
        Lease, Disarm, WorkerRestarted, WatchdogState, Bootstrap, CreateReplica, Start, Promote, Demote, Follow, Stop,
        Restart, SetSyncStandbys, ResumeReplay, Reinitialize, AdminRequest, AdminReply, Fence, FenceDone,
        StoppedForGiveUp, Reply, Part,
    )
}


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with secrets replaced, for logs and reprs."""
    if isinstance(value, dict):
        return {k: ("******" if k in SECRET_KEYS and v is not None else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


# -- encoding -------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    message: Message
    seq: int
    sent_at: float  # sender's monotonic clock


def _dumps(value: Any) -> str:
    # default=str: YAML hands the configuration over with dates in it; a reload must not raise on one.
    # ensure_ascii (the default) keeps every encoding ASCII, which Part relies on.
    return json.dumps(value, separators=(",", ":"), default=str)


def encode(message: Message, seq: int, clock: float) -> bytes:
    body = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    return _dumps({"k": type(message).__name__, "s": seq, "t": clock, "b": body}).encode()


# -- fitting a message into a frame ---------------------------------------------------

VIEW_HISTORY = 16  # newest history entries a trimmed view keeps (the cluster timeline is the last one's)
TEXT_LIMIT = 4096  # characters of free text (a reason, a reply, a decision) a trimmed message keeps
LOG_TEXT_LIMIT = 64 * 1024  # characters of a log line a trimmed record keeps: a traceback, not a quoted 1 MB value
CONFIG_VALUE_LIMIT = 4096  # bytes (as JSON) of one configuration value a trimmed view keeps
MEMBER_VALUE_LIMIT = 2048  # bytes (as JSON) of one field of a member's data a trimmed view keeps
# What hasup reads of a member's data: the health and /cluster documents (state, role, urls, positions,
# tags, restarts), the slot keeper (tags, state, role, conn_url, xlog_location), versions for humans.
MEMBER_FIELDS = frozenset({
    "conn_url", "api_url", "state", "role", "version", "hasup_version", "tags", "xlog_location", "timeline",
    "replication_state", "receive_lsn", "replay_lsn", "pending_restart", "pending_restart_reason",
    "scheduled_restart", "pause",
})
SYNC_FIELDS = frozenset({"leader", "sync_standby", "quorum"})
FREE_TEXT = frozenset({"message", "reason", "logger", "last_decision"})  # fields of prose, safe to cut
# The parts a ClusterView loses, in this order, while it is over the limit (its left_out names them).
# Never lost: leader, holds_lock, lock_valid_until, read_at, paused, optime, the small configuration
# values (ttl, loop_wait, retry_timeout, maximum_lag_on_failover, synchronous_mode, standby_cluster),
# the sync key's leader, sync_standby and quorum -- what /primary, /replica and /health answer from.
VIEW_PARTS = ("history", "member_fields", "status_slots", "config_values", "members", "extras", "sync_fields")

# A step gets the message and how many bytes it is over; it returns a smaller message and a few
# words on what went, or None for the detail when it had nothing to take.
Step = Callable[[Any, int], tuple[Any, str | None]]


def _size(value: Any) -> int:
    return len(_dumps(value))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit} characters left out]"


def _view_history(v: ClusterView, _over: int) -> tuple[ClusterView, str | None]:
    if len(v.history) <= VIEW_HISTORY:
        return v, None
    return replace(v, history=tuple(v.history[-VIEW_HISTORY:])), \
        f"history before the last {VIEW_HISTORY} of {len(v.history)} entries"


def _member_essentials(data: Any) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        return {}
    return {k: value for k, value in data.items() if k in MEMBER_FIELDS and _size(value) <= MEMBER_VALUE_LIMIT}


def _view_member_fields(v: ClusterView, _over: int) -> tuple[ClusterView, str | None]:
    members = {name: _member_essentials(data) for name, data in v.members.items()}
    if members == v.members:
        return v, None
    return replace(v, members=members), \
        f"members' fields hasup does not read, and any over {MEMBER_VALUE_LIMIT} bytes"


def _view_status_slots(v: ClusterView, _over: int) -> tuple[ClusterView, str | None]:
    status = v.status if isinstance(v.status, Mapping) else {}
    optime = status.get("optime")
    kept = {"optime": optime} if isinstance(optime, int) else {}
    if kept == v.status:
        return v, None
    return replace(v, status=kept), "the status key's slot positions (optime kept)"


def _trim_values(value: Mapping[str, Any], path: str, limit: int, left: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        where = f"{path}.{key}" if path else str(key)
        if _size(key) > limit:
            left.append(where[:40] + "...")
        elif _size(item) <= limit:
            out[key] = item
        elif isinstance(item, Mapping):
            out[key] = _trim_values(item, where, limit, left)  # a big section keeps its small settings
        else:
            left.append(where[:80])
    return out


def _view_config_values(v: ClusterView, _over: int) -> tuple[ClusterView, str | None]:
    left: list[str] = []
    config = _trim_values(v.config, "", CONFIG_VALUE_LIMIT, left) if isinstance(v.config, Mapping) else {}
    if not left:
        return v, None
    named = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    return replace(v, config=config), f"configuration values over {CONFIG_VALUE_LIMIT} bytes ({named})"


def _view_members(v: ClusterView, over: int) -> tuple[ClusterView, str | None]:
    """As few members as it takes, by name from the end; the leader and synchronous standbys stay."""
    sync = v.sync if isinstance(v.sync, Mapping) else {}
    listed = sync.get("sync_standby")
    kept = {v.leader} | ({n.strip() for n in listed.split(",")} if isinstance(listed, str) else
                         {str(n) for n in listed} if isinstance(listed, list | tuple) else set())
    members = dict(v.members)
    freed = 0
    for name in sorted(members, reverse=True):
        if freed >= over:
            break
        if name not in kept:
            freed += _size(name) + _size(members.pop(name)) + 2
    if len(members) == len(v.members):
        return v, None
    return replace(v, members=members), f"{len(v.members) - len(members)} of {len(v.members)} members"


def _view_extras(v: ClusterView, _over: int) -> tuple[ClusterView, str | None]:
    smaller = replace(v, history=(), failover=None, scheduled_restart=None,
                      last_decision=_cut(v.last_decision, TEXT_LIMIT),
                      initialize=_cut(v.initialize, TEXT_LIMIT) if v.initialize is not None else None)
    if smaller == v:
        return v, None
    return smaller, "all history, failover, scheduled_restart, and long text"


def _view_sync_fields(v: ClusterView, _over: int) -> tuple[ClusterView, str | None]:
    if not isinstance(v.sync, Mapping):
        return v, None
    sync = {k: value for k, value in v.sync.items() if k in SYNC_FIELDS}
    if sync == v.sync:
        return v, None
    return replace(v, sync=sync), "sync keys other than leader, sync_standby and quorum"


def _pg_timeline_history(pg: PgState, _over: int) -> tuple[PgState, str | None]:
    if len(pg.timeline_history) <= VIEW_HISTORY:
        return pg, None
    return replace(pg, timeline_history=pg.timeline_history[-VIEW_HISTORY:]), \
        f"timeline history before the last {VIEW_HISTORY} of {len(pg.timeline_history)} switches"


def _pg_slots(pg: PgState, _over: int) -> tuple[PgState, str | None]:
    if pg.slots is None and not pg.retain_slots:
        return pg, None
    return replace(pg, slots=None, retain_slots=()), "slot positions (reported as not known)"


def _pg_replication(pg: PgState, over: int) -> tuple[PgState, str | None]:
    rows = list(pg.replication)
    freed = 0
    while rows and freed < over:
        freed += _size(rows.pop()) + 1
    if len(rows) == len(pg.replication):
        return pg, None
    return replace(pg, replication=tuple(rows)), f"{len(pg.replication) - len(rows)} replication rows"


def _texts(message: Message, _over: int) -> tuple[Message, str | None]:
    """Every free-text field cut to its limit: the last resort for any message.  Only prose: a
    name or a URL cut short would be a different one, so a message too long in those is dropped."""
    limit = LOG_TEXT_LIMIT if isinstance(message, LogRecord) else TEXT_LIMIT
    cut = {f.name: _cut(value, limit) for f in dataclasses.fields(message)
           if f.name in FREE_TEXT and isinstance(value := getattr(message, f.name), str) and len(value) > limit}
    if not cut:
        return message, None
    return replace(message, **cut), f"text beyond {limit} characters in {', '.join(cut)}"


SHRINK: dict[type[Message], tuple[tuple[str, Step], ...]] = {
    ClusterView: (("history", _view_history), ("member_fields", _view_member_fields),
                  ("status_slots", _view_status_slots), ("config_values", _view_config_values),
                  ("members", _view_members), ("extras", _view_extras), ("sync_fields", _view_sync_fields)),
    PgState: (("timeline_history", _pg_timeline_history), ("slots", _pg_slots), ("replication", _pg_replication)),
}


@dataclass(frozen=True)
class Fitted:
    message: Message
    payload: bytes  # its encoding, within the limit
    left_out: tuple[str, ...] = ()  # names of the parts taken (SHRINK's, then "texts")
    details: tuple[str, ...] = ()  # what they held, for the log


def fit(message: Message, seq: int, clock: float, limit: int = MAX_FRAME - FRAME_SLACK) -> Fitted | None:
    """The message encoded within limit bytes, shrunk by SHRINK's steps in order as far as needed;
    None when even the smallest form is over (the caller drops it).  A view records what it lost."""
    payload = encode(message, seq, clock)
    if len(payload) <= limit:
        return Fitted(message, payload)
    left: list[str] = []
    details: list[str] = []
    records = any(f.name == "left_out" for f in dataclasses.fields(message))
    for name, step in SHRINK.get(type(message), ()) + (("texts", _texts),):
        message, detail = step(message, len(payload) - limit)
        if detail is None:
            continue
        left.append(name)
        details.append(detail)
        if records:
            message = replace(message, left_out=tuple(left))  # type: ignore[call-arg]
        payload = encode(message, seq, clock)
        if len(payload) <= limit:
            return Fitted(message, payload, tuple(left), tuple(details))
    return None


def complete(view: ClusterView, part: str) -> bool:
    """Whether the view carries this part (a VIEW_PARTS name) whole, as etcd holds it."""
    return part not in view.left_out


class _Notes:
    """One log line per key per LOG_REPEAT seconds: a message trimmed every cycle says so once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: dict[Any, float] = {}

    def __call__(self, key: Any, level: int, text: str, *args: Any) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < LOG_REPEAT:
            return
        if len(self._last) > 1000:  # keys carry what was left out, which varies: never let them pile up
            self._last.clear()
        self._last[key] = now
        log.log(level, text, *args)


NOTES = _Notes()


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def decode(payload: bytes) -> Envelope:
    try:
        raw = json.loads(payload)
        cls = MESSAGE_TYPES[raw["k"]]
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in raw["b"]:
                v = raw["b"][f.name]
                # Frozen messages carry tuples; JSON only knows lists.
                kwargs[f.name] = _tuplify(v) if isinstance(v, list) else v
        return Envelope(cls(**kwargs), int(raw["s"]), float(raw["t"]))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: absurd nesting
        raise ProtocolError(f"undecodable message: {str(exc)[:200]}") from exc


# -- channels ---------------------------------------------------------------------


class Channel:
    """One end of a framed stream socketpair, never blocking.

    send() queues; flush() writes what the socket accepts now.  Snapshots
    coalesce in the queue; other messages are bounded by max_queued and
    dropped (and counted) beyond it, so a stopped peer cannot stall us.
    Every frame is made within the limit (fit; a SPLIT message in Parts),
    and one that cannot be is not sent (counted in oversize).  Received
    frames over the limit or undecodable are dropped and counted in
    rejected; only a stream out of step raises ProtocolError.
    Sending is thread-safe (a worker's helper threads log through it);
    receiving belongs to one thread.
    """

    def __init__(self, sock: socket.socket, peer: str, max_queued: int = 1000) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.peer = peer
        self.max_queued = max_queued
        self.dropped = 0  # queue full
        self.oversize = 0  # too large for a frame even shrunk: never sent
        self.rejected = 0  # received but dropped: over the limit, undecodable, or a broken series of Parts
        self._seq = 0
        self._outbox: deque[list[Any]] = deque()  # [kind or None, frame bytes]
        self._partial = b""  # bytes of the head frame not yet written
        self._inbuf = bytearray()
        self._skip = 0  # bytes still to discard of an over-large frame
        self._bad_in_a_row = 0
        self._parts: list[str] | None = None  # a SPLIT message being put together
        self.closed = False
        self._lock = threading.RLock()  # two threads flushing could write one frame twice

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Message) -> bool:
        """Queue a message; returns False if it was dropped."""
        with self._lock:
            return self._queue(message)

    def _queue(self, message: Message) -> bool:
        self._seq += 1
        kind = type(message).__name__
        now = time.monotonic()
        fitted = fit(message, self._seq, now) if not message.SPLIT else None
        if message.SPLIT:
            payload = encode(message, self._seq, now)
            if len(payload) > MAX_FRAME - FRAME_SLACK:
                return self._queue_parts(kind, payload)
            fitted = Fitted(message, payload)
        if fitted is None:
            self.oversize += 1
            NOTES(("oversize", kind), logging.ERROR, "a %s message could not be made to fit in a frame of %d bytes:"
                  " not sent (%d so far on this pipe)", kind, MAX_FRAME, self.oversize)
            return False
        frame = FRAME_HEADER.pack(len(fitted.payload)) + fitted.payload
        if message.SNAPSHOT:
            for entry in self._outbox:
                if entry[0] == kind:
                    entry[1] = frame
                    break
            else:
                self._outbox.append([kind, frame])
        elif len(self._outbox) >= self.max_queued:
            self.dropped += 1
            return False
        else:
            self._outbox.append([None, frame])
        if fitted.left_out:
            # Logged after queueing: in a worker this line is itself a message on this channel.
            NOTES(("shrunk", kind, fitted.left_out), logging.WARNING, "%s too large for one frame: left out %s",
                  kind, "; ".join(fitted.details))
        return True

    def _queue_parts(self, kind: str, payload: bytes) -> bool:
        if len(payload) > MAX_ASSEMBLED:
            self.oversize += 1
            NOTES(("oversize", kind), logging.ERROR, "a %s message of %d bytes is over the %d a message may have:"
                  " not sent", kind, len(payload), MAX_ASSEMBLED)
            return False
        # Escaping a slice of ASCII JSON for Part.data at most doubles it (every quote and backslash).
        size = (MAX_FRAME - FRAME_SLACK - 512) // 2
        pieces = [payload[i:i + size] for i in range(0, len(payload), size)]
        if len(self._outbox) + len(pieces) > self.max_queued:
            self.dropped += 1
            return False
        now = time.monotonic()
        for i, piece in enumerate(pieces):
            self._seq += bool(i)  # the first part has the number the whole message was given
            part = encode(Part(len(payload), i, len(pieces), piece.decode("ascii")), self._seq, now)
            self._outbox.append([None, FRAME_HEADER.pack(len(part)) + part])
        return True

    def wants_write(self) -> bool:
        return bool(self._partial or self._outbox)

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        while not self.closed:
            if not self._partial:
                if not self._outbox:
                    return
                self._partial = self._outbox.popleft()[1]
            try:
                n = self.sock.send(self._partial)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    self.closed = True
                    raise PeerClosed(self.peer) from exc
                raise
            self._partial = self._partial[n:]

    def send_now(self, message: Message) -> bool:
        """Queue and try to write at once (workers: keeps latency low)."""
        with self._lock:
            queued = self._queue(message)
            try:
                self._flush()
            except PeerClosed:
                pass
            return queued

    def receive(self) -> list[Envelope]:
        """Read whatever is available; raises PeerClosed on EOF, ProtocolError on a stream out of step."""
        out: list[Envelope] = []
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                # The peer died with our data unread (say a ping to a worker killed for missing its heartbeat).
                # What it wrote before that was read above: its last words (a fence's report) still count.
                self.closed = True
                break
            if not chunk:
                self.closed = True
                break
            self._inbuf += chunk
            self._parse(out)  # as it comes: an over-large frame's bytes are discarded, never held
        if self.closed and not out:
            raise PeerClosed(self.peer)
        return out

    def _parse(self, out: list[Envelope]) -> None:
        while True:
            if self._skip:
                n = min(self._skip, len(self._inbuf))
                del self._inbuf[:n]
                self._skip -= n
                if self._skip:
                    return
            if len(self._inbuf) < FRAME_HEADER.size:
                return
            (size,) = FRAME_HEADER.unpack_from(self._inbuf)
            if size > MAX_FRAME:
                if size > MAX_SKIP:
                    raise ProtocolError(f"frame of {size} bytes from {self.peer}: the stream is out of step")
                del self._inbuf[:FRAME_HEADER.size]
                self._skip = size
                self._bad(f"a frame of {size} bytes, over the limit of {MAX_FRAME}")
                continue
            end = FRAME_HEADER.size + size
            if len(self._inbuf) < end:
                return
            payload = bytes(self._inbuf[FRAME_HEADER.size:end])
            del self._inbuf[:end]
            try:
                env: Envelope | None = decode(payload)
            except ProtocolError as exc:
                self._bad(str(exc))
                continue
            self._bad_in_a_row = 0
            if env is not None and isinstance(env.message, Part):
                env = self._assemble(env.message)
            if env is not None:
                out.append(env)

    def _bad(self, why: str) -> None:
        self._bad_in_a_row += 1
        if self._bad_in_a_row >= BAD_FRAMES_IN_A_ROW:
            raise ProtocolError(f"{self._bad_in_a_row} bad frames in a row from {self.peer}: {why}")
        self._reject(why)

    def _reject(self, why: str) -> None:
        self.rejected += 1
        NOTES(("rejected", self.peer), logging.ERROR, "dropped a message from %s: %s (%d dropped so far)",
              self.peer, why, self.rejected)

    def _assemble(self, part: Part) -> Envelope | None:
        """The whole message once its last Part is in; None before, or when the series is broken."""
        if part.index == 0:
            self._parts = []
        ok = (self._parts is not None and isinstance(part.data, str) and isinstance(part.total, int)
              and isinstance(part.count, int) and part.index == len(self._parts) and part.index < part.count
              and 0 < part.total <= MAX_ASSEMBLED)
        if not ok or self._parts is None:
            self._parts = None
            self._reject("a part of a split message out of its series")
            return None
        self._parts.append(part.data)
        if sum(len(p) for p in self._parts) > part.total:
            self._parts = None
            self._reject("a split message longer than announced")
            return None
        if part.index + 1 < part.count:
            return None
        text, self._parts = "".join(self._parts), None
        try:
            return decode(text.encode("utf-8", "surrogatepass"))
        except ProtocolError as exc:
            self._reject(f"a split message: {exc}")
            return None

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A stream socketpair: (supervisor end, worker end)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.set_inheritable(False)
    b.set_inheritable(False)
    return a, b


def lease_pair() -> tuple[socket.socket, socket.socket]:
    """A datagram-framed pair for Lease: (election end, watchdog end)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.set_inheritable(False)
        s.setblocking(False)
    return a, b


def send_datagram(sock: socket.socket, message: Message, seq: int) -> bool:
    """Send one whole message as one datagram; False when the peer's buffer is full."""
    try:
        sock.send(encode(message, seq, time.monotonic()))
        return True
    except (BlockingIOError, InterruptedError):
        return False


def receive_datagrams(sock: socket.socket) -> list[Envelope]:
    out: list[Envelope] = []
    while True:
        try:
            data = sock.recv(MAX_FRAME)
        except (BlockingIOError, InterruptedError):
            return out
        if not data:
            return out
        try:
            out.append(decode(data))
        except ProtocolError as exc:  # a datagram is whole or absent: dropping one loses nothing else
            NOTES(("rejected", "lease"), logging.ERROR, "dropped a lease-pipe message: %s", exc)
