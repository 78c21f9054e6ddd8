import dataclasses
import datetime
import logging
import os
import select
import socket
import time

import pytest

from hasup import ipc
from hasup.api import health
from hasup.api.snapshot import Identity, make_snapshot
from hasup.workers.postgres import PostgresWorker


def sample_messages():
    members = {f"node{i}": {"conn_url": f"postgres://10.0.0.{i}:5432/postgres",
                            "api_url": f"http://10.0.0.{i}:8008/patroni", "state": "running",
                            "role": "replica", "xlog_location": 123456789, "timeline": 3,
                            "tags": {"nofailover": True}} for i in range(16)}
    replication = tuple({"usename": "replicator", "application_name": f"node{i}", "client_addr": "10.0.0.1",
                         "state": "streaming", "sync_state": "async", "sync_priority": 0} for i in range(16))
    return [
        ipc.Ping(1), ipc.Pong(1, 3), ipc.LogLoss(12), ipc.LogRecord(20, "hasup.x", "m" * 2000, 1.0, "election"),
        ipc.PgState("running", "primary", False, True, 1.0, worker_pid=5, replication=replication,
                    timeline_history=tuple((i, i * 1000, "no recovery target specified") for i in range(1, 30))),
        ipc.ClusterView(1.0, 2.0, "node1", True, 3.0, members, {"ttl": 30, "postgresql": {"parameters": {}}},
                        tuple((i, i, "reason", "2026-01-01T00:00:00+00:00", "node1") for i in range(30)),
                        5, "7000000000000000000", None, None, False, "no action"),
        ipc.Lease(10.0, 30, 10, 10), ipc.Disarm("stopped"),
        ipc.WorkerRestarted("watchdog"), ipc.WatchdogState("off", False, None, None, None),
        ipc.Bootstrap(1, 2.0), ipc.CreateReplica(2, 3.0, "node1", "postgres://x:5432/postgres"),
        ipc.Start(3, 4.0, True), ipc.Promote(4, 5.0, 1234), ipc.Demote(9, 9.0),
        ipc.Follow(5, 6.0, "node1", "postgres://x/postgres", 2),
        ipc.Stop(6, 7.0, "fast"), ipc.Reply(1, "Bootstrap", True, "", {"sysid": "1"}),
        ipc.Restart(7, 8.0, 30.0, "node1", "postgres://x:5432/postgres"),
        ipc.SetSyncStandbys(9, 10.0, 'FIRST 2 ("node2", "node3")'), ipc.ResumeReplay(10, 11.0),
        ipc.Reinitialize(8, 9.0, "node1", "postgres://x:5432/postgres", True),
        ipc.AdminRequest(3, 4.0, "restart", {"schedule": "2030-01-01T00:00:00+00:00", "role": "replica"}),
        ipc.AdminReply(3, 202, "Restart scheduled"),
        ipc.Fence(4242, "it did not answer probes within postgresql.health_deadline"),
        ipc.FenceDone(True, (4242, 4250, 4251), "3 processes killed, none left"),
        ipc.StoppedForGiveUp(True, (4242,), "1 process killed, none left (giving up)"),
        ipc.Shutdown(), ipc.ShutdownDone(True, True), ipc.ApiListening(),
        ipc.Part(100, 0, 2, '{"k":"ConfigChanged"'),
    ]


@pytest.mark.parametrize("msg", sample_messages(), ids=lambda m: type(m).__name__)
def test_round_trip_and_size_budget(msg):
    frame = ipc.encode(msg, 7, 1.5)
    assert len(frame) < ipc.MAX_MESSAGE
    env = ipc.decode(frame)
    assert env.message == msg and env.seq == 7 and env.sent_at == 1.5


def test_every_message_type_is_registered():
    names = {type(m).__name__ for m in sample_messages()}
    assert names == set(ipc.MESSAGE_TYPES) - {"ConfigChanged"}


def test_config_changed_repr_hides_passwords():
    msg = ipc.ConfigChanged({"postgresql": {"authentication": {"superuser": {"password": "hunter2"}}}})
    assert "hunter2" not in repr(msg)


