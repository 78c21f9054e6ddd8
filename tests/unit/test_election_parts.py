"""The election worker's bookkeeping parts: lease datagrams to the watchdog, the HA stopwatches, the
failsafe promise."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from hasup import ipc
from hasup.config import parse_dynamic
from hasup.workers.failsafe import Failsafe
from hasup.workers.leases import WatchdogLeases
from hasup.workers.stopwatches import Stopwatches
from tests.unit.test_api_worker import make_config
from tests.unit.test_ha import cluster, member, pg

DYNAMIC, _ = parse_dynamic({"ttl": 30, "loop_wait": 10, "retry_timeout": 10})


@pytest.fixture
def pipe():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    yield WatchdogLeases(ours), theirs
    ours.close()
    theirs.close()


def received(sock: socket.socket) -> list[ipc.Message]:
    return [e.message for e in ipc.receive_datagrams(sock)]


def test_a_lease_runs_ttl_from_the_write_that_started_it_and_numbers_increase(pipe) -> None:
    leases, theirs = pipe
    leases.grant(100.0, DYNAMIC, paused=False)
    leases.grant(110.0, DYNAMIC, paused=False)
    envelopes = ipc.receive_datagrams(theirs)
    assert [e.message for e in envelopes] == [ipc.Lease(130.0, 30, 10, 10), ipc.Lease(140.0, 30, 10, 10)]
    assert envelopes[0].seq < envelopes[1].seq and leases.valid_until == 140.0


def test_disarm_waits_for_postgres_to_stop_and_for_the_lock_to_be_gone(pipe) -> None:
    leases, theirs = pipe
    leases.grant(100.0, DYNAMIC, paused=False)
    received(theirs)
    running_primary = pg(role="primary")
    leases.disarm_if_safe(running_primary, holds_lock=False)  # demoting: PostgreSQL still takes writes
    leases.disarm_if_safe(pg(role="primary", state="stopped"), holds_lock=True)  # we still lead
    assert received(theirs) == []
    leases.disarm_if_safe(pg(role="primary", state="stopped"), holds_lock=False)
    leases.disarm_if_safe(pg(role="replica"), holds_lock=False)  # only once
    assert received(theirs) == [ipc.Disarm("postgres is stopped as primary")]


def test_a_paused_cluster_disarms_once_and_keeps_the_lease_time(pipe) -> None:
    leases, theirs = pipe
    leases.grant(100.0, DYNAMIC, paused=False)
    leases.grant(105.0, DYNAMIC, paused=True)
    leases.grant(110.0, DYNAMIC, paused=True)
    assert received(theirs) == [ipc.Lease(130.0, 30, 10, 10), ipc.Disarm("cluster paused")]
    assert leases.valid_until == 140.0  # holds_lock still needs it


def test_stopwatches_start_when_the_condition_is_seen_and_reset_when_it_ends() -> None:
    now = [1000.0]
    watches = Stopwatches(clock=lambda: now[0])
    c = replace(cluster(leader="n2"), members={"n2": member("n2", role="primary")})
    stuck = pg(upstream="n2")  # a replica following n2, not streaming
    assert watches.not_streaming_for(stuck, c) == 0.0
    now[0] += 7
    assert watches.not_streaming_for(stuck, c) == 7.0
    assert watches.not_streaming_for(replace(stuck, replication_state="streaming"), c) == 0.0
    down = pg(role="primary", state="stopped")
    assert watches.down_for(down, holds_lock=True) == 0.0
    now[0] += 3
    assert watches.down_for(down, holds_lock=True) == 3.0
    assert watches.down_for(down, holds_lock=False) == 0.0  # only while we hold the lock
    assert watches.failover_age(c) == 0.0  # no failover key


def test_a_failsafe_promise_ends_once_its_leader_says_it_no_longer_runs_a_primary() -> None:
    """Found by the chaos run: a leader fenced right after an etcd outage kept the others from racing."""
    failsafe = Failsafe(make_config(1))
    assert failsafe.on_ping("n3", None, ttl=20) == (200, "Accepted")
    assert failsafe.leader(None) == "n3"  # etcd unreachable: the promise holds
    running = replace(cluster(leader=None), members={"n3": member("n3", role="primary")})
    assert failsafe.leader(running) == "n3"
    assert failsafe.leader(replace(running, members={})) == "n3"  # its key expired meanwhile: still promised
    fenced = replace(running, members={"n3": member("n3", state="crashed", role="primary")})
    assert failsafe.leader(fenced) is None
    assert failsafe.leader(None) is None  # for good, until it pings again
