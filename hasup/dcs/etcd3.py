"""The cluster's keys in etcd's v3 keyspace, as Patroni 4 lays them out (`etcd3:`).

The same paths and values as on v2 (`/<namespace>/<scope>/leader`, `members/<name>`, ...).
What v3 changes is how keys expire and how writes are made conditional:
- Each node holds one lease of `ttl`, as Patroni does: its member key hangs on it, and so does the
  leader key while it leads.  Refreshing the lock is a keep-alive of that lease plus a check that the
  key still names us on it (the watch-fed cache when it can be trusted, else a read-only transaction),
  so a healthy leader writes nothing to the raft log.  A graceful release deletes the leader key (if
  ours) and keeps the lease, so the member key stays.  A replica keeps the lease alive every ttl/3; the
  member key is rewritten only when its value changes.
- Every write that must not race is a transaction comparing the key's value, mod or create revision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hasup.config import EtcdConfig
from hasup.dcs.endpoints import Endpoints
from hasup.dcs.etcd3_cache import CATCH_UP, ClusterCache
from hasup.dcs.etcd3_client import (
    CallFailed,
    Etcd3Client,
    Etcd3Error,
    KeyValue,
    b64,
    header_revision,
    int64,
    parse_kv,
    prefix_end,
)
from hasup.dcs.model import Cluster, build_cluster
from hasup.dcs.store import DCSError, base_path, compact, sync_value

log = logging.getLogger(__name__)

WAKE_KEYS = ("leader", "failover", "config", "initialize", "sync")
READ_RENEWAL_USABLE = 1.0  # seconds a keep-alive sent by a cycle's read may stand for the lock refresh after it


class Lease:
    """A lease this store granted: its id, the ttl asked for, and when it was last known alive."""

    def __init__(self, lease_id: int, ttl: int, alive_at: float) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.alive_at = alive_at


class Etcd3Store:
    def __init__(self, cfg: EtcdConfig, namespace: str, scope: str, retry_timeout: float = 10,
                 endpoints: Endpoints | None = None) -> None:
        self.cfg = cfg
        self.base = base_path(namespace, scope)
        self.retry_timeout = retry_timeout
        self.client = Etcd3Client(cfg, endpoints)
        self._lease: Lease | None = None  # the member key's, and the leader key's while we lead
        self._member_written: str | None = None
        self._seen: dict[str, tuple[str, int]] = {}  # relative key -> (value, lease) at the last read
        self._deadline: float | None = None  # of the operation in progress (one budget for all its calls)
        self._cache: ClusterCache | None = None  # a watch-fed copy of the keys (hasup/dcs/etcd3_cache.py)
        self._wrote = 0  # revision of this store's last write that changed a key: a cache read must hold it
        self._read_renewal: float | None = None  # a keep-alive a cached read sent, not yet used by a refresh
        self.lock_alive_at: float | None = None  # start of the keep-alive the last lock call relied on

    # -- plumbing ------------------------------------------------------------------------

    def key(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    @property
    def prefix(self) -> str:
        return self.base + "/"

    @property
    def prefix_end(self) -> str:
        return prefix_end(self.prefix)

    def attach(self, cache: ClusterCache) -> None:
        """Read the cluster from cache whenever it can be trusted (the election worker's store)."""
        self._cache = cache

    def _wrote_at(self, doc: dict[str, Any]) -> None:
        self._wrote = max(self._wrote, header_revision(doc))

    @contextmanager
    def _operation(self) -> Iterator[None]:
        """Several calls (keep-alive, then a transaction...) that must fit in one retry_timeout together:
        the lease rule counts on a refresh ending within it."""
        outer = self._deadline is None
        if outer:
            self._deadline = time.monotonic() + self.retry_timeout
        try:
            yield
        finally:
            if outer:
                self._deadline = None

    def _call(self, method: str, body: dict[str, Any], budget: float | None = None) -> dict[str, Any]:
        if budget is None:
            budget = self.retry_timeout if self._deadline is None else self._deadline - time.monotonic()
        try:
            return self.client.call(method, body, budget)
        except CallFailed as exc:
            raise DCSError(str(exc)) from None
        except Etcd3Error as exc:
            raise DCSError(f"etcd refused {method}: {exc}") from None

    def _put(self, rel: str, value: str, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": b64(self.key(rel)), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        self._wrote_at(self._call("/kv/put", body))

    def _delete(self, rel: str) -> bool:
        doc = self._call("/kv/deleterange", {"key": b64(self.key(rel))})
        if int64(doc.get("deleted")) > 0:
            self._wrote_at(doc)
            return True
        return False

    def _txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> bool:
        doc = self._call("/kv/txn", {"compare": compare, "success": success})
        succeeded = doc.get("succeeded") is True
        if succeeded and success:  # a read-only or failed transaction changed nothing the cache must show
            self._wrote_at(doc)
        return succeeded

    def _compare(self, rel: str, target: str, value: Any) -> dict[str, Any]:
        field = {"VALUE": "value", "MOD": "mod_revision", "CREATE": "create_revision", "LEASE": "lease"}[target]
        return {"key": b64(self.key(rel)), "result": "EQUAL", "target": target,
                field: b64(value) if target == "VALUE" else str(value)}

    def _put_op(self, rel: str, value: str, lease: int = 0) -> dict[str, Any]:
        put: dict[str, Any] = {"key": b64(self.key(rel)), "value": b64(value)}
        if lease:
            put["lease"] = str(lease)
        return {"request_put": put}

    def _delete_op(self, rel: str) -> dict[str, Any]:
        return {"request_delete_range": {"key": b64(self.key(rel))}}

    # -- leases ----------------------------------------------------------------------------

    def _grant(self, ttl: int) -> Lease:
        started = time.monotonic()
        doc = self._call("/lease/grant", {"TTL": str(ttl)})
        lease_id = int64(doc.get("ID"))
        if not lease_id:
            raise DCSError(f"etcd granted no lease: {str(doc.get('error') or '')[:200]}")
        return Lease(lease_id, ttl, started)

    def _keep_alive(self, lease: Lease) -> bool:
        """Renew lease; False when etcd no longer has it (it expired: its keys are gone)."""
        started = time.monotonic()
        doc = self._call("/lease/keepalive", {"ID": str(lease.id)})
        result = doc.get("result")
        if isinstance(result, dict) and int64(result.get("TTL")) > 0:
            lease.alive_at = started
            return True
        return False

    def _live_lease(self, current: Lease | None, ttl: int) -> tuple[Lease, bool]:
        """A lease of ttl that etcd has now (renewed or new), and whether it is new."""
        if current is not None and current.ttl == ttl and self._keep_alive(current):
            return current, False
        return self._grant(ttl), True

    # -- reads -------------------------------------------------------------------------------

    def read_all(self) -> tuple[dict[str, KeyValue], int]:
        """Every key of the cluster by relative key, and the revision of the read."""
        prefix = self.base + "/"
        doc = self._call("/kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix)})
        kvs = doc.get("kvs")
        parsed = [parse_kv(raw) for raw in kvs] if isinstance(kvs, list) else []
        return {kv.key[len(prefix):]: kv for kv in parsed if kv is not None and kv.key.startswith(prefix)}, \
            header_revision(doc)

    def get_cluster(self) -> Cluster:
        cached = self._cache.read(self._wrote, CATCH_UP) if self._cache is not None else None
        if cached is not None:
            self._renew_if_leading(cached[0])
        keys, revision = cached if cached is not None else self.read_all()
        self._seen = {rel: (kv.value, kv.lease) for rel, kv in keys.items()}
        return build_cluster({rel: (kv.value, kv.mod_revision, None) for rel, kv in keys.items()}, revision)

    def _renew_if_leading(self, keys: dict[str, KeyValue]) -> None:
        """A leader's cached read still asks etcd one thing: the keep-alive its lock needs anyway, sent
        here so that an etcd that stopped answering fails the read, as a range would have (the cycle
        then takes the path of an unreachable etcd: failsafe_mode or demotion), and the lock refresh
        that follows uses it instead of sending another."""
        lease, leader = self._lease, keys.get("leader")
        if lease is None or leader is None or leader.lease != lease.id:
            return
        with self._operation():
            if self._keep_alive(lease):
                self._read_renewal = lease.alive_at

    def read_raw(self) -> dict[str, str]:
        """Every key of the cluster as {relative key: value}, unparsed (hasupctl migrate-dcs)."""
        return {rel: kv.value for rel, kv in self.read_all()[0].items()}

    def put_raw(self, rel: str, value: str) -> None:
        self._put(rel, value)

    def watch(self, rel: str, index: int, timeout: float) -> bool:
        """Block until the cluster changes in a way that needs a cycle now, at or after revision index,
        or timeout. True if it changed.

        One watch on the whole cluster prefix from the revision after the last read, so nothing
        that happened since is missed; it ends for `rel` or any key that changes who leads or how
        (WAKE_KEYS), not for member keys or the status the leader keeps up to date.  A compacted
        revision counts as a change: the caller reads the whole cluster again."""
        prefix = self.base + "/"
        wake = {self.key(k) for k in (rel, *WAKE_KEYS)}
        try:
            outcome = self.client.watch(prefix, index, timeout, prefix_end(prefix), wake.__contains__)
        except Etcd3Error as exc:
            log.warning("etcd watch on %s refused: %s", rel, exc)
            return False
        if outcome == "compacted":
            log.info("etcd compacted revision %d away: reading the cluster again", index)
        return outcome != "timeout"

    # -- leader lock --------------------------------------------------------------------------

    def acquire_leader(self, name: str, ttl: int) -> bool:
        with self._operation():
            lease, _new = self._live_lease(self._lease, ttl)
            self._lease, self.lock_alive_at = lease, lease.alive_at
            return self._txn([self._compare("leader", "CREATE", 0)], [self._put_op("leader", name, lease.id)])

    def refresh_leader(self, name: str, ttl: int) -> bool:
        with self._operation():
            renewal, self._read_renewal = self._read_renewal, None
            lease = self._lease
            if lease is not None and lease.ttl == ttl and renewal is not None and lease.alive_at == renewal \
                    and time.monotonic() - renewal < READ_RENEWAL_USABLE:
                new = False  # renewed by this cycle's read (_renew_if_leading) a moment ago
            else:
                lease, new = self._live_lease(lease, ttl)
            self._lease, self.lock_alive_at = lease, lease.alive_at
            if not new and self._ours_in_cache(name, lease.id):
                return True
            if not new and self._txn([self._compare("leader", "VALUE", name),
                                      self._compare("leader", "LEASE", lease.id)], []):
                return True
            # Ours but on another lease (a restarted worker, a new ttl), or gone: put it on this lease.
            if self._txn([self._compare("leader", "VALUE", name)], [self._put_op("leader", name, lease.id)]):
                return True
            return self._txn([self._compare("leader", "CREATE", 0)], [self._put_op("leader", name, lease.id)])

    def _ours_in_cache(self, name: str, lease_id: int) -> bool:
        """The trusted cache shows the leader key naming us on this lease: the keep-alive that just
        succeeded keeps it, and only a write (which the stream would show) could change it, so the
        check needs no transaction."""
        cached = self._cache.read(self._wrote, CATCH_UP) if self._cache is not None else None
        if cached is None:
            return False
        kv = cached[0].get("leader")
        return kv is not None and kv.value == name and kv.lease == lease_id

    def take_leader(self, name: str, ttl: int) -> None:
        with self._operation():
            lease, _new = self._live_lease(self._lease, ttl)
            self._lease, self.lock_alive_at = lease, lease.alive_at
            self._put("leader", name, lease.id)

    def delete_leader(self, name: str) -> bool:
        # The lease stays: the member key hangs on it too.
        return self._txn([self._compare("leader", "VALUE", name)], [self._delete_op("leader")])

    # -- member key -----------------------------------------------------------------------------

    def touch_member(self, name: str, data: dict[str, Any], ttl: int) -> None:
        rel = f"members/{name}"
        value = compact(data)
        with self._operation():
            lease = self._lease
            renewed = False
            # A leader's lock refresh keeps the lease alive every cycle: then this costs nothing.
            if lease is None or lease.ttl != ttl or time.monotonic() - lease.alive_at >= ttl / 3:
                lease, renewed = self._live_lease(lease, ttl)
                self._lease = lease
            if renewed or value != self._member_written or self._seen.get(rel) != (value, lease.id):
                self._put(rel, value, lease.id)
                self._member_written = value
                self._seen[rel] = (value, lease.id)  # until the next read says otherwise

    # -- other keys -------------------------------------------------------------------------------

    def claim_initialize(self) -> bool:
        return self._txn([self._compare("initialize", "CREATE", 0)], [self._put_op("initialize", "")])

    def set_initialize(self, sysid: str) -> None:
        self._put("initialize", sysid)

    def delete_initialize(self) -> bool:
        return self._delete("initialize")

    def _set_guarded(self, rel: str, value: str, index: int | None) -> bool:
        if index:
            return self._txn([self._compare(rel, "MOD", index)], [self._put_op(rel, value)])
        self._put(rel, value)
        return True

    def set_config(self, config: dict[str, Any], index: int | None = None) -> bool:
        return self._set_guarded("config", compact(config), index)

    def set_history(self, history: list[list[Any]]) -> None:
        self._put("history", compact(history))

    def set_sync(self, leader: str, standbys: tuple[str, ...], quorum: int | None = None) -> None:
        self._put("sync", compact(sync_value(leader, standbys, quorum)))

    def set_failsafe(self, members: dict[str, str]) -> None:
        self._put("failsafe", compact(members))

    def delete_sync(self) -> None:
        self._delete("sync")

    def set_status(self, status: dict[str, Any]) -> None:
        self._put("status", compact(status))

    def set_failover(self, value: dict[str, Any], index: int | None = None) -> bool:
        return self._set_guarded("failover", compact(value), index)

    def clear_failover(self, index: int | None = None) -> bool:
        return self._set_guarded("failover", "{}", index)

    def delete_cluster(self) -> None:
        prefix = self.base + "/"
        doc = self._call("/kv/deleterange", {"key": b64(prefix), "range_end": prefix_end(prefix)})
        if int64(doc.get("deleted")) > 0:
            self._wrote_at(doc)