def test_channel_frames_and_coalesces_snapshots():
    a, b = ipc.channel_pair()
    sender, receiver = ipc.Channel(a, "r"), ipc.Channel(b, "s")
    sender.send(ipc.Ping(1))
    sender.send(ipc.Lease(1.0, 10))
    sender.send(ipc.Lease(2.0, 10))  # replaces the queued one in place
    sender.send(ipc.Pong(2))
    sender.flush()
    got = []
    while len(got) < 3:
        got += [e.message for e in receiver.receive()]
    assert got == [ipc.Ping(1), ipc.Lease(2.0, 10), ipc.Pong(2)]


def test_channel_never_blocks_and_counts_drops():
    a, b = ipc.channel_pair()
    sender = ipc.Channel(a, "peer", max_queued=50)
    big = ipc.LogRecord(20, "x", "y" * 8000, 0.0)
    for _ in range(2000):  # far more than the socket buffer holds; the peer never reads
        sender.send(big)
        sender.flush()
    assert sender.dropped > 0
    b.close()


def test_peer_closed_on_eof():
    a, b = ipc.channel_pair()
    ch = ipc.Channel(a, "peer")
    b.close()
    with pytest.raises(ipc.PeerClosed):
        ch.receive()


def test_partial_frames_are_reassembled():
    a, b = socket.socketpair()
    ch = ipc.Channel(b, "peer")
    payload = ipc.encode(ipc.Ping(9), 1, 0.0)
    frame = ipc.FRAME_HEADER.pack(len(payload)) + payload
    a.send(frame[:3])
    assert ch.receive() == []
    a.send(frame[3:])
    assert [e.message for e in ch.receive()] == [ipc.Ping(9)]


def test_lease_datagrams_keep_boundaries():
    e, w = ipc.lease_pair()
    for i in range(5):
        assert ipc.send_datagram(e, ipc.Lease(float(i), 10), i)
    got = [env.message for env in ipc.receive_datagrams(w)]
    assert got == [ipc.Lease(float(i), 10) for i in range(5)]


def test_messages_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ipc.Ping(1).n = 2  # type: ignore[misc]
    assert os.getpid() > 0


# -- the frame limit, where messages are made and where they arrive -------------------------------


def through_channel(message, frames=1):
    """Send message on a Channel; the sizes of the frames that went over the wire, and the one message a
    receiving Channel made of them (with the sender, for its counters)."""
    a, b = ipc.channel_pair()
    sender = ipc.Channel(a, "receiver")
    assert sender.send(message)
    b.setblocking(False)
    wire, buf = bytearray(), bytearray()
    sizes = []
    deadline = time.monotonic() + 20
    while len(sizes) < frames:
        assert time.monotonic() < deadline, f"only {len(sizes)} of {frames} frames arrived"
        sender.flush()
        select.select([b], [], [], 0.05)
        try:
            chunk = b.recv(1 << 20)
        except BlockingIOError:
            continue
        wire += chunk
        buf += chunk
        while len(buf) >= 4 and len(buf) >= 4 + ipc.FRAME_HEADER.unpack_from(buf)[0]:
            size = ipc.FRAME_HEADER.unpack_from(buf)[0]
            sizes.append(size)
            del buf[:4 + size]
    assert not buf and not sender.wants_write()
    a.close()
    b.close()
    ch, got = feed(bytes(wire))
    assert len(got) == 1 and ch.rejected == 0
    return sizes, got[0], sender


def base_view(**changes):
    view = ipc.ClusterView(
        read_at=100.0, read_at_wall=1.7e9, leader="node1", holds_lock=True, lock_valid_until=130.0,
        members={"node1": {"conn_url": "postgres://10.0.0.1:5432/postgres", "api_url": "http://10.0.0.1:8008/patroni",
                           "state": "running", "role": "primary", "xlog_location": 50_000, "timeline": 2}},
        config={"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576,
                "synchronous_mode": True, "postgresql": {"parameters": {"work_mem": "4MB"}}},
        history=((1, 100, "no recovery target specified", "2026-01-01T00:00:00+00:00", "node1"),),
        optime=50_000, initialize="7000000000000000000", sync={"leader": "node1", "sync_standby": "node2"},
        failover=None, paused=False, last_decision="no action: I am the leader")
    return dataclasses.replace(view, **changes)


