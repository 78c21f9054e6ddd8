"""The shared snapshot: a seqlock over an anonymous shared map never yields a torn copy."""

from __future__ import annotations

import json
import os
import select
import threading
import time

import pytest

from hasup import ipc
from hasup.api import snapshot as sn
from hasup.api.snapshot import Identity, SnapshotBuffer, SnapshotCache


def payload(n: int) -> bytes:
    """Self-checking payload: its number, then a fill byte and a length that both derive from it."""
    fill = bytes([65 + n % 26])
    return b"%08d:" % n + fill * (100 + (n * 7919) % 20000)


def check(data: bytes) -> int:
    """The payload's number; raises AssertionError on any torn or mixed copy."""
    n = int(data[:8])
    assert data == payload(n), f"torn read of payload {n} ({len(data)} bytes)"
    return n


def test_empty_until_first_write() -> None:
    buf = SnapshotBuffer(4096)
    assert buf.read() == b""
    assert buf.sequence() == 0


def test_roundtrip_and_sequence_is_even_after_write() -> None:
    buf = SnapshotBuffer(4096)
    buf.write(b"hello")
    assert buf.read() == b"hello"
    buf.write(b"hi")
    assert buf.read_with_sequence() == (4, b"hi")


def test_oversized_payload_is_refused_and_old_copy_kept() -> None:
    buf = SnapshotBuffer(64)
    buf.write(b"ok")
    with pytest.raises(ValueError):
        buf.write(b"x" * 64)
    assert buf.read() == b"ok"


def test_writer_stuck_mid_write_gives_last_good_copy() -> None:
    buf = SnapshotBuffer(4096)
    buf.write(b"good")
    assert buf.read() == b"good"
    # A writer that died between its two sequence bumps leaves the sequence odd.
    sn._SEQ.pack_into(buf._map, 0, buf.sequence() + 1)
    buf._map[sn._HEADER:sn._HEADER + 4] = b"bad!"
    start = time.monotonic()
    assert buf.read() == b"good"
    assert time.monotonic() - start < 2.0  # bounded retries


def test_concurrent_thread_readers_never_see_torn_copies() -> None:
    buf = SnapshotBuffer(64 * 1024)
    buf.write(payload(0))
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []

    def reader() -> None:
        last = 0
        try:
            while not stop.is_set():
                n = check(buf.read())
                assert n >= last, "went back in time"
                last = n
            seen.append(last)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    for n in range(1, 3000):
        buf.write(payload(n))
    stop.set()
    for t in readers:
        t.join(10)
    assert not errors, errors[0]
    assert len(seen) == 4


def test_forked_reader_never_sees_torn_copies() -> None:
    """A reader in another process (as gunicorn's worker is) runs truly in parallel with the writer.

    The writer keeps publishing until the reader has seen many distinct copies, so a busy
    machine that schedules the reader late cannot make the test pass (or fail) vacuously.
    """
    buf = SnapshotBuffer(64 * 1024)
    buf.write(payload(0))
    # A reader the writer keeps racing for _MAX_ATTEMPTS serves its last good copy (by design); the child
    # inherits this one, so starvation under the writer's tight loop is not mistaken for a torn copy.
    assert check(buf.read()) == 0
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: read until it has seen enough distinct copies
        os.close(rfd)
        status = 1
        try:
            reads, distinct, last = 0, 0, 0
            deadline = time.monotonic() + 30
            while distinct < 200 and time.monotonic() < deadline:
                n = check(buf.read())
                if n < last:
                    raise AssertionError("went back in time")
                distinct += n != last
                last = n
                reads += 1
            os.write(wfd, json.dumps({"reads": reads, "distinct": distinct, "last": last}).encode())
            status = 0
        except BaseException as exc:
            os.write(wfd, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(status)
    os.close(wfd)
    try:
        n = 0
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not select.select([rfd], [], [], 0)[0]:
            for _ in range(100):
                n += 1
                buf.write(payload(n))
        chunks = []
        while chunk := os.read(rfd, 4096):
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        pid = 0
    finally:
        os.close(rfd)
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks))
    assert "error" not in report, report
    assert os.waitstatus_to_exitcode(status) == 0
    assert report["distinct"] >= 200 and report["last"] <= n  # it really read while we wrote


def test_cache_decodes_only_when_the_sequence_moves() -> None:
    buf = SnapshotBuffer(4096)
    cache = SnapshotCache(buf)
    assert cache() == {}
    buf.write(b'{"a": 1}')
    first = cache()
    assert first == {"a": 1}
    assert cache() is first
    buf.write(b'{"a": 2}')
    assert cache() == {"a": 2}


def test_cache_keeps_last_good_snapshot_on_garbage() -> None:
    buf = SnapshotBuffer(4096)
    cache = SnapshotCache(buf)
    buf.write(b'{"a": 1}')
    assert cache() == {"a": 1}
    buf.write(b"not json")
    assert cache() == {"a": 1}
    buf.write(b"[1, 2]")
    assert cache() == {"a": 1}


def _cluster(**kw: object) -> ipc.ClusterView:
    base: dict[str, object] = dict(
        read_at=5.0, read_at_wall=1700000000.5, leader="n1", holds_lock=True, lock_valid_until=30.0,
        members={}, config={"ttl": 20}, history=(), optime=None, initialize="1", sync=None,
        failover=None, paused=False)
    base.update(kw)
    return ipc.ClusterView(**base)  # type: ignore[arg-type]


def test_make_snapshot_carries_production_time_and_messages() -> None:
    ident = Identity(scope="main", name="n1", api_url="http://x/patroni", tags={"a": 1})
    pg = ipc.PgState(state="running", role="primary", data_dir_empty=False, probe_ok=True, probe_at=4.0,
                     replication=({"usename": "rep"},))
    snap = sn.make_snapshot(ident, pg, _cluster(), None, now=6.0, now_wall=1700000001.0)
    assert snap["produced_at"] == 6.0 and snap["produced_at_wall"] == 1700000001.0
    assert snap["identity"]["tags"] == {"a": 1}
    assert snap["pg"]["role"] == "primary" and snap["watchdog"] is None
    assert snap["ttl"] == 20
    decoded = json.loads(sn.encode_snapshot(snap))
    assert decoded["pg"]["replication"] == [{"usename": "rep"}]
    live = sn.make_snapshot(ident, None, None, None)
    assert abs(live["produced_at"] - time.monotonic()) < 5 and live["ttl"] == sn.DEFAULT_TTL


def test_ttl_defaults_for_missing_or_bad_config() -> None:
    assert sn.timing_of(None)["ttl"] == 30
    assert sn.timing_of({})["ttl"] == 30
    assert sn.timing_of({"ttl": 45})["ttl"] == 45


def test_oversized_snapshot_drops_history_then_members() -> None:
    ident = Identity(scope="main", name="n1")
    history = tuple((i, i * 1000, "no recovery target specified", "2024-01-01T00:00:00+00:00", "n1")
                    for i in range(2000))
    snap = sn.make_snapshot(ident, None, _cluster(history=history, members={"n1": {"state": "running"}}),
                            None, now=1.0, now_wall=1.0)
    assert len(sn.encode_snapshot(snap)) > 20000
    trimmed = json.loads(sn.encode_snapshot(snap, limit=20000))
    assert trimmed["truncated"] is True
    assert trimmed["cluster"]["history"] == []
    assert trimmed["cluster"]["members"] == {"n1": {"state": "running"}}
    assert trimmed["cluster"]["leader"] == "n1"
