"""Blocking calls on a helper thread while the worker's loop keeps answering its heartbeat.

The election worker's etcd and peer calls may each block for seconds
(bounded by retry_timeout), yet its heartbeat must be short: a frozen
election worker has to be replaced before the watchdog resets the node
(hasup.timing).  So each call runs on one helper thread and the loop keeps
pumping the supervisor pipe meanwhile, answering pings.  Anything else that
arrives is kept for the loop to handle after the call, in order, so no
handler ever runs in the middle of another, except what `urgent` takes:
a request that must be answered within a peer's timeout and touches
nothing a handler could be in the middle of (a failsafe ping: its sender
is cut off from etcd and resets itself unless every member answers).

Pings are answered only while the call is within its bound: a call stuck
past it must look like the hang it is, and get the worker replaced.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar, cast

from hasup import ipc
from hasup.worker import WorkerContext, pump

T = TypeVar("T")


class Offloader:
    def __init__(self, ctx: WorkerContext, bound: Callable[[], float],
                 urgent: Callable[[ipc.Envelope], bool] = lambda env: False) -> None:
        self.ctx = ctx
        self.bound = bound  # seconds one call may take before we stop vouching for the worker
        self.urgent = urgent  # handles an envelope at once and says so, or leaves it for later
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{ctx.role}-io")
        self.deferred: list[ipc.Envelope] = []
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        future: Future[T] = self.executor.submit(fn, *args, **kwargs)
        future.add_done_callback(lambda _: os.write(self.wake_w, b"x"))
        deadline = time.monotonic() + self.bound()
        while not future.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break  # stop answering pings: from here on only the call's own return helps
            self.deferred.extend(env for env in pump(self.ctx, remaining, extra=[self.wake_r])
                                 if not self.urgent(env))
        self._drain_wake()
        return future.result()

    def take_deferred(self) -> list[ipc.Envelope]:
        out, self.deferred = self.deferred, []
        return out

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass


class OffloadedProxy:
    """An object whose method calls run through an Offloader; attribute reads and writes pass through."""

    def __init__(self, target: object, offloader: Offloader) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_offloader", offloader)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(object.__getattribute__(self, "_target"), name)
        if not callable(attr):
            return attr
        offloader = cast(Offloader, object.__getattribute__(self, "_offloader"))
        return lambda *args, **kwargs: offloader.call(attr, *args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_target"), name, value)
