"""Choosing the etcd backend the configuration names: `etcd:` speaks v2, `etcd3:` v3."""

from __future__ import annotations

from hasup.config import EtcdConfig
from hasup.dcs.etcd import EtcdStore
from hasup.dcs.etcd3 import Etcd3Store
from hasup.dcs.store import Store


def open_store(cfg: EtcdConfig, namespace: str, scope: str, retry_timeout: float = 10) -> Store:
    if cfg.api_version == 3:
        return Etcd3Store(cfg, namespace, scope, retry_timeout)
    return EtcdStore(cfg, namespace, scope, retry_timeout)