def five_thousand_members():
    return {f"node{i}": {"conn_url": f"postgres://10.0.{i // 250}.{i % 250}:5432/postgres",
                         "api_url": f"http://10.0.{i // 250}.{i % 250}:8008/patroni", "state": "running",
                         "role": "replica", "xlog_location": 123_456_789, "timeline": 2, "tags": {"nofailover": False},
                         "replication_state": "streaming", "comment": "x" * 200} for i in range(5000)}


def long_history():
    """About 300 KB of history."""
    return tuple((i, i * 1000, "r" * 60, "2026-01-01T00:00:00+00:00", "node1") for i in range(1, 2800))


def assert_health_checks_still_answer(view):
    """What /primary, /replica and /health need came through: the leader's answers are right."""
    assert (view.leader, view.holds_lock, view.lock_valid_until, view.paused) == ("node1", True, 130.0, False)
    assert view.sync["sync_standby"] == "node2" and view.optime == 50_000 and view.read_at == 100.0
    assert {k: view.config[k] for k in ("ttl", "loop_wait", "retry_timeout", "synchronous_mode")} == \
        {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "synchronous_mode": True}
    pg = ipc.PgState("running", "primary", False, True, 101.0, timeline=2, wal_position=50_000)
    now = 102.0
    snap = make_snapshot(Identity("main", "node1"), pg, view, None, now=now, now_wall=1.7e9,
                         received={"pg": now, "cluster": now, "start": 0.0})
    codes = {path: health.health_code(path, {}, snap, now) for path in ("/primary", "/replica", "/health")}
    assert codes == {"/primary": 200, "/replica": 503, "/health": 200}


def test_a_view_with_a_1mb_config_value_is_one_frame_without_that_value():
    params = {"work_mem": "4MB", "huge": "x" * (1 << 20)}
    view = base_view(config={**base_view().config, "postgresql": {"parameters": params}})
    sizes, got, _ = through_channel(view)
    assert sizes[0] <= ipc.MAX_FRAME
    assert got.config["postgresql"]["parameters"] == {"work_mem": "4MB"}  # the small settings stay
    assert got.left_out == ("config_values",) and not ipc.complete(got, "config_values")
    assert got.members == view.members and got.history == view.history  # nothing else was needed
    assert_health_checks_still_answer(got)


def test_a_5000_member_view_is_one_frame_keeping_what_hasup_reads_of_each_member():
    view = base_view(members={**five_thousand_members(), **base_view().members})
    assert len(ipc.encode(view, 1, 1.0)) > ipc.MAX_FRAME
    sizes, got, _ = through_channel(view)
    assert sizes[0] <= ipc.MAX_FRAME
    # Trimmed to what hasup reads they still do not all fit: the last ones by name go, never the leader
    # or the synchronous standby, and the view says so (the postgres worker then leaves slots alone).
    assert got.left_out == ("member_fields", "members") and not ipc.complete(got, "members")
    assert 3000 < len(got.members) < 5001 and {"node1", "node2", "node1000"} <= set(got.members)
    assert "comment" not in got.members["node1000"] and got.members["node1000"]["xlog_location"] == 123_456_789
    assert got.members["node1"] == view.members["node1"]
    assert_health_checks_still_answer(got)


def shrink(message, limit):
    """The message fitted into a budget of its own, and what it lost (None: it cannot fit)."""
    fitted = ipc.fit(message, 0, 0.0, limit)
    return (fitted.message, fitted.left_out) if fitted is not None else None


def test_a_300kb_history_fits_a_frame_whole_and_a_smaller_budget_keeps_the_newest_entries():
    view = base_view(history=long_history())
    assert 250_000 < len(ipc.encode(view, 1, 1.0)) < ipc.MAX_FRAME
    sizes, got, _ = through_channel(view)
    assert sizes[0] <= ipc.MAX_FRAME and got == view
    shrunk = shrink(view, 64 * 1024)  # a producer with its own budget
    assert shrunk is not None
    smaller, left_out = shrunk
    assert left_out == ("history",) and smaller.history == view.history[-ipc.VIEW_HISTORY:]
    assert_health_checks_still_answer(smaller)


