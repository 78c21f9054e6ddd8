import os
import socket

import pytest

from hasup.supervision import sdnotify


@pytest.fixture()
def listener(tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def fields(sock) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_status_stopping_reach_the_socket(listener):
    path, sock = listener
    n = sdnotify.Notifier(path)
    assert n.ready("replica, running; leader node1")
    got = fields(sock)
    assert got["READY"] == "1" and got["STATUS"] == "replica, running; leader node1"
    assert got["MAINPID"] == str(os.getpid())
    assert not n.set_status("replica, running; leader node1")  # unchanged: nothing sent
    assert n.set_status("primary, running; holds the leader lock")
    assert fields(sock) == {"STATUS": "primary, running; holds the leader lock"}
    assert n.extend_timeout(30)
    assert fields(sock) == {"EXTEND_TIMEOUT_USEC": "30000000"}
    assert n.stopping()
    assert fields(sock) == {"STOPPING": "1", "STATUS": "stopping"}
    n.close()


def test_abstract_socket_names():
    assert sdnotify.socket_address("@hasup/x") == b"\0hasup/x"
    name = f"hasup-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        n = sdnotify.Notifier("@" + name)
        assert n.watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_from_environment_takes_the_variables_away():
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    n = sdnotify.Notifier.from_environment(env)
    assert env == {"PATH": "/bin"}
    assert n.enabled and n.watchdog_interval == 10.0
    n.close()


def test_watchdog_meant_for_another_process_is_not_ours():
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}
    n = sdnotify.Notifier.from_environment(env)
    assert n.watchdog_interval is None
    n.close()


def test_without_systemd_nothing_is_sent():
    n = sdnotify.Notifier.from_environment({})
    assert not n.enabled and not n.ready("x") and n.fileno() is None


def test_a_missing_socket_is_reported_once(tmp_path, caplog):
    n = sdnotify.Notifier(str(tmp_path / "gone"))
    assert not n.send("READY=1") and not n.send("STATUS=x")
    assert len([r for r in caplog.records if "cannot notify systemd" in r.getMessage()]) == 1
    n.close()


@pytest.mark.parametrize(("args", "text"), [
    ((None, None, None, "n1", False), "waiting for PostgreSQL; no leader"),
    (("primary", "running", "n1", "n1", False), "primary, running; holds the leader lock"),
    (("replica", "streaming", "n2", "n1", True), "replica, streaming; leader n2; paused"),
])
def test_status_lines(args, text):
    assert sdnotify.describe(*args) == text
