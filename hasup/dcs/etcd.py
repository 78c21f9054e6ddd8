"""etcd (v2 API) access through python-etcd, with the key layout of reference §2.

Every operation is bounded by retry_timeout: requests are retried across
the configured endpoints until then, and a DCSError is raised after.  CAS
failures are results (False), not errors.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import etcd
import urllib3.exceptions

from hasup.config import EtcdConfig
from hasup.dcs.model import Cluster, build_cluster

log = logging.getLogger(__name__)
T = TypeVar("T")

_RETRYABLE = (
    etcd.EtcdConnectionFailed,
    etcd.EtcdLeaderElectionInProgress,
    etcd.EtcdWatcherCleared,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
    OSError,
)


class _NoRetries:
    """urllib3 retries a timed-out request 3 more times on its own, which would
    stretch one attempt to 4x its timeout and break the retry_timeout bound.
    We retry ourselves, across endpoints, within that bound.  A plain number
    as timeout bounds the connect and the read each (2x per attempt): it
    becomes a total."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        kwargs["retries"] = False
        if isinstance(kwargs.get("timeout"), int | float):
            kwargs["timeout"] = urllib3.Timeout(total=kwargs["timeout"])
        return getattr(self._pool, name)(*args, **kwargs)

    def request(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("request", *args, **kwargs)

    def request_encode_body(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("request_encode_body", *args, **kwargs)

    def request_encode_url(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("request_encode_url", *args, **kwargs)

    def urlopen(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("urlopen", *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class DCSError(Exception):
    """etcd did not answer properly within retry_timeout."""


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=False)


class EtcdStore:
    def __init__(self, cfg: EtcdConfig, namespace: str, scope: str, retry_timeout: float = 10) -> None:
        self.cfg = cfg
        self.base = "/" + "/".join(p for p in (namespace.strip("/"), scope) if p)
        self.retry_timeout = retry_timeout
        self._client: etcd.Client | None = None
        self._endpoint = 0

    # -- plumbing ------------------------------------------------------------

    def _make_client(self, timeout: float) -> etcd.Client:
        host, port = self.cfg.hosts[self._endpoint % len(self.cfg.hosts)]
        kwargs: dict[str, Any] = {}
        if self.cfg.username:
            kwargs["username"] = self.cfg.username
            kwargs["password"] = self.cfg.password
        # One endpoint per client; we rotate ourselves so a dead node costs one
        # bounded attempt, not python-etcd's own unbounded reconnect loop.
        client = etcd.Client(host=host, port=port, protocol=self.cfg.protocol, read_timeout=timeout,
                             allow_reconnect=False, **kwargs)
        client.http = _NoRetries(client.http)
        return client

    def _call(self, op: Callable[[etcd.Client, float], T], budget: float | None = None) -> T:
        deadline = time.monotonic() + (budget if budget is not None else self.retry_timeout)
        per_try = max(1.0, (budget or self.retry_timeout) / max(2, len(self.cfg.hosts) * 2))
        last: Exception | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining < 0.2:  # too little for an attempt: one would overrun the bound the leader relies on
                raise DCSError(f"etcd is not responding properly: {last}")
            timeout = min(per_try, remaining)
            try:
                if self._client is None:
                    self._client = self._make_client(timeout)
                self._client._read_timeout = timeout  # python-etcd exposes no setter
                return op(self._client, timeout)
            except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed, etcd.EtcdAlreadyExist, etcd.EtcdNotFile):
                raise
            except etcd.EtcdException as exc:
                if not isinstance(exc, _RETRYABLE):
                    raise DCSError(f"etcd error: {exc}") from exc
                last = exc
            except _RETRYABLE as exc:
                last = exc
            self._client = None
            self._endpoint += 1
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic()), random.uniform(0.05, 0.2)))

    def key(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    # -- reads ---------------------------------------------------------------

    def get_cluster(self) -> Cluster:
        def op(c: etcd.Client, _t: float) -> Cluster:
            try:
                result = c.read(self.base, recursive=True)
            except etcd.EtcdKeyNotFound:
                return build_cluster({}, 0)
            nodes = {}
            prefix = self.base + "/"
            for leaf in result.leaves:
                if leaf.key and leaf.key.startswith(prefix) and not leaf.dir:
                    nodes[leaf.key[len(prefix):]] = (leaf.value, leaf.modifiedIndex, leaf.expiration)
            return build_cluster(nodes, result.etcd_index or 0)
        return self._call(op)

    def watch_leader(self, index: int, timeout: float) -> bool:
        return self.watch("leader", index, timeout)

    def watch(self, rel: str, index: int, timeout: float) -> bool:
        """Block until key `rel` changes at or after index, or timeout. True if it changed."""
        def op(c: etcd.Client, _t: float) -> bool:
            try:
                c.read(self.key(rel), wait=True, waitIndex=index, timeout=timeout)
                return True
            except etcd.EtcdWatchTimedOut:
                return False
            except etcd.EtcdEventIndexCleared:
                return True
            except etcd.EtcdKeyNotFound:
                return True
        try:
            return self._call(op, budget=timeout + 1.0)
        except DCSError:
            return False

    # -- leader lock -----------------------------------------------------------

    def _cas(self, fn: Callable[[etcd.Client], Any]) -> bool:
        try:
            self._call(lambda c, _t: fn(c))
            return True
        except (etcd.EtcdCompareFailed, etcd.EtcdAlreadyExist, etcd.EtcdKeyNotFound):
            return False

    def acquire_leader(self, name: str, ttl: int) -> bool:
        return self._cas(lambda c: c.write(self.key("leader"), name, ttl=ttl, prevExist=False))

    def refresh_leader(self, name: str, ttl: int) -> bool:
        if self._cas(lambda c: c.write(self.key("leader"), name, ttl=ttl, prevValue=name)):
            return True
        # The key may have expired while we were slow: take it back if free.
        return self.acquire_leader(name, ttl)

    def take_leader(self, name: str, ttl: int) -> None:
        self._call(lambda c, _t: c.write(self.key("leader"), name, ttl=ttl))

    def delete_leader(self, name: str) -> bool:
        return self._cas(lambda c: c.delete(self.key("leader"), prevValue=name))

    # -- other keys ------------------------------------------------------------

    def touch_member(self, name: str, data: dict[str, Any], ttl: int) -> None:
        self._call(lambda c, _t: c.write(self.key(f"members/{name}"), compact(data), ttl=ttl))

    def claim_initialize(self) -> bool:
        return self._cas(lambda c: c.write(self.key("initialize"), "", prevExist=False))

    def set_initialize(self, sysid: str) -> None:
        self._call(lambda c, _t: c.write(self.key("initialize"), sysid))

    def delete_initialize(self) -> bool:
        return self._cas(lambda c: c.delete(self.key("initialize")))

    def set_config(self, config: dict[str, Any], index: int | None = None) -> bool:
        if index:
            return self._cas(lambda c: c.write(self.key("config"), compact(config), prevIndex=index))
        self._call(lambda c, _t: c.write(self.key("config"), compact(config)))
        return True

    def set_history(self, history: list[list[Any]]) -> None:
        self._call(lambda c, _t: c.write(self.key("history"), compact(history)))

    def set_sync(self, leader: str, standbys: tuple[str, ...]) -> None:
        """The sync key as Patroni writes it: the leader and its synchronous standbys (comma-separated)."""
        value = {"leader": leader, "sync_standby": ",".join(standbys) if standbys else None}
        self._call(lambda c, _t: c.write(self.key("sync"), compact(value)))

    def set_failsafe(self, members: dict[str, str]) -> None:
        self._call(lambda c, _t: c.write(self.key("failsafe"), compact(members)))

    def delete_sync(self) -> None:
        def op(c: etcd.Client, _t: float) -> None:
            try:
                c.delete(self.key("sync"))
            except etcd.EtcdKeyNotFound:
                pass
        self._call(op)

    def set_status(self, status: dict[str, Any]) -> None:
        self._call(lambda c, _t: c.write(self.key("status"), compact(status)))

    def set_failover(self, value: dict[str, Any], index: int | None = None) -> bool:
        """Write the failover key (a switchover or failover request); CAS on index when given."""
        if index:
            return self._cas(lambda c: c.write(self.key("failover"), compact(value), prevIndex=index))
        self._call(lambda c, _t: c.write(self.key("failover"), compact(value)))
        return True

    def clear_failover(self, index: int | None = None) -> bool:
        return self._cas(lambda c: c.write(self.key("failover"), "{}", **({"prevIndex": index} if index else {})))

    def delete_cluster(self) -> None:
        """Remove every key of the cluster (hasupctl remove); a cluster already gone is fine."""
        def op(c: etcd.Client, _t: float) -> None:
            try:
                c.delete(self.base, recursive=True)
            except etcd.EtcdKeyNotFound:
                pass
        self._call(op)