def test_everything_at_once_still_fits_and_answers_health_checks():
    members = {**five_thousand_members(), **{f"n{i}": {"state": "running", "role": "replica",
                                                       "api_url": "http://" + "h" * 300} for i in range(3000)}}
    view = base_view(members={**members, **base_view().members}, history=long_history(),
                     config={**base_view().config, "big": "y" * (1 << 20)},
                     status={"optime": 50_000, "slots": {f"slot{i}": i for i in range(20000)}},
                     failover={"leader": "node1", "member": "node2", "note": "z" * 100_000},
                     last_decision="d" * 100_000, sync={"leader": "node1", "sync_standby": "node2", "x": "q" * 50_000})
    sizes, got, _ = through_channel(view)
    assert sizes[0] <= ipc.MAX_FRAME
    assert got.left_out[:5] == ("history", "member_fields", "status_slots", "config_values", "members")
    assert {"node1", "node2"} <= set(got.members)  # the leader and the synchronous standby stay
    assert got.status == {"optime": 50_000} and "big" not in got.config
    assert_health_checks_still_answer(got)


def test_members_go_by_name_from_the_end_and_never_the_leader_or_a_sync_standby():
    members = {f"m{i:03d}": {"state": "running", "role": "replica", "conn_url": "c" * 1500} for i in range(100)}
    view = base_view(leader="m099", sync={"leader": "m099", "sync_standby": "m098"}, members=members)
    shrunk = shrink(view, 20_000)
    assert shrunk is not None
    smaller, left_out = shrunk
    assert "members" in left_out
    kept = sorted(smaller.members)
    assert {"m098", "m099"} <= set(kept) and kept[0] == "m000"
    others = [n for n in kept if n not in ("m098", "m099")]
    assert others == [f"m{i:03d}" for i in range(len(others))]  # a prefix by name: the last ones went


def test_a_message_that_cannot_fit_is_not_sent_but_counted_and_logged(caplog):
    a, b = ipc.channel_pair()
    sender = ipc.Channel(a, "r")
    view = base_view(leader="n" * (2 << 20))  # the leader's name is never left out
    with caplog.at_level(logging.ERROR, logger="hasup.ipc"):
        assert sender.send(view) is False
    assert sender.oversize == 1 and not sender.wants_write()
    assert "could not be made to fit" in caplog.text
    a.close()
    b.close()


def test_a_huge_log_line_is_cut_not_dropped():
    record = ipc.LogRecord(40, "hasup.election", "boom: " + "v" * (3 << 20), 1.0, "election")
    sizes, got, _ = through_channel(record)
    assert sizes[0] <= ipc.MAX_FRAME
    assert got.message.startswith("boom: vvv") and len(got.message) < ipc.LOG_TEXT_LIMIT + 100
    assert "characters left out" in got.message


def test_pg_state_sheds_timeline_history_then_slots():
    pg = ipc.PgState("running", "primary", False, True, 1.0, slots={"s": 1}, retain_slots=("s",),
                     timeline_history=tuple((i, i, "x" * 400) for i in range(1, 5000)))
    sizes, got, _ = through_channel(pg)
    assert sizes[0] <= ipc.MAX_FRAME
    assert got.timeline_history == pg.timeline_history[-ipc.VIEW_HISTORY:] and got.slots == {"s": 1}


def test_trimming_is_logged_once_per_kind_of_trimming():
    messages = []
    clock = [0.0]
    notes = ipc._Notes(clock=lambda: clock[0])
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    ipc.log.addHandler(handler)
    try:
        for t in (0.0, 10.0, 299.0, 301.0):
            clock[0] = t
            notes(("shrunk", "ClusterView", ("members",)), logging.WARNING, "left out %s", "members")
        notes(("shrunk", "ClusterView", ("history",)), logging.WARNING, "left out %s", "history")
    finally:
        ipc.log.removeHandler(handler)
    assert messages == ["left out members", "left out members", "left out history"]


