"""The cluster's keys in etcd's v2 keyspace, through python-etcd (`etcd:`).

Every operation is bounded by retry_timeout: requests are retried across the
members (Endpoints, failed ones last) until then, and a DCSError is raised after.
CAS failures are results (False), not errors.  python-etcd's own HTTP pool is
replaced by ours (hasup/dcs/tls.py): TLS with the configured files, no retries
of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import urllib3
import urllib3.exceptions

from hasup.config import EtcdConfig
from hasup.dcs.dnsless import without_dnspython
from hasup.dcs.endpoints import DISCOVERY_INTERVAL, Endpoints, Exhausted, configured, within_budget
from hasup.dcs.model import Cluster, build_cluster
from hasup.dcs.store import DCSError, base_path, compact, sync_value
from hasup.dcs.tls import pool_manager, reason_of

with without_dnspython():  # its SRV discovery is the one use python-etcd has for dnspython
    import etcd

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
_CAS_FAILURES = (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed, etcd.EtcdAlreadyExist, etcd.EtcdNotFile)


def _classify(exc: BaseException) -> str | None:
    """A reason when another member is worth asking; None for answers every member would repeat."""
    if isinstance(exc, _CAS_FAILURES) or not isinstance(exc, _RETRYABLE):
        return None
    return reason_of(exc)


class _Timed:
    """python-etcd's pool with each request bounded in total (a plain number bounds connect and
    read each, twice the attempt) and never retried by urllib3 (we retry across members)."""

    def __init__(self, pool: urllib3.PoolManager) -> None:
        self._pool = pool

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        kwargs["retries"] = False
        if isinstance(kwargs.get("timeout"), int | float):
            kwargs["timeout"] = urllib3.Timeout(total=kwargs["timeout"])
        return getattr(self._pool, name)(*args, **kwargs)

    def request(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("request", *args, **kwargs)

    def urlopen(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("urlopen", *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class EtcdStore:
    def __init__(self, cfg: EtcdConfig, namespace: str, scope: str, retry_timeout: float = 10,
                 endpoints: Endpoints | None = None) -> None:
        self.cfg = cfg
        self.base = base_path(namespace, scope)
        self.retry_timeout = retry_timeout
        self.endpoints = endpoints or configured(cfg)
        self._http = _Timed(pool_manager(cfg))
        self._clients: dict[str, etcd.Client] = {}
        self._member_written: tuple[str, float] | None = None  # (value, when)
        self._discovered_at: float | None = None
        self._seen_members: dict[str, str | None] = {}  # member keys at the last read

    # -- plumbing ------------------------------------------------------------

    def _client(self, url: str) -> etcd.Client:
        client = self._clients.get(url)
        if client is None:
            parts = urlsplit(url)
            kwargs: dict[str, Any] = {}
            if self.cfg.username:
                kwargs["username"] = self.cfg.username
                kwargs["password"] = self.cfg.password
            # One member per client: we choose members ourselves, so a dead one costs one bounded
            # attempt instead of python-etcd's own unbounded reconnect loop.
            client = etcd.Client(host=parts.hostname, port=parts.port or 2379, protocol=parts.scheme,
                                 allow_reconnect=False, **kwargs)
            client.http = self._http
            self._clients[url] = client
        return client

    def _call(self, op: Callable[[etcd.Client, float], T], budget: float | None = None) -> T:
        def attempt(url: str, timeout: float) -> T:
            client = self._client(url)
            client._read_timeout = timeout  # python-etcd exposes no setter
            result = op(client, timeout)
            self._maybe_discover(client)
            return result
        try:
            return within_budget(self.endpoints, self.retry_timeout if budget is None else budget, attempt, _classify)
        except Exhausted as exc:
            raise DCSError(f"etcd is not responding properly: {exc}") from None
        except etcd.EtcdException as exc:
            if isinstance(exc, _CAS_FAILURES):
                raise
            raise DCSError(f"etcd error: {exc}") from exc

    def _maybe_discover(self, client: etcd.Client) -> None:
        """Add the members the cluster advertises (/v2/machines, as Patroni reads it), now and then."""
        now = time.monotonic()
        if self._discovered_at is not None and now - self._discovered_at < DISCOVERY_INTERVAL:
            return
        self._discovered_at = now
        try:
            machines = client.machines
        except (etcd.EtcdException, *_RETRYABLE):
            return
        if isinstance(machines, list):
            self.endpoints.add(m for m in machines[:16] if isinstance(m, str) and len(m) < 256)

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
            self._seen_members = {k: v[0] for k, v in nodes.items() if k.startswith("members/")}
            return build_cluster(nodes, result.etcd_index or 0)
        return self._call(op)

    def read_raw(self) -> dict[str, str]:
        """Every key of the cluster as {relative key: value}, unparsed (hasupctl migrate-dcs)."""
        def op(c: etcd.Client, _t: float) -> dict[str, str]:
            try:
                result = c.read(self.base, recursive=True)
            except etcd.EtcdKeyNotFound:
                return {}
            prefix = self.base + "/"
            return {leaf.key[len(prefix):]: leaf.value for leaf in result.leaves
                    if leaf.key and leaf.key.startswith(prefix) and not leaf.dir and leaf.value is not None}
        return self._call(op)

    def put_raw(self, rel: str, value: str) -> None:
        self._call(lambda c, _t: c.write(self.key(rel), value))

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
        """Write the member key when its value changed, it is not as we left it, or a third of
        its ttl has passed (v2 renews a ttl only by writing)."""
        rel = f"members/{name}"
        value = compact(data)
        written = self._member_written
        if written is not None and written[0] == value and time.monotonic() - written[1] < ttl / 3 \
                and self._seen_members.get(rel) == value:
            return
        started = time.monotonic()
        self._call(lambda c, _t: c.write(self.key(rel), value, ttl=ttl))
        self._member_written = (value, started)
        self._seen_members[rel] = value  # until the next read says otherwise

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

    def set_sync(self, leader: str, standbys: tuple[str, ...], quorum: int | None = None) -> None:
        self._call(lambda c, _t: c.write(self.key("sync"), compact(sync_value(leader, standbys, quorum))))

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
