"""A watch-fed copy of one cluster's keys (v3), so an idle election cycle asks etcd for nothing.

A thread reads the cluster prefix once (a linearizable range) and then follows one watch on it
from the revision after that read, applying every event to the copy; a change of a key that
decides who leads (WAKE_KEYS) also wakes the election cycle at once.  The stream is replaced by a
fresh read and watch every RESYNC seconds, after a compaction, a cancel (a member without a raft
leader ends its watches: the `hasleader` metadata) or any failure.

The copy is only offered while it can be trusted (ClusterCache.read): a stream is open, its member
has not failed any other call of this node since the stream started (a frozen or cut-off member
fails the keep-alives that the node sends every cycle as leader, every ttl / 3 as a replica), and
it holds this node's own last write.  Otherwise the reader falls back to a range of its own, as
before the cache existed.  docs/etcd.md ("Watches") says what this costs and saves.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from hasup.dcs.endpoints import Endpoints
from hasup.dcs.etcd3_client import Event, KeyValue

log = logging.getLogger(__name__)

RESYNC = 300.0  # seconds a stream lives before the keys are read afresh: no missed event outlives it
CATCH_UP = 1.0  # seconds a read waits for the stream to bring this node's own last write
BACKOFF = (1.0, 8.0)  # first and longest pause before reading again after a failure


class ClusterCache:
    """The keys under prefix as the stream last delivered them; shared by the watch thread and the store."""

    def __init__(self, prefix: str, endpoints: Endpoints, clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix = prefix
        self._endpoints = endpoints
        self._clock = clock
        self._cond = threading.Condition()
        self._keys: dict[str, KeyValue] = {}  # by key relative to prefix
        self._revision = 0  # every change of the prefix up to this revision is in _keys
        self._source: str | None = None  # the member serving the open stream; None: no stream, no trust
        self._since = 0.0
        self._response: Any = None

    def load(self, keys: dict[str, KeyValue], revision: int) -> set[str]:
        """A fresh read of the prefix (not trusted until a stream opens); the relative keys that changed."""
        with self._cond:
            changed = {k for k in self._keys.keys() | keys.keys() if self._keys.get(k) != keys.get(k)}
            self._keys, self._revision, self._source = dict(keys), revision, None
            return changed

    def opened(self, url: str, response: Any) -> None:
        with self._cond:
            self._source, self._since, self._response = url, self._clock(), response
            self._cond.notify_all()

    def apply(self, events: Iterable[Event]) -> set[str]:
        """Events of the stream, in order; the relative keys they changed."""
        changed: set[str] = set()
        with self._cond:
            for e in events:
                if not e.kv.key.startswith(self.prefix):
                    continue
                rel = e.kv.key[len(self.prefix):]
                if e.deleted:
                    self._keys.pop(rel, None)
                else:
                    self._keys[rel] = e.kv
                self._revision = max(self._revision, e.kv.mod_revision)
                changed.add(rel)
            self._cond.notify_all()
        return changed

    def closed(self) -> None:
        with self._cond:
            self._source, self._response = None, None

    def read(self, min_revision: int, wait: float) -> tuple[dict[str, KeyValue], int] | None:
        """The keys and their revision when the copy can be trusted and holds min_revision (waiting up to
        `wait` for the stream to bring it); None when the caller must read etcd itself."""
        deadline = self._clock() + wait
        with self._cond:
            while True:
                if self._source is None:
                    return None
                if self._endpoints.failed_since(self._source, self._since):
                    self._kill()  # the thread reads again, from a member that answers
                    return None
                if self._revision >= min_revision:
                    return dict(self._keys), self._revision
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def _kill(self) -> None:
        response, self._source, self._response = self._response, None, None
        if response is not None:
            try:
                response.shutdown()  # unblocks the thread's read at once
            except Exception as exc:  # already closed: the thread is on its way out anyway
                log.debug("closing the etcd watch stream: %s", exc)


class CacheWatch(threading.Thread):
    """Keeps a ClusterCache fed; writes to wake_fd when a key in `wake` changes.

    store is an Etcd3Store of its own (its own connections), sharing the cycle store's Endpoints."""

    def __init__(self, store: Any, cache: ClusterCache, wake_fd: int, wake: Iterable[str]) -> None:
        super().__init__(name="etcd-cache", daemon=True)
        self.store = store
        self.cache = cache
        self.wake_fd = wake_fd
        self.wake = frozenset(wake)

    def arm(self, key: str, index: int, until: float) -> None:
        """The stream is always on: nothing to arm (KeyWatch, its v2 counterpart, needs it)."""

    def run(self) -> None:
        pause = BACKOFF[0]
        while True:
            started = time.monotonic()
            try:
                outcome = self.follow()
            except Exception as exc:  # etcd unreachable, or a bug: the cycle reads for itself meanwhile
                log.debug("etcd watch cache: %s", exc)
                outcome = "failed"
            finally:
                self.cache.closed()
            if outcome == "failed" or outcome != "compacted" and time.monotonic() - started < BACKOFF[0]:
                time.sleep(pause)  # a member that ends every stream at once must not make us spin
                pause = min(pause * 2, BACKOFF[1])
            else:
                pause = BACKOFF[0]

    def follow(self) -> str:
        keys, revision = self.store.read_all()
        self.woken(self.cache.load(keys, revision))

        def on_events(events: list[Event], _revision: int) -> bool:
            self.woken(self.cache.apply(events))
            return False

        outcome: str = self.store.client.stream(self.cache.prefix, revision + 1, RESYNC, self.store.prefix_end,
                                                on_events, self.cache.opened)
        if outcome == "compacted":
            log.info("etcd compacted revision %d away: reading the cluster again", revision + 1)
        return outcome

    def woken(self, changed: set[str]) -> None:
        if changed & self.wake:
            os.write(self.wake_fd, b"w")
