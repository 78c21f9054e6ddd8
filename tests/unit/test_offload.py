"""Offloader: a blocking call on a helper thread while the loop keeps answering heartbeats."""

from __future__ import annotations

import os
import threading
import time

import pytest

from hasup import ipc
from hasup.election.offload import OffloadedProxy, Offloader
from hasup.worker import WorkerContext
from tests.unit.test_api_worker import make_config


@pytest.fixture
def pair():
    sup_end, worker_end = ipc.channel_pair()
    sup, worker = ipc.Channel(sup_end, "election"), ipc.Channel(worker_end, "supervisor")
    ctx = WorkerContext("election", make_config(1), worker, supervisor_pid=os.getpid())
    yield sup, ctx
    sup.close()
    worker.close()


def receive_until(sup: ipc.Channel, want: int, timeout: float = 5.0) -> list[ipc.Message]:
    got: list[ipc.Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += [e.message for e in sup.receive()]
        time.sleep(0.01)
    return got


def test_pings_are_answered_while_a_call_blocks_and_other_messages_wait_in_order(pair) -> None:
    sup, ctx = pair
    release = threading.Event()
    offload = Offloader(ctx, bound=lambda: 10.0)

    def supervisor() -> None:
        sup.send_now(ipc.Ping(1))
        sup.send_now(ipc.Disarm("first"))
        sup.send_now(ipc.Ping(2))
        sup.send_now(ipc.Disarm("second"))
        answered = receive_until(sup, 2)
        assert answered == [ipc.Pong(1), ipc.Pong(2)]
        release.set()

    helper = threading.Thread(target=supervisor)
    helper.start()
    assert offload.call(lambda: release.wait(5) and "done") == "done"
    helper.join(5)
    assert [e.message for e in offload.take_deferred()] == [ipc.Disarm("first"), ipc.Disarm("second")]
    assert offload.take_deferred() == []


def test_an_urgent_request_is_answered_during_the_call_and_the_rest_still_waits(pair) -> None:
    """A failsafe ping must not wait behind an etcd read that hangs (its sender resets without an answer)."""
    sup, ctx = pair
    release = threading.Event()
    handled: list[ipc.Message] = []

    def urgent(env: ipc.Envelope) -> bool:
        if isinstance(env.message, ipc.AdminRequest) and env.message.action == "failsafe":
            handled.append(env.message)
            ctx.channel.send_now(ipc.AdminReply(env.message.id, 200, "Accepted"))
            return True
        return False
    offload = Offloader(ctx, bound=lambda: 10.0, urgent=urgent)
    ping = ipc.AdminRequest(5, time.monotonic() + 5, "failsafe", {"name": "node2"})

    def supervisor() -> None:
        sup.send_now(ipc.Disarm("first"))
        sup.send_now(ping)
        answered = receive_until(sup, 1)
        assert answered == [ipc.AdminReply(5, 200, "Accepted")]
        release.set()

    helper = threading.Thread(target=supervisor)
    helper.start()
    assert offload.call(lambda: release.wait(5) and "done") == "done"
    helper.join(5)
    assert handled == [ping]
    assert [e.message for e in offload.take_deferred()] == [ipc.Disarm("first")]


def test_a_call_past_its_bound_stops_vouching_for_the_worker(pair) -> None:
    sup, ctx = pair
    offload = Offloader(ctx, bound=lambda: 0.2)
    release = threading.Event()

    def late_ping() -> None:
        time.sleep(0.4)  # after the bound: nobody may answer now
        sup.send_now(ipc.Ping(7))
        time.sleep(0.3)
        release.set()

    helper = threading.Thread(target=late_ping)
    helper.start()
    started = time.monotonic()
    assert offload.call(lambda: release.wait(5)) is True
    helper.join(5)
    assert time.monotonic() - started >= 0.6
    assert [e.message for e in sup.receive()] == []  # the ping waited: the loop was not turning
    assert ipc.Ping(7) not in [e.message for e in offload.take_deferred()]


def test_exceptions_come_back_and_the_proxy_passes_attributes(pair) -> None:
    _, ctx = pair
    offload = Offloader(ctx, bound=lambda: 5.0)

    class Store:
        retry_timeout = 3

        def fail(self) -> None:
            raise ValueError("etcd says no")

        def twice(self, x: int) -> int:
            return 2 * x

    store = Store()
    proxy = OffloadedProxy(store, offload)
    assert proxy.twice(21) == 42
    with pytest.raises(ValueError, match="etcd says no"):
        proxy.fail()
    proxy.retry_timeout = 9
    assert store.retry_timeout == 9 and proxy.retry_timeout == 9
