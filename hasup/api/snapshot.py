"""The api's view of the node: a snapshot dict, and a seqlock to share it between threads or processes.

The api's reader thread receives PgState, ClusterView and WatchdogState from
the supervisor, renders them into one JSON snapshot and writes it into an
anonymous memory map (shared too with any process forked after it).  The
request loop and threads read it without any lock, so a health check never
waits for the reader, etcd or PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from hasup import ipc
from hasup.config import Config, DynamicConfig, parse_dynamic

SNAPSHOT_VERSION = 1
DEFAULT_SIZE = 256 * 1024
DEFAULT_TTL = 30

# Layout of the map: sequence (u64), payload length (u32), payload bytes.
_SEQ = struct.Struct("=Q")
_LEN = struct.Struct("=I")
_HEADER = _SEQ.size + _LEN.size
_SPIN = 64  # attempts before a reader starts yielding the CPU
_MAX_ATTEMPTS = 2000  # then the reader gives up and serves its last good copy


class SnapshotBuffer:
    """A single-writer, many-reader seqlock over a MAP_SHARED anonymous map.

    The writer makes the sequence odd, writes, and makes it even again; a
    reader copies the payload and keeps it only if it saw the same even
    sequence before and after the copy.  The writer never waits for readers,
    so a stuck request thread cannot stall the master.

    Ordering assumption: CPython's mmap slice copies are plain memcpy calls
    separated by several function calls, and x86-64 keeps stores in order.
    Weakly-ordered CPUs would need fences that Python cannot express; the
    length check and the JSON decode in SnapshotCache are the second line
    of defence there.
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size <= _HEADER:
            raise ValueError(f"snapshot buffer of {size} bytes is too small")
        # fileno -1: anonymous, and MAP_SHARED by default, so processes forked
        # after this point (gunicorn's workers) see the master's writes.
        self._map = mmap.mmap(-1, size)
        self.capacity = size - _HEADER
        self._seq = 0  # writer side only
        self._last_good: tuple[int, bytes] = (0, b"")  # reader side, per process

    def write(self, payload: bytes) -> None:
        """Publish payload; only one thread in one process may write."""
        if len(payload) > self.capacity:
            raise ValueError(f"snapshot of {len(payload)} bytes exceeds {self.capacity}")
        self._seq += 1  # odd: readers retry
        _SEQ.pack_into(self._map, 0, self._seq)
        _LEN.pack_into(self._map, _SEQ.size, len(payload))
        self._map[_HEADER:_HEADER + len(payload)] = payload
        self._seq += 1  # even: consistent again
        _SEQ.pack_into(self._map, 0, self._seq)

    def sequence(self) -> int:
        """The current sequence (odd while a write is in progress, 0 before the first)."""
        return int(_SEQ.unpack_from(self._map, 0)[0])

    def read_with_sequence(self) -> tuple[int, bytes]:
        """(sequence, payload) of a consistent copy; the last good one if the writer keeps racing us."""
        for attempt in range(_MAX_ATTEMPTS):
            before = self.sequence()
            if before and not before & 1:
                (length,) = _LEN.unpack_from(self._map, _SEQ.size)
                data = self._map[_HEADER:_HEADER + min(length, self.capacity)]
                if self.sequence() == before and length <= self.capacity:
                    self._last_good = (before, data)
                    return self._last_good
            elif not before:
                return self._last_good  # nothing written yet
            if attempt >= _SPIN:
                time.sleep(0)  # let the writer (maybe our own thread, under the GIL) finish
        return self._last_good

    def read(self) -> bytes:
        return self.read_with_sequence()[1]

    def close(self) -> None:
        self._map.close()


