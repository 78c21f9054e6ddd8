"""A thread that blocks on an etcd watch so a change wakes the election cycle at once."""

from __future__ import annotations

import os
import threading
import time

from hasup.dcs.store import Store


class KeyWatch(threading.Thread):
    """Watches one key (armed per cycle) and writes to wake_fd when it changes."""

    def __init__(self, store: Store, wake_fd: int) -> None:
        super().__init__(name="key-watch", daemon=True)
        self.store = store
        self.wake_fd = wake_fd
        self.request: tuple[str, int, float] | None = None
        self.cond = threading.Condition()

    def arm(self, key: str, index: int, until: float) -> None:
        with self.cond:
            self.request = (key, index, until)
            self.cond.notify()

    def run(self) -> None:
        while True:
            with self.cond:
                while self.request is None:
                    self.cond.wait()
                key, index, until = self.request
                self.request = None
            remaining = until - time.monotonic()
            if remaining > 0.2 and self.store.watch(key, index, remaining):
                os.write(self.wake_fd, b"w")
