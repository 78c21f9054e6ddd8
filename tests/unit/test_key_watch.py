"""The v2 key watch: one long-poll kept across idle cycles, replaced only when it no longer covers the request."""

from __future__ import annotations

import os
import threading
import time

from hasup.dcs.watch import KeyWatch
from tests.harness import wait_for


class Store:
    retry_timeout = 10.0

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fire = threading.Event()

    def watch(self, rel: str, index: int, timeout: float) -> bool:
        self.calls.append((rel, index))
        fired = self.fire.wait(timeout)
        self.fire.clear()
        return fired


def test_idle_cycles_keep_the_watch_in_flight_and_a_change_wakes_the_cycle():
    r, w = os.pipe()
    os.set_blocking(r, False)
    store = Store()
    watch = KeyWatch(store, w)  # type: ignore[arg-type]
    watch.start()
    until = time.monotonic() + 30
    watch.arm("leader", 10, until)
    wait_for(lambda: store.calls, 5, "the watch to start", interval=0.01)
    for index in (11, 12, 20):  # idle cycles: the same key, later indexes
        watch.arm("leader", index, until)
    assert store.calls == [("leader", 10)]
    store.fire.set()  # the leader key changed
    wait_for(lambda: _read(r), 5, "the wake", interval=0.01)
    watch.arm("leader", 21, until)  # the cycle it woke arms the next one
    wait_for(lambda: len(store.calls) == 2, 5, "a new watch", interval=0.01)
    assert store.calls[1] == ("leader", 21)
    watch.arm("failover", 22, until)  # now leading: another key, queued behind the one in flight
    store.fire.set()
    wait_for(lambda: len(store.calls) == 3, 5, "the failover watch", interval=0.01)
    assert store.calls[2] == ("failover", 22)
    assert _read(r)  # the wake of the watch it replaced (written before the thread moved on)
    store.fire.set()
    wait_for(lambda: _read(r), 5, "the last wake", interval=0.01)  # the thread now waits for an arm
    os.close(r)
    os.close(w)


def _read(fd: int) -> bool:
    try:
        return bool(os.read(fd, 16))
    except BlockingIOError:
        return False
