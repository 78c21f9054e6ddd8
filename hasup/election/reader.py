"""etcd as election sees it: the cluster as last read, the dynamic configuration in force, the key watch.

Calls go through the Offloader so the worker keeps answering its
heartbeat while one blocks; a value that fails its parser keeps the last
good one (hasup.dcs.model.with_last_good).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, cast

from hasup import ipc
from hasup.config import Config, parse_dynamic
from hasup.config.dynamic_cache import read_cache, write_cache
from hasup.dcs.backends import open_watched
from hasup.dcs.model import Cluster, with_last_good
from hasup.dcs.parse import BAD_VALUES
from hasup.dcs.store import DCSError, Store
from hasup.election.offload import OffloadedProxy, Offloader

log = logging.getLogger("hasup.election")


class ClusterReader:
    def __init__(self, cfg: Config, offload: Offloader) -> None:
        self.data_dir = cfg.postgresql.data_dir
        # The cluster's settings as this node last saw them (hasup.config.dynamic_cache): until etcd's
        # config key is read they are in force, and a leader writes them back when that key is missing.
        cached, note = read_cache(self.data_dir)
        if note:
            log.warning("dynamic configuration cache: %s", note)
        self.cached: dict[str, Any] | None = cached
        self.dynamic, _ = parse_dynamic(cached if cached else cfg.bootstrap.dcs)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        # v3: the store reads from a watch-fed cache kept by self.watch; v2: self.watch is armed each cycle.
        self.raw_store, self.watch = open_watched(cfg.etcd, cfg.namespace, cfg.scope, self.dynamic.retry_timeout,
                                                  self.wake_w)
        self.store = cast(Store, OffloadedProxy(self.raw_store, offload))
        self.cluster: Cluster | None = None  # this cycle's read; None when etcd could not be read
        self.last_read: Cluster | None = None  # the last successful read, rejected values patched
        self.read_at = self.read_at_wall = 0.0
        self.last_config: dict[str, Any] = dict(cached) if cached else {}
        self.cache_failed = False  # said once, not every cycle

    def read(self) -> Cluster | None:
        try:
            cluster: Cluster | None = with_last_good(self.store.get_cluster(), self.last_read)
        except DCSError as exc:
            log.error("cannot read the cluster from etcd: %s", exc)
            cluster = None
        self.cluster = cluster
        if cluster is None:
            return None
        self.last_read = cluster
        self.read_at, self.read_at_wall = time.monotonic(), time.time()
        if cluster.config:
            self.last_config = cluster.config
            dynamic, warnings = parse_dynamic(cluster.config)
            if dynamic != self.dynamic:
                for w in warnings:
                    log.warning(w)
                self.dynamic = dynamic
                self.store.retry_timeout = self.watch.store.retry_timeout = dynamic.retry_timeout
            self.save_cache(cluster.config)
        return cluster

    def save_cache(self, config: dict[str, Any]) -> None:
        """Keep the local copy in step, once the data directory holds a cluster: initdb and
        pg_basebackup want an empty directory, so nothing is written before either has run."""
        if config == self.cached or not os.path.exists(os.path.join(self.data_dir, "PG_VERSION")):
            return
        try:
            write_cache(self.data_dir, config)
        except OSError as exc:
            if not self.cache_failed:
                log.warning("cannot write the dynamic configuration cache in %s: %s", self.data_dir, exc)
            self.cache_failed = True
            return
        self.cached, self.cache_failed = dict(config), False

    def arm_watch(self, me: str, until: float) -> None:
        c = self.cluster
        if c is None or c.leader is None:
            return
        # Replicas wake when the leader key changes; the leader when a switchover is requested.
        key = "failover" if c.leader.name == me else "leader"
        # The watch outlives the cycle (up to a ttl): an idle cycle needs no new watch request.
        self.watch.arm(key, c.etcd_index + 1 if key == "failover" else c.watch_index,
                       max(until, time.monotonic() + self.dynamic.ttl))

    def woken(self) -> None:
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass

    def view(self, holds_lock: bool, valid_until: float, reason: str, scheduled: dict[str, Any] | None,
             cycle_errors: int) -> ipc.ClusterView:
        """What the api, postgres and vip workers learn of the cluster."""
        c = self.cluster
        return ipc.ClusterView(
            read_at=self.read_at if c is not None else 0.0, read_at_wall=self.read_at_wall,
            leader=c.leader.name if c and c.leader else None, holds_lock=holds_lock, lock_valid_until=valid_until,
            members={n: m.data for n, m in c.members.items()} if c else {},
            # etcd unreachable: the last configuration read still holds (timing bounds, failsafe_mode).
            config=(c.config or {}) if c else self.last_config, history=tuple(tuple(h) for h in c.history) if c else (),
            optime=c.optime if c else None, initialize=c.initialize if c else None,
            sync=c.sync if c else None, failover=c.failover if c else None,
            paused=c.paused if c else False, last_decision=reason, scheduled_restart=scheduled,
            status=c.status if c else {}, dcs_bad_values=BAD_VALUES.total, cycle_errors=cycle_errors,
        )
