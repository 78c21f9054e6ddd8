"""The v3 watch-fed cache: what it holds after events, and when it refuses to be trusted."""

from __future__ import annotations

import os
import threading

from hypothesis import given
from hypothesis import strategies as st

from hasup.dcs.endpoints import Endpoints
from hasup.dcs.etcd3_cache import CacheWatch, ClusterCache
from hasup.dcs.etcd3_client import Event, KeyValue, b64, parse_event

PREFIX = "/service/batman/"
URL = "http://10.0.0.1:2379"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Stream:
    def __init__(self) -> None:
        self.shut = False

    def shutdown(self) -> None:
        self.shut = True


def kv(rel: str, value: str, rev: int, lease: int = 0) -> KeyValue:
    return KeyValue(PREFIX + rel, value, rev, rev, lease)


def cache_with(keys: dict[str, KeyValue], revision: int) -> tuple[ClusterCache, Endpoints, Clock, Stream]:
    clock = Clock()
    endpoints = Endpoints([URL, "http://10.0.0.2:2379"], clock=clock)
    cache = ClusterCache(PREFIX, endpoints, clock=clock)
    cache.load(keys, revision)
    stream = Stream()
    cache.opened(URL, stream)
    return cache, endpoints, clock, stream


def test_events_are_applied_in_order_and_name_the_keys_they_changed():
    cache, *_ = cache_with({"leader": kv("leader", "node1", 5, 7)}, 9)
    changed = cache.apply([Event(False, kv("members/node2", "{}", 10)), Event(True, kv("leader", "", 11)),
                           Event(False, KeyValue("/service/other/leader", "x", 12, 12, 0))])
    assert changed == {"members/node2", "leader"}  # another cluster's key is no change of ours
    got = cache.read(11, 0)
    assert got is not None
    keys, revision = got
    assert set(keys) == {"members/node2"} and revision == 11


def test_a_fresh_read_is_not_trusted_before_its_stream_opens_and_reports_what_it_changed():
    clock = Clock()
    cache = ClusterCache(PREFIX, Endpoints([URL], clock=clock), clock=clock)
    assert cache.load({"leader": kv("leader", "node1", 5)}, 9) == {"leader"}
    assert cache.read(0, 0) is None
    cache.opened(URL, Stream())
    assert cache.read(0, 0) is not None
    assert cache.load({"leader": kv("leader", "node1", 5)}, 12) == set()  # a resync that found nothing new
    assert cache.read(0, 0) is None  # until the new stream opens
    cache.opened(URL, Stream())
    cache.closed()
    assert cache.read(0, 0) is None


def test_a_read_waits_for_this_nodes_own_write_and_gives_up_after_the_wait():
    cache, *_ = cache_with({}, 9)
    assert cache.read(12, 0) is None  # our write at 12 is not in yet: the caller reads etcd itself
    timer = threading.Timer(0.05, lambda: cache.apply([Event(False, kv("members/node1", "{}", 12))]))
    timer.start()
    got = cache.read(12, 5.0)
    timer.join()
    assert got is not None and got[1] == 12 and "members/node1" in got[0]


def test_a_member_that_fails_any_call_after_the_stream_opened_ends_the_trust_and_the_stream():
    cache, endpoints, clock, stream = cache_with({}, 9)
    endpoints.failed("http://10.0.0.2:2379", "timed out")  # another member: no matter
    assert cache.read(0, 0) is not None and not stream.shut
    clock.now += 1
    endpoints.failed(URL, "timed out")  # e.g. a keep-alive to the member serving the stream
    assert cache.read(0, 0) is None and stream.shut


def test_a_failure_before_the_stream_opened_does_not_count():
    clock = Clock()
    endpoints = Endpoints([URL], clock=clock)
    endpoints.failed(URL, "timed out")
    clock.now += 1
    cache = ClusterCache(PREFIX, endpoints, clock=clock)
    cache.load({}, 3)
    cache.opened(URL, Stream())
    assert cache.read(0, 0) is not None


def test_only_keys_that_decide_who_leads_wake_the_cycle():
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        watch = CacheWatch(None, ClusterCache(PREFIX, Endpoints([URL])), w, ("leader", "failover"))
        watch.woken({"members/node1", "status"})
        assert not _readable(r)
        watch.woken({"members/node1", "leader"})
        assert _readable(r)
    finally:
        os.close(r)
        os.close(w)


def _readable(fd: int) -> bool:
    try:
        return bool(os.read(fd, 16))
    except BlockingIOError:
        return False


def test_watch_events_are_parsed_as_puts_or_deletes():
    put = parse_event({"kv": {"key": b64(PREFIX + "leader"), "value": b64("node1"), "mod_revision": "8",
                              "create_revision": "8", "lease": "42"}})
    assert put == Event(False, KeyValue(PREFIX + "leader", "node1", 8, 8, 42))
    deleted = parse_event({"type": "DELETE", "kv": {"key": b64(PREFIX + "leader"), "mod_revision": "9"}})
    assert deleted == Event(True, KeyValue(PREFIX + "leader", "", 9, 0, 0))
    assert parse_event({"type": "DELETE"}) is None and parse_event("x") is None


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=12))
def test_no_watch_event_crashes_the_parser(raw):
    event = parse_event(raw)
    assert event is None or isinstance(event.kv, KeyValue)


def test_the_cache_threads_client_leaves_reading_the_member_list_to_the_cycles():
    from hasup.config import EtcdConfig
    from hasup.dcs.etcd3_client import Etcd3Client

    cfg = EtcdConfig((("127.0.0.1", 2379),), "http", api_version=3)
    asked: list[str] = []
    for discover in (True, False):
        client = Etcd3Client(cfg, discover=discover)
        client._request = lambda url, method, body, t: asked.append(method) or {}  # type: ignore[method-assign]
        client._maybe_discover(5.0)
    assert asked == ["/cluster/member/list"]
