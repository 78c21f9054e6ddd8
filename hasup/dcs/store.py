"""The interface both etcd backends offer (v2 through python-etcd, v3 through the JSON gateway).

Every operation is bounded by the store's retry_timeout and raises DCSError after it;
compare-and-swap failures are results (False), not errors.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from hasup.dcs.model import Cluster


class DCSError(Exception):
    """etcd did not answer properly within retry_timeout."""


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=False)


class Store(Protocol):
    retry_timeout: float
    # When the renewal the last successful lock call relied on started; None: that call's own start.
    lock_alive_at: float | None

    def get_cluster(self) -> Cluster: ...

    def watch(self, rel: str, index: int, timeout: float) -> bool: ...

    def acquire_leader(self, name: str, ttl: int) -> bool: ...

    def refresh_leader(self, name: str, ttl: int) -> bool: ...

    def take_leader(self, name: str, ttl: int) -> None: ...

    def delete_leader(self, name: str) -> bool: ...

    def touch_member(self, name: str, data: dict[str, Any], ttl: int) -> None: ...

    def claim_initialize(self) -> bool: ...

    def set_initialize(self, sysid: str) -> None: ...

    def delete_initialize(self) -> bool: ...

    def set_config(self, config: dict[str, Any], index: int | None = None) -> bool: ...

    def set_history(self, history: list[list[Any]]) -> None: ...

    def set_sync(self, leader: str, standbys: tuple[str, ...], quorum: int | None = None) -> None: ...

    def set_failsafe(self, members: dict[str, str]) -> None: ...

    def delete_sync(self) -> None: ...

    def set_status(self, status: dict[str, Any]) -> None: ...

    def set_failover(self, value: dict[str, Any], index: int | None = None) -> bool: ...

    def clear_failover(self, index: int | None = None) -> bool: ...

    def delete_cluster(self) -> None: ...

    def read_raw(self) -> dict[str, str]: ...

    def put_raw(self, rel: str, value: str) -> None: ...


def sync_value(leader: str, standbys: tuple[str, ...], quorum: int | None = None) -> dict[str, Any]:
    """The sync key as Patroni writes it: the leader and its synchronous standbys (comma-separated),
    and in quorum mode the quorum."""
    value: dict[str, Any] = {"leader": leader, "sync_standby": ",".join(standbys) if standbys else None}
    if quorum is not None:
        value["quorum"] = quorum
    return value


def base_path(namespace: str, scope: str) -> str:
    """`/<namespace>/<scope>` with slashes collapsed, the same in either keyspace."""
    return "/" + "/".join(p for p in (namespace.strip("/"), scope) if p)
