"""The supervisor is gone: release the leader key, but only once our PostgreSQL has stopped.

The postgres worker stops PostgreSQL when it loses the supervisor too; a
key released while a primary still runs would let a replica promote
beside it.  Waiting here is fine: nothing else is left for election to do.
"""

from __future__ import annotations

import logging
import time

from hasup.dcs.model import Cluster
from hasup.dcs.store import DCSError, Store
from hasup.postgresql.control import pid_alive, postmaster_pid

log = logging.getLogger("hasup.election")


def release_when_stopped(store: Store, cluster: Cluster | None, me: str, data_dir: str, timeout: float) -> None:
    log.critical("supervisor is gone: waiting for PostgreSQL to stop before releasing the lock")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = postmaster_pid(data_dir)
        if pid is None or not pid_alive(pid):
            break
        time.sleep(0.1)
    else:
        log.critical("PostgreSQL is still running: leaving the leader key to expire")
        return
    if cluster is not None and cluster.leader is not None and cluster.leader.name == me:
        try:
            store.delete_leader(me)
        except DCSError:
            pass
