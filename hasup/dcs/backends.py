"""Choosing the etcd backend the configuration names: `etcd:` speaks v2, `etcd3:` v3."""

from __future__ import annotations

from hasup.config import EtcdConfig
from hasup.dcs.etcd import EtcdStore
from hasup.dcs.etcd3 import WAKE_KEYS, Etcd3Store
from hasup.dcs.etcd3_cache import CacheWatch, ClusterCache
from hasup.dcs.store import Store
from hasup.dcs.watch import KeyWatch


def open_store(cfg: EtcdConfig, namespace: str, scope: str, retry_timeout: float = 10) -> Store:
    if cfg.api_version == 3:
        return Etcd3Store(cfg, namespace, scope, retry_timeout)
    return EtcdStore(cfg, namespace, scope, retry_timeout)


def open_watched(cfg: EtcdConfig, namespace: str, scope: str, retry_timeout: float,
                 wake_fd: int) -> tuple[Store, KeyWatch | CacheWatch]:
    """The election worker's store and the thread that wakes its cycle when the cluster changes.

    v3: a watch-fed cache the store reads from (hasup/dcs/etcd3_cache.py); v2: a watch on one key,
    armed by each cycle."""
    if cfg.api_version == 3:
        store = Etcd3Store(cfg, namespace, scope, retry_timeout)
        cache = ClusterCache(store.prefix, store.client.endpoints)
        store.attach(cache)
        own = Etcd3Store(cfg, namespace, scope, retry_timeout, endpoints=store.client.endpoints)
        own.client.discover = False  # the cycle's client reads the member list for both
        return store, CacheWatch(own, cache, wake_fd, WAKE_KEYS)
    return EtcdStore(cfg, namespace, scope, retry_timeout), \
        KeyWatch(EtcdStore(cfg, namespace, scope, retry_timeout), wake_fd)