def test_a_large_configuration_reload_travels_whole_in_parts():
    raw = {"scope": "main", "postgresql": {"pg_hba": [f'host all "user{i}" 10.{i % 250}.0.0/16 scram-sha-256 \\'
                                                      for i in range(40_000)]},
           "tags": {"note": "é" * 100_000, "when": datetime.date(2026, 1, 2)}}
    msg = ipc.ConfigChanged(raw)
    assert len(ipc.encode(msg, 1, 1.0)) > 2 * ipc.MAX_FRAME
    n = -(-len(ipc.encode(msg, 1, 1.0)) // ((ipc.MAX_FRAME - ipc.FRAME_SLACK - 512) // 2))
    sizes, got, _ = through_channel(msg, frames=n)
    assert len(sizes) == n > 2 and max(sizes) <= ipc.MAX_FRAME
    assert got.raw == {**raw, "tags": {"note": "é" * 100_000, "when": "2026-01-02"}}  # a date arrives as its text


def feed(frames_bytes):
    a, b = socket.socketpair()
    ch = ipc.Channel(b, "worker")
    a.setblocking(False)
    out = []
    data = frames_bytes
    deadline = time.monotonic() + 10
    try:
        while data:
            assert time.monotonic() < deadline
            try:
                data = data[a.send(data):]
            except BlockingIOError:
                pass
            out += ch.receive()
        out += ch.receive()
    finally:
        a.close()
    return ch, [e.message for e in out]


def framed(payload):
    return ipc.FRAME_HEADER.pack(len(payload)) + payload


def test_a_receiver_drops_an_over_large_frame_and_reads_on():
    big = framed(b"x" * (ipc.MAX_FRAME + 10))
    ch, got = feed(framed(ipc.encode(ipc.Ping(1), 1, 0.0)) + big + framed(ipc.encode(ipc.Ping(2), 2, 0.0)))
    assert got == [ipc.Ping(1), ipc.Ping(2)] and ch.rejected == 1


def test_a_receiver_drops_undecodable_frames_but_not_a_stream_out_of_step():
    ch, got = feed(framed(b"{not json") + framed(b'{"k":"Nope","s":1,"t":0,"b":{}}')
                   + framed(b"[" * 200_000) + framed(ipc.encode(ipc.Pong(3), 3, 0.0)))
    assert got == [ipc.Pong(3)] and ch.rejected == 3
    with pytest.raises(ipc.ProtocolError):
        feed(framed(b"?") * ipc.BAD_FRAMES_IN_A_ROW)
    with pytest.raises(ipc.ProtocolError):
        feed(ipc.FRAME_HEADER.pack(ipc.MAX_SKIP + 1) + b"abc")


def test_a_broken_series_of_parts_is_dropped():
    stray = ipc.encode(ipc.Part(10, 1, 2, "0123456789"), 1, 0.0)  # no part 0 before it
    ch, got = feed(framed(stray) + framed(ipc.encode(ipc.Ping(4), 2, 0.0)))
    assert got == [ipc.Ping(4)] and ch.rejected == 1


def test_lease_pipe_drops_an_undecodable_datagram():
    e, w = ipc.lease_pair()
    e.send(b"garbage")
    assert ipc.send_datagram(e, ipc.Lease(5.0, 10), 1)
    assert [env.message for env in ipc.receive_datagrams(w)] == [ipc.Lease(5.0, 10)]


@pytest.mark.parametrize(("left_out", "config_used", "slots_kept"), [
    ((), True, True),
    (("history", "member_fields", "extras"), True, True),  # nothing the postgres worker reads is short
    (("config_values",), False, False),  # slot settings live in the config too
    (("members",), True, False),  # missing members would have their slots dropped
    (("status_slots",), True, False),
])
def test_the_postgres_worker_uses_only_whole_parts_of_a_view(left_out, config_used, slots_kept):
    view = base_view(left_out=left_out)
    assert ipc.complete(view, "config_values") == config_used
    assert PostgresWorker.view_usable_for_slots(view) == slots_kept


def test_a_pg_state_with_a_replay_paused_that_is_no_boolean_is_refused_at_the_boundary():
    good = ipc.PgState("running", "replica", False, True, 1.0, replay_paused=True)
    assert ipc.decode(ipc.encode(good, 1, 0.0)).message == good
    for bad in ('"yes"', "1", "[true]"):
        frame = ipc.encode(good, 1, 0.0).replace(b'"replay_paused":true', f'"replay_paused":{bad}'.encode())
        with pytest.raises(ipc.ProtocolError):
            ipc.decode(frame)
