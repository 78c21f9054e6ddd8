"""Peers' answers (hasup.peers): any JSON in, a PeerStatus or "not healthy" (None) out; only http(s)
is asked; an answer is read within a size cap and one deadline, whatever the peer does."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as s

from hasup import peers
from hasup.dcs import parse
from hasup.dcs.model import Member
from tests.harness.rawserver import Behaviour, RawServer

JSON = s.recursive(s.none() | s.booleans() | s.integers(min_value=-(2**70), max_value=2**70)
                   | s.floats() | s.text(max_size=10),
                   lambda kids: s.lists(kids, max_size=3) | s.dictionaries(s.text(max_size=8), kids, max_size=3),
                   max_leaves=12)
FIELD_VALUES = JSON | s.sampled_from(["abc", "7", 1.5, True, 2**64, -1, 10**30, "running", "replica"])
XLOG = s.dictionaries(s.sampled_from(["location", "received_location", "replayed_location", "paused"]),
                      FIELD_VALUES)
STATUS = s.fixed_dictionaries({}, optional={
    "role": FIELD_VALUES, "state": FIELD_VALUES, "timeline": FIELD_VALUES, "watchdog_failed": FIELD_VALUES,
    "xlog": XLOG | FIELD_VALUES,
    "tags": s.dictionaries(s.sampled_from(["nofailover", "failover_priority"]), FIELD_VALUES) | FIELD_VALUES})


@settings(max_examples=300, deadline=None)
@given(body=STATUS | JSON)
def test_parse_status_is_total(body: Any) -> None:
    status = peers.parse_status("n2", body)
    if status is not None:
        assert isinstance(status.role, str) and isinstance(status.state, str)
        assert parse.is_int(status.wal_position, 0, parse.LSN_END)
        assert status.timeline is None or parse.is_int(status.timeline, 0, 2**32)
        assert parse.is_int(status.failover_priority, -(2**31), 2**31)


@pytest.mark.parametrize("body", [
    {"xlog": {"location": "abc"}}, {"xlog": {"location": 1.5}}, {"xlog": {"received_location": True}},
    {"xlog": {"replayed_location": 2**64}}, {"xlog": {"location": -1}}, {"xlog": [1]}, {"xlog": "x"},
    {"role": 5}, {"state": ["running"]}, {"tags": [1]}, {"role": "x" * 10_000}, [], "garbage", None, 10**30])
def test_answers_of_the_wrong_types_are_not_healthy(body: Any) -> None:
    assert peers.parse_status("n2", body) is None


def test_answers_of_the_right_types_are_read_as_before() -> None:
    replica = peers.parse_status("n2", {"state": "running", "role": "replica", "timeline": 3, "xlog": {
        "received_location": 7, "replayed_location": 5, "paused": False}, "tags": {"failover_priority": 2}})
    assert replica is not None and (replica.wal_position, replica.timeline, replica.failover_priority) == (7, 3, 2)
    paused = peers.parse_status("n2", {"state": "running", "xlog": {"received_location": 7, "replayed_location": 5,
                                                                     "paused": True}})
    assert paused is not None and paused.wal_position == 5
    # A primary that has not reported its position yet (status.py answers null).
    primary = peers.parse_status("n2", {"state": "running", "role": "primary", "xlog": {"location": None}})
    assert primary is not None and primary.wal_position == 0
    assert peers.parse_status("n2", {}) == peers.PeerStatus("n2", "unknown", "unknown", 0)
    nofailover = peers.parse_status("n2", {"tags": {"failover_priority": 0}, "timeline": "3"})
    assert nofailover is not None and nofailover.nofailover and nofailover.timeline is None


# -- over the network ---------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[Callable[[Behaviour], RawServer]]:
    servers: list[RawServer] = []

    def start(behaviour: Behaviour) -> RawServer:
        servers.append(RawServer(behaviour))
        return servers[-1]
    yield start
    for srv in servers:
        srv.close()


def answer(body: bytes, status: str = "200 OK", length: int | None = None) -> Behaviour:
    def send(conn: socket.socket) -> None:
        size = len(body) if length is None else length
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)
    return send


def raw(data: bytes) -> Behaviour:
    return lambda conn: conn.sendall(data)


GOOD = json.dumps({"state": "running", "role": "replica", "xlog": {"received_location": 9}}).encode()


def status_of(url: str, timeout: float = peers.PEER_TIMEOUT) -> peers.PeerStatus | None:
    return peers.fetch_status(Member("n2", {"api_url": url}), timeout=timeout)


def test_a_good_answer_and_a_503_with_the_status_are_read(server: Callable[[Behaviour], RawServer]) -> None:
    status = status_of(server(answer(GOOD)).url())
    assert status is not None and status.wal_position == 9
    unavailable = status_of(server(answer(GOOD, "503 Service Unavailable")).url())
    assert unavailable is not None and unavailable.role == "replica"


@pytest.mark.parametrize("behaviour", [
    answer(b"garbage"), answer(b"[1, 2]"), answer(b'{"xlog": {"location": "abc"}}'), answer(b"\xff\xfe"),
    answer(b"[" * 5000 + b"]" * 5000), answer(b'{"state": "' + b"x" * 70_000 + b'"}'),
    answer(b'{"a": 1}', length=5 * 1024 * 1024),  # announces 5 MB
    raw(b"garbage\r\n\r\n"), raw(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n"), raw(b""),
    raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
    raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * (5 * 1024 * 1024)),  # 5 MB, no length
])
def test_garbage_is_not_healthy_and_never_an_exception(server: Callable[[Behaviour], RawServer],
                                                        behaviour: Behaviour) -> None:
    assert status_of(server(behaviour).url()) is None


def test_only_http_and_https_are_asked(server: Callable[[Behaviour], RawServer], tmp_path: Any) -> None:
    srv = server(answer(GOOD))
    secret = tmp_path / "status.json"
    secret.write_bytes(GOOD)
    for url in (f"file://{secret}", f"file://localhost{secret}", "data:application/json," + GOOD.decode(),
                f"ftp://127.0.0.1:{srv.port}/patroni", f"gopher://127.0.0.1:{srv.port}/", "http://", "nonsense",
                f"http://127.0.0.1:{srv.port}/pat\nroni", f"http://127.0.0.1:{srv.port}:99/"):
        assert status_of(url) is None, url
    assert srv.requests == 0
    assert peers.ping_failsafe(f"file://{secret}", {}, None, None) is False


def test_a_peer_that_trickles_its_answer_is_cut_off_at_the_deadline(
        server: Callable[[Behaviour], RawServer]) -> None:
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        while not stop.wait(0.1):  # a header byte every 0.1 s: each read succeeds well within any timeout
            conn.sendall(b"X")
    srv = server(trickle)
    try:
        started = time.monotonic()
        assert status_of(srv.url(), timeout=1.0) is None
        assert time.monotonic() - started < 1.5
    finally:
        stop.set()


def test_fetch_all_answers_within_its_deadline_whatever_the_peers_do(
        server: Callable[[Behaviour], RawServer]) -> None:
    stop = threading.Event()
    silent = server(lambda conn: stop.wait(10))
    good = server(answer(GOOD))
    members = [Member(f"s{i}", {"api_url": silent.url()}) for i in range(40)]
    members += [Member("good", {"api_url": good.url()}), Member("file", {"api_url": "file:///etc/passwd"})]
    try:
        started = time.monotonic()
        result = peers.fetch_all(members, timeout=1.0)
        assert time.monotonic() - started < 2.0
        assert result["good"] is not None and result["file"] is None
        assert all(result[f"s{i}"] is None for i in range(40))
    finally:
        stop.set()


def test_failsafe_pings_only_count_a_200(server: Callable[[Behaviour], RawServer]) -> None:
    assert peers.ping_failsafe(server(answer(b"Accepted")).url(), {"name": "n1"}, "Basic x", None) is True
    assert peers.ping_failsafe(server(answer(b"no", "500 Oops")).url(), {"name": "n1"}, None, None) is False
    assert peers.ping_failsafe(server(raw(b"garbage\r\n\r\n")).url(), {}, None, None, timeout=0.5) is False
