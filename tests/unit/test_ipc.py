import dataclasses
import os
import socket

import pytest

from hasup import ipc


def sample_messages():
    members = {f"node{i}": {"conn_url": f"postgres://10.0.0.{i}:5432/postgres",
                            "api_url": f"http://10.0.0.{i}:8008/patroni", "state": "running",
                            "role": "replica", "xlog_location": 123456789, "timeline": 3,
                            "tags": {"nofailover": True}} for i in range(16)}
    replication = tuple({"usename": "replicator", "application_name": f"node{i}", "client_addr": "10.0.0.1",
                         "state": "streaming", "sync_state": "async", "sync_priority": 0} for i in range(16))
    return [
        ipc.Ping(1), ipc.Pong(1), ipc.LogRecord(20, "hasup.x", "m" * 2000, 1.0, "election"),
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
        ipc.SetSyncStandbys(9, 10.0, 'FIRST 2 ("node2", "node3")'),
        ipc.Reinitialize(8, 9.0, "node1", "postgres://x:5432/postgres", True),
        ipc.AdminRequest(3, 4.0, "restart", {"schedule": "2030-01-01T00:00:00+00:00", "role": "replica"}),
        ipc.AdminReply(3, 202, "Restart scheduled"),
        ipc.Fence(4242, "it did not answer probes within postgresql.health_deadline"),
        ipc.FenceDone(True, (4242, 4250, 4251), "3 processes killed, none left"),
        ipc.Shutdown(), ipc.ShutdownDone(True, True), ipc.ApiListening(),
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
    a, b = ipc.channel_pair("t")
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
    a, b = ipc.channel_pair("t")
    sender = ipc.Channel(a, "peer", max_queued=50)
    big = ipc.LogRecord(20, "x", "y" * 8000, 0.0)
    for _ in range(2000):  # far more than the socket buffer holds; the peer never reads
        sender.send(big)
        sender.flush()
    assert sender.dropped > 0
    b.close()


def test_peer_closed_on_eof():
    a, b = ipc.channel_pair("t")
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
