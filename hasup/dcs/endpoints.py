"""Which etcd member to ask next, and how long one operation may take across them.

Production etcd has three or five members.  One that is dead, frozen or cut off must cost one
bounded attempt, never the whole retry_timeout: a member that failed goes to the back of the
queue for PENALTY seconds, so the next operations start with one that answered.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar
from urllib.parse import urlsplit

from hasup.config import EtcdConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

PENALTY = 30.0  # seconds a failed member waits behind the others
MIN_ATTEMPT = 0.2  # an attempt with less time left would overrun the bound the leader's lease relies on
MAX_ENDPOINTS = 16  # discovered member lists are capped: they come from outside
DISCOVERY_INTERVAL = 300.0  # seconds between reads of the member list the cluster advertises


class Endpoints:
    """The members a client may ask, in a health-aware order; safe to share between threads."""

    def __init__(self, configured: Iterable[str], clock: Callable[[], float] = time.monotonic) -> None:
        self._urls: list[str] = list(dict.fromkeys(configured))
        if not self._urls:
            raise ValueError("no etcd endpoint")
        self._clock = clock
        self._failed_at: dict[str, float] = {}
        self._preferred = self._urls[0]
        self._last_reason: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def urls(self) -> list[str]:
        with self._lock:
            return list(self._urls)

    def order(self) -> list[str]:
        """Healthy members first (the one that last answered leads), then failed ones, oldest failure first."""
        now = self._clock()
        with self._lock:
            healthy = [u for u in self._urls if now - self._failed_at.get(u, -PENALTY) >= PENALTY]
            if self._preferred in healthy:
                healthy.remove(self._preferred)
                healthy.insert(0, self._preferred)
            failed = sorted((u for u in self._urls if u not in healthy), key=lambda u: self._failed_at[u])
            return healthy + failed

    def succeeded(self, url: str) -> None:
        with self._lock:
            self._failed_at.pop(url, None)
            self._preferred = url
            if self._last_reason.pop(url, None) is not None:
                log.info("etcd member %s answers again", url)

    def failed(self, url: str, reason: str) -> None:
        """Send `url` to the back of the queue; say why once per member and reason."""
        with self._lock:
            self._failed_at[url] = self._clock()
            if self._last_reason.get(url) != reason:
                self._last_reason[url] = reason
                log.warning("etcd member %s failed: %s", url, reason)

    def failed_since(self, url: str, since: float) -> bool:
        """Whether a call to url failed at or after `since` (this clock)."""
        with self._lock:
            return self._failed_at.get(url, float("-inf")) >= since

    def add(self, discovered: Iterable[str]) -> None:
        """Members the cluster advertises join the configured ones (only http(s) URLs, capped)."""
        with self._lock:
            for url in discovered:
                if len(self._urls) >= MAX_ENDPOINTS:
                    break
                parts = urlsplit(url)
                url = url.rstrip("/")
                if parts.scheme in ("http", "https") and parts.hostname and url not in self._urls:
                    self._urls.append(url)


def configured(cfg: EtcdConfig) -> Endpoints:
    """The members the configuration names, as URLs."""
    return Endpoints(f"{cfg.protocol}://{host}:{port}" for host, port in cfg.hosts)


class Exhausted(Exception):
    """No attempt succeeded within the budget; carries the last failure."""


def per_attempt(budget: float, members: int) -> float:
    """Split the budget so every member gets a try and one more round is left (at least 1 s each)."""
    return max(1.0, budget / max(2, members * 2))


def within_budget(endpoints: Endpoints, budget: float, attempt: Callable[[str, float], T],
                  classify: Callable[[BaseException], str | None], clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> T:
    """Run attempt(url, timeout) on member after member until one succeeds or the budget is spent.

    classify(exc) returns a one-line reason for a failure worth another member, None for an
    error that another member would repeat (it is re-raised).  No attempt starts with less
    than MIN_ATTEMPT left, so the whole call never overruns `budget`."""
    deadline = clock() + budget
    order = endpoints.order()
    timeout = per_attempt(budget, len(order))
    last = "no attempt made"
    tried = 0
    while True:
        remaining = deadline - clock()
        if remaining < MIN_ATTEMPT:
            raise Exhausted(last)
        if tried and tried % len(order) == 0:
            # Every member failed once: a short pause before the next round (an etcd election takes ~1 s).
            sleep(min(remaining - MIN_ATTEMPT, random.uniform(0.05, 0.25)) if remaining > MIN_ATTEMPT else 0)
            remaining = deadline - clock()
            if remaining < MIN_ATTEMPT:
                raise Exhausted(last)
        url = order[tried % len(order)]
        tried += 1
        try:
            result = attempt(url, min(timeout, remaining))
        except Exception as exc:  # classify decides what is worth another member
            reason = classify(exc)
            if reason is None:
                raise
            endpoints.failed(url, reason)
            last = f"{url}: {reason}"
            continue
        endpoints.succeeded(url)
        return result
