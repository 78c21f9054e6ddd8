"""Typed messages between the supervisor and its workers, and their framing.

Every pipe is a Unix socketpair.  Stream pairs carry length-prefixed JSON
frames; the election->watchdog lease pair is SOCK_SEQPACKET, where each
datagram is one whole frame, so a writer killed mid-send cannot tear it.

Messages are small frozen dataclasses.  Each declares where the supervisor
routes it (``ROUTE``) and whether it is a snapshot (latest value wins, so
queued copies coalesce) or something that must be delivered in order.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

FRAME_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 20  # a frame this large means a bug or a corrupt stream
MAX_MESSAGE = 16 * 1024  # design budget for one message (tests check it)
SECRET_KEYS = frozenset({"password", "keyfile_password", "key_password", "sslpassword"})


class ProtocolError(Exception):
    """The byte stream on a pipe cannot be decoded."""


class PeerClosed(Exception):
    """The other end of a pipe has gone away."""


@dataclass(frozen=True)
class Message:
    ROUTE: ClassVar[tuple[str, ...]] = ()
    SNAPSHOT: ClassVar[bool] = False


# -- heartbeats, logs, lifecycle ---------------------------------------------


@dataclass(frozen=True)
class Ping(Message):
    n: int


@dataclass(frozen=True)
class Pong(Message):
    n: int


@dataclass(frozen=True)
class LogRecord(Message):
    ROUTE = ("supervisor",)
    level: int
    logger: str
    message: str
    created: float  # wall clock, for humans
    role: str = ""


@dataclass(frozen=True)
class ConfigChanged(Message):
    """The supervisor re-read the configuration file (SIGHUP)."""

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
    state: str  # Patroni's PostgresqlState strings: running, stopped, starting, ...
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
    leader: str
    leader_conn_url: str


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


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.__name__: cls
    for cls in (
        Ping, Pong, LogRecord, ConfigChanged, Shutdown, ApiListening, ShutdownDone, PgState, ClusterView, Lease, Disarm,
        WorkerRestarted, WatchdogState, Bootstrap, CreateReplica, Start, Promote, Demote, Follow, Stop, Restart,
        SetSyncStandbys, Reinitialize, AdminRequest, AdminReply, Fence, FenceDone, Reply,
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


def encode(message: Message, seq: int, clock: float) -> bytes:
    body = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    return json.dumps({"k": type(message).__name__, "s": seq, "t": clock, "b": body},
                      separators=(",", ":")).encode()


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
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"undecodable message: {exc}") from exc


# -- channels ---------------------------------------------------------------------


class Channel:
    """One end of a framed stream socketpair, never blocking.

    send() queues; flush() writes what the socket accepts now.  Snapshots
    coalesce in the queue; other messages are bounded by max_queued and
    dropped (and counted) beyond it, so a stopped peer cannot stall us.
    Sending is thread-safe (a worker's helper threads log through it);
    receiving belongs to one thread.
    """

    def __init__(self, sock: socket.socket, peer: str, max_queued: int = 1000) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.peer = peer
        self.max_queued = max_queued
        self.dropped = 0
        self._seq = 0
        self._outbox: deque[list[Any]] = deque()  # [kind or None, frame bytes]
        self._partial = b""  # bytes of the head frame not yet written
        self._inbuf = bytearray()
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
        frame = encode(message, self._seq, time.monotonic())
        frame = FRAME_HEADER.pack(len(frame)) + frame
        if message.SNAPSHOT:
            kind = type(message).__name__
            for entry in self._outbox:
                if entry[0] == kind:
                    entry[1] = frame
                    return True
            self._outbox.append([kind, frame])
        elif len(self._outbox) >= self.max_queued:
            self.dropped += 1
            return False
        else:
            self._outbox.append([None, frame])
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
        """Read whatever is available; raises PeerClosed on EOF."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError as exc:
                self.closed = True
                raise PeerClosed(self.peer) from exc
            if not chunk:
                self.closed = True
                if self._inbuf:
                    break
                raise PeerClosed(self.peer)
            self._inbuf += chunk
        out: list[Envelope] = []
        while len(self._inbuf) >= FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack_from(self._inbuf)
            if size > MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes from {self.peer}")
            end = FRAME_HEADER.size + size
            if len(self._inbuf) < end:
                break
            payload = bytes(self._inbuf[FRAME_HEADER.size:end])
            del self._inbuf[:end]
            out.append(decode(payload))
        if self.closed and not out:
            raise PeerClosed(self.peer)
        return out

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def channel_pair(name: str) -> tuple[socket.socket, socket.socket]:
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
        out.append(decode(data))