class SnapshotCache:
    """Callable returning the latest snapshot dict, decoding only when the sequence moved.

    Shared by a worker's request threads: the cached pair is replaced by one
    assignment, and callers must treat the returned dict as read-only.
    """

    def __init__(self, buffer: SnapshotBuffer) -> None:
        self._buffer = buffer
        self._cached: tuple[int, dict[str, Any]] = (-1, {})

    def __call__(self) -> dict[str, Any]:
        seq, snap = self._cached
        if seq == self._buffer.sequence():
            return snap
        seq, payload = self._buffer.read_with_sequence()
        if seq == self._cached[0]:
            return self._cached[1]
        try:
            decoded = json.loads(payload) if payload else {}
        except ValueError:
            return self._cached[1]  # keep serving the previous good snapshot
        if not isinstance(decoded, dict):
            return self._cached[1]
        self._cached = (seq, decoded)
        return decoded


# -- the snapshot itself ------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who this node is, as the status JSON and the health filters need it."""

    scope: str
    name: str
    api_url: str = ""
    tags: dict[str, Any] = field(default_factory=dict)  # as configured
    noloadbalance: bool = False
    rest_unprotected: bool = False  # the REST API is reachable from other hosts with no guard on it

    @classmethod
    def from_config(cls, config: Config) -> Identity:
        return cls(scope=config.scope, name=config.name, api_url=config.restapi.api_url,
                   tags=dict(config.tags.raw), noloadbalance=bool(config.tags.noloadbalance),
                   rest_unprotected=config.restapi.unprotected)


def timing_of(dynamic: dict[str, Any] | None) -> dict[str, int]:
    """ttl, loop_wait, retry_timeout and maximum_lag_on_failover in force for a dynamic configuration."""
    try:
        parsed, _problems = parse_dynamic(dict(dynamic or {}))
    except Exception:  # a config etcd holds must never take the api down
        parsed = DynamicConfig()
    return {"ttl": parsed.ttl, "loop_wait": parsed.loop_wait, "retry_timeout": parsed.retry_timeout,
            "maximum_lag_on_failover": parsed.maximum_lag_on_failover}


def _as_dict(message: ipc.Message | None) -> dict[str, Any] | None:
    return dataclasses.asdict(message) if message is not None else None


def make_snapshot(identity: Identity, pg: ipc.PgState | None, cluster: ipc.ClusterView | None,
                  watchdog: ipc.WatchdogState | None, *, now: float | None = None,
                  now_wall: float | None = None, received: dict[str, float] | None = None) -> dict[str, Any]:
    """The snapshot dict every api function reads.

    Keys: v, produced_at (monotonic), produced_at_wall, identity, ttl (and the
    other timing settings, see timing_of), received ({"pg"|"cluster"|"watchdog"|
    "start": monotonic time the api got the latest such message, or started}),
    and pg, cluster, watchdog (each the message's fields, or None before the first).
    Monotonic times are comparable across processes: CLOCK_MONOTONIC is
    system-wide on Linux.
    """
    return {
        "v": SNAPSHOT_VERSION,
        "produced_at": time.monotonic() if now is None else now,
        "produced_at_wall": time.time() if now_wall is None else now_wall,
        "identity": dataclasses.asdict(identity),
        **timing_of(cluster.config if cluster is not None else None),
        "received": dict(received or {}),
        "pg": _as_dict(pg),
        "cluster": _as_dict(cluster),
        "watchdog": _as_dict(watchdog),
    }


def encode_snapshot(snap: dict[str, Any], limit: int = DEFAULT_SIZE - _HEADER) -> bytes:
    """JSON bytes of snap that fit in limit, dropping the bulkiest parts of the cluster view if needed."""
    payload = json.dumps(snap, default=str, separators=(",", ":")).encode()
    if len(payload) <= limit or not snap.get("cluster"):
        return payload
    # History grows without bound and members with the cluster; health checks
    # need neither, so lose them (and say so) rather than serve stale health.
    cluster = dict(snap["cluster"])
    for key, empty in (("history", []), ("members", {})):
        cluster[key] = empty
        trimmed = {**snap, "cluster": cluster, "truncated": True}
        payload = json.dumps(trimmed, default=str, separators=(",", ":")).encode()
        if len(payload) <= limit:
            break
    return payload
