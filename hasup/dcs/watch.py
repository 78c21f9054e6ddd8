"""A thread that blocks on an etcd v2 watch so a change wakes the election cycle at once."""

from __future__ import annotations

import os
import threading
import time

from hasup.dcs.store import Store


class KeyWatch(threading.Thread):
    """Watches one key and writes to wake_fd when it changes.

    Each cycle arms it; a watch already waiting on the same key from an index no later than the
    one asked for covers every change the new one would report, so it is kept instead of being
    replaced (a v2 watch is one long-poll request: keeping it is what makes an idle cycle cost no
    watch request).  The leader renews its key without an event (`refresh`), so a replica's watch
    on it ends only when the key changes hands or expires."""

    def __init__(self, store: Store, wake_fd: int) -> None:
        super().__init__(name="key-watch", daemon=True)
        self.store = store
        self.wake_fd = wake_fd
        self.request: tuple[str, int, float] | None = None
        self.waiting: tuple[str, int] | None = None  # the watch in flight
        self.cond = threading.Condition()

    def arm(self, key: str, index: int, until: float) -> None:
        with self.cond:
            if self.waiting is not None and self.waiting[0] == key and self.waiting[1] <= index:
                return
            self.request = (key, index, until)
            self.cond.notify()

    def run(self) -> None:
        while True:
            with self.cond:
                while self.request is None:
                    self.cond.wait()
                key, index, until = self.request
                self.request = None
                self.waiting = (key, index)
            remaining = until - time.monotonic()
            try:
                changed = remaining > 0.2 and self.store.watch(key, index, remaining)
            finally:
                with self.cond:
                    self.waiting = None  # before the wake: the cycle it starts arms a new watch
            if changed:
                os.write(self.wake_fd, b"w")
