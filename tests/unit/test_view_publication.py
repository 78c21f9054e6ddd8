"""Election publishes its ClusterView when it says something new, a leader's every cycle (its lease moves),
and an unchanged one again before the api could take it for stale (hasup.workers.election)."""

from __future__ import annotations

from dataclasses import replace

from hasup import ipc, timing
from hasup.config import parse_dynamic
from hasup.workers.election import unchanged_view, view_keepalive


def view(**kw: object) -> ipc.ClusterView:
    base = ipc.ClusterView(read_at=100.0, read_at_wall=1e9, leader="node1", holds_lock=False, lock_valid_until=0.0,
                           members={"node1": {"role": "primary"}, "node2": {"role": "replica"}}, config={"ttl": 20},
                           history=(), optime=5, initialize="7", sync=None, failover=None, paused=False,
                           last_decision="following node1")
    return replace(base, **kw)  # type: ignore[arg-type]


def test_a_replica_view_that_only_read_etcd_again_is_not_news() -> None:
    assert unchanged_view(view(read_at=102.0, read_at_wall=1e9 + 2, lock_valid_until=7.0), view())


def test_anything_else_is_news() -> None:
    for changed in (view(leader="node2"), view(optime=6), view(last_decision="x"), view(failsafe_until=5.0),
                    view(members={"node1": {"role": "primary"}}), view(config={"ttl": 30}), view(paused=True)):
        assert not unchanged_view(changed, view())


def test_a_leaders_view_is_always_news() -> None:
    lead = view(holds_lock=True, lock_valid_until=120.0)
    assert not unchanged_view(replace(lead, lock_valid_until=122.0), lead)
    assert not unchanged_view(lead, lead)  # its lease is what the api's /primary and the vip worker stand on


def test_the_keepalive_keeps_a_view_well_within_the_apis_staleness_bound() -> None:
    for ttl, loop_wait, retry in ((30, 10, 10), (20, 2, 10), (10, 2, 4), (10, 2, 3), (60, 5, 20)):
        dynamic = parse_dynamic({"ttl": ttl, "loop_wait": loop_wait, "retry_timeout": retry})[0]
        keepalive = view_keepalive(dynamic)
        # Re-sent at the first cycle once keepalive has passed: at most a cycle later.
        longest_gap = keepalive + dynamic.loop_wait
        assert longest_gap <= timing.view_max_age(dynamic.ttl, dynamic.loop_wait, dynamic.retry_timeout) / 2
    # At Patroni's defaults every cycle still publishes; at ttl 20 / loop_wait 2 every third.
    assert view_keepalive(parse_dynamic({"ttl": 30, "loop_wait": 10, "retry_timeout": 10})[0]) <= 10
    assert view_keepalive(parse_dynamic({"ttl": 20, "loop_wait": 2, "retry_timeout": 10})[0]) == 5.0
