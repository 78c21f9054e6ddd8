"""The election worker's bookkeeping parts: lease datagrams to the watchdog, the HA stopwatches, the
failsafe promise, and what a failing cycle costs."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import replace

import pytest

from hasup import ipc
from hasup.config import parse_dynamic
from hasup.dcs import parse
from hasup.dcs.model import build_cluster
from hasup.election.failsafe import Failsafe
from hasup.election.leases import WatchdogLeases
from hasup.election.stopwatches import Stopwatches
from hasup.worker import WorkerContext
from hasup.workers.election import ElectionWorker
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


def test_a_replica_sent_only_what_it_has_on_an_older_timeline_is_not_streaming() -> None:
    """Found by the mixed chaos run: a replica whose WAL went past the fork of the leader's timeline 2
    reconnects every few seconds, is sent the timeline-1 WAL it already has and is cut off; a probe that
    caught it "streaming" in between restarted the clock, so the rewind never came."""
    now = [1000.0]
    watches = Stopwatches(clock=lambda: now[0])
    c = replace(cluster(leader="n2"), members={"n2": member("n2", role="primary", tl=2)})
    flapping = replace(pg(upstream="n2", tl=1), replication_state="streaming", received_location=5000)
    assert watches.not_streaming_for(flapping, c) == 0.0  # the first look: what it received may be news
    for _ in range(4):
        now[0] += 10
        watches.not_streaming_for(replace(flapping, replication_state=None), c)
        watches.not_streaming_for(flapping, c)
    assert watches.not_streaming_for(flapping, c) == 30.0
    # Catching up on timeline 1 towards the switch point, what it received grows: that is streaming.
    assert watches.not_streaming_for(replace(flapping, received_location=6000), c) == 0.0
    # On the leader's timeline, streaming is streaming, new WAL or not.
    now[0] += 10
    on_tl2 = replace(flapping, timeline=2)
    assert watches.not_streaming_for(on_tl2, c) == 0.0
    now[0] += 10
    assert watches.not_streaming_for(on_tl2, c) == 0.0


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


# -- a failing cycle costs the cycle, not the worker ------------------------------------------------------


@pytest.fixture
def worker():
    sup_end, worker_end = ipc.channel_pair()
    sup, ours = ipc.Channel(sup_end, "election"), ipc.Channel(worker_end, "supervisor")
    election = ElectionWorker(WorkerContext("election", make_config(1), ours, supervisor_pid=os.getpid()))
    yield election, sup
    election.offload.executor.shutdown(wait=True)
    for fd in (election.reader.wake_r, election.reader.wake_w, election.offload.wake_r, election.offload.wake_w):
        os.close(fd)
    sup.close()
    ours.close()


def sent(sup: ipc.Channel) -> list[ipc.Message]:
    return [e.message for e in sup.receive()]


def test_a_cycle_that_raises_is_logged_once_with_its_traceback_counted_and_published(
        worker, caplog: pytest.LogCaptureFixture) -> None:
    election, sup = worker
    caplog.set_level(logging.INFO, "hasup.election")

    def broken() -> None:
        raise KeyError("a value nobody expected")
    election.cycle = broken
    for _ in range(3):
        election.guarded_cycle()
    assert election.errors.count == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert len([r for r in caplog.records if "failed again" in r.getMessage()]) == 2
    views = [m for m in sent(sup) if isinstance(m, ipc.ClusterView)]
    assert views and views[-1].cycle_errors == 3 and "KeyError" in views[-1].last_decision


def test_the_supervisor_going_away_still_ends_the_loop(worker) -> None:
    election, _sup = worker

    def orphaned() -> None:
        raise ipc.PeerClosed("supervisor")
    election.cycle = orphaned
    with pytest.raises(ipc.PeerClosed):
        election.guarded_cycle()
    assert election.errors.count == 0


def test_failing_cycles_stop_a_primary_before_its_lease_runs_out(worker) -> None:
    election, sup = worker
    election.link.pg = pg(role="primary")
    election.leases.valid_until = time.monotonic() + 100  # renewed a moment ago: the next cycle may renew it
    election.stop_if_lease_lapses(time.monotonic())
    assert not [m for m in sent(sup) if isinstance(m, ipc.Stop)]
    election.leases.valid_until = time.monotonic() + 1  # no cycle can renew it in time
    election.stop_if_lease_lapses(time.monotonic())
    election.stop_if_lease_lapses(time.monotonic())  # once, while that stop is pending
    stops = [m for m in sent(sup) if isinstance(m, ipc.Stop)]
    assert [s.mode for s in stops] == ["immediate"] and election.leases.valid_until == 0.0
    election.link.pg = pg()  # a replica has nothing to stop
    election.link.pending.clear()
    election.stop_if_lease_lapses(time.monotonic())
    assert not [m for m in sent(sup) if isinstance(m, ipc.Stop)]


def test_a_failed_action_is_decided_again_a_moment_later_not_at_once(worker) -> None:
    """Found by a chaos run: a follow that failed (the leader had not checkpointed its new timeline yet)
    was decided again at once, and again, 70 times a second, each a connection to the leader."""
    election, sup = worker
    election.link.pg = pg()
    election.run_now = False
    rid = election.link.request(ipc.Follow, leader="n2", leader_conn_url="postgres://127.0.0.1:52/postgres")
    before = time.monotonic()
    election.on_message(ipc.Reply(rid, "Follow", ok=False, message="waiting for a checkpoint on n2"))
    election.on_message(replace(pg(), busy="x"))  # its PgState, no longer busy, asks for a cycle too
    election.on_message(pg())
    assert election.run_now and election.cycle_wanted_at() >= before + 1.0
    rid = election.link.request(ipc.Follow, leader="n2", leader_conn_url="postgres://127.0.0.1:52/postgres")
    election.retry_at = None
    election.on_message(ipc.Reply(rid, "Follow", ok=True))
    assert election.cycle_wanted_at() == 0.0  # a success is looked at at once
    sent(sup)


def test_a_corrupt_config_read_keeps_the_last_good_one_in_force(worker) -> None:
    election, _sup = worker
    reads = iter([{"config": ('{"ttl": 20, "loop_wait": 3, "retry_timeout": 5, "pause": true}', 1, None)},
                  {"config": ('{"ttl": 1e400, "pause": "maybe"}', 2, None)},
                  {"config": ("[" * 600 + "]" * 600, 3, None)}])

    class Store:
        retry_timeout = 10.0

        def get_cluster(self):
            return build_cluster(next(reads), 5, parse.BadValues())
    election.reader.store = Store()
    election.reader.watch.store = Store()
    first = election.reader.read()
    assert first is not None and election.reader.dynamic.ttl == 20 and first.paused
    for _ in range(2):
        again = election.reader.read()
        assert again is not None and again.config == first.config and again.paused and "config" in again.rejected
        assert election.reader.dynamic.ttl == 20 and election.reader.dynamic.loop_wait == 3
