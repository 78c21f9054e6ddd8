"""The watchdog under the lease rule, against the emulated device (one emulator per node).

ttl 10, loop_wait 2, retry_timeout 3, safety_margin 3: the tightest profile docs/design.md §4 allows.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import threading
import time

import pytest

from tests.harness import TestCluster, alive, descendants, kill_pids, wait_for
from tests.harness.emulators import Emulators
from tests.harness.prober import start_prober, writer_runs

DCS = {"ttl": 10, "loop_wait": 2, "retry_timeout": 3, "maximum_lag_on_failover": 1048576,
       "postgresql": {"use_pg_rewind": True, "use_slots": False}}
MARGIN = 3


@pytest.fixture
def cluster():
    c = TestCluster(3, dcs=DCS)
    c.etcd.start()
    emu = Emulators(c, MARGIN)
    for node in c.nodes:
        # The device alone, as the last line it stays: with the software fence on, a frozen supervisor and
        # election never reach it (tests/integration/test_software_fence.py).
        node.extra["watchdog.software_fence"] = False
    try:
        leader = c.start_all()
        wait_for(lambda: [e["event"] for e in emu.events(leader)][-1:] in (["keepalive"], ["settimeout"]), 30,
                 "the leader's watchdog to be armed")
        yield c, emu, leader
    finally:
        c.destroy()
        emu.stop()


def log_time(node, pattern: str) -> float:
    """Wall-clock time of the first hasup log line matching pattern."""
    for line in node.log_text().splitlines():
        if re.search(pattern, line):
            # logging's asctime is local time; a naive datetime's timestamp() reads it as such.
            return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    raise AssertionError(f"no log line matches {pattern!r}")


def test_armed_leader_pets_and_disarms_only_after_postgres_stopped(cluster):
    tc, emu, leader = cluster
    events = emu.events(leader)
    kinds = [e["event"] for e in events]
    assert "open" in kinds and any(e["event"] == "settimeout" and e["timeout"] == 4 for e in events)
    for replica in (n for n in tc.nodes if n is not leader):
        assert "open" not in [e["event"] for e in emu.events(replica)]  # only the leader arms
    status = leader.status()
    assert status.get("watchdog_failed") in (None, False)
    leader.proc.send_signal(signal.SIGTERM)
    leader.proc.wait(60)
    events = emu.events(leader)
    magic = next(e for e in events if e["event"] == "magic")
    assert [e["event"] for e in events][-2:] == ["magic", "disarmed"]
    stopped = log_time(leader, r"\[election\] Stop succeeded")
    assert stopped <= magic["wall"] + 0.002, (stopped, magic["wall"])
    assert not any(e["event"] == "fired" for e in events)


def test_frozen_supervisor_and_election_are_reset_before_the_key_expires(cluster):
    tc, emu, leader = cluster
    leader.sql("CREATE TABLE bench_writes (v bigint PRIMARY KEY)")
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 30)
    prober, thread = start_prober(tc.nodes, 1)
    wait_for(lambda: len(prober.acked) > 50, 30, "the prober to write")
    frozen = [leader.pid, leader.worker_pid("election")]
    assert all(frozen)
    kill_pids(frozen, signal.SIGSTOP)  # nothing left that could renew the lease or heal
    frozen_at = time.monotonic()
    try:
        key = wait_for(lambda: (k := tc.etcd.key(tc.key("leader"))) and k, 5, "the leader key")
        fired = wait_for(lambda: next((e for e in emu.events(leader) if e["event"] == "fired"), None), 20,
                         "the emulated watchdog to fire")
        key_after = tc.etcd.key(tc.key("leader"))
        # The key we read may have been refreshed once more in flight; the later expiry is the binding one.
        expiration = datetime.datetime.fromisoformat(key["expiration"].replace("Z", "+00:00")).timestamp()
        if key_after is not None and key_after.get("value") == leader.name:
            later = datetime.datetime.fromisoformat(key_after["expiration"].replace("Z", "+00:00")).timestamp()
            expiration = max(expiration, later)
        assert fired["wall"] <= expiration - MARGIN, (fired["wall"], expiration)
        wait_for(lambda: not leader.processes(), 10, "the reset node's processes to be gone")
        new = tc.wait_leader(30, exclude=leader.name)
        assert new.sql("SELECT pg_is_in_recovery()") == [(False,)]
        wait_for(lambda: any(n == new.name and t > frozen_at for _, t, n in prober.acked), 10,
                 "writes on the new leader")
    finally:
        prober.stop.set()
        thread.join(10)
        kill_pids([p for p in frozen if p], signal.SIGCONT)
    assert writer_runs(prober.acked) == [leader.name, new.name]  # never two nodes accepting writes


def test_killed_watchdog_worker_reopens_the_device_in_time(cluster):
    tc, emu, leader = cluster
    old = leader.worker_pid("watchdog")
    assert old
    opens_before = sum(e["event"] == "open" for e in emu.events(leader))
    os.kill(old, signal.SIGKILL)  # closes the device without "V": it stays armed and counting
    wait_for(lambda: sum(e["event"] == "open" for e in emu.events(leader)) > opens_before, 10,
             "the new watchdog worker to re-open the device")
    events = emu.events(leader)
    closed = next(e for e in events if e["event"] == "closed_armed")
    reopened = [e for e in events if e["event"] == "open"][-1]
    assert reopened["mono"] <= closed["deadline_mono"], "re-opened after the device would have fired"
    for _ in range(3 * DCS["loop_wait"]):  # several renewals later: still one leader, no reset
        assert not any(e["event"] == "fired" for e in emu.events(leader))
        assert tc.leader_name() == leader.name
        time.sleep(1)
    assert leader.sql("SELECT pg_is_in_recovery()") == [(False,)]


def fired(emu: Emulators, node) -> bool:
    return any(e["event"] == "fired" for e in emu.events(node))


def test_stuck_postgres_and_election_workers_are_replaced_without_failover(cluster):
    """A SIGSTOPped worker is replaced within its heartbeat; PostgreSQL and leadership stay."""
    tc, emu, leader = cluster
    postmaster = leader.postmaster_pid()
    for role, deadline in (("postgres", 5.0), ("election", 2.5)):
        stuck = leader.worker_pid(role)
        assert stuck
        os.kill(stuck, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            wait_for(lambda r=role, s=stuck: leader.worker_pid(r) not in (None, s), deadline + 5,
                     f"a new {role} worker")
            # Noticed within the heartbeat (plus a ping interval), then killed outright: it is stopped.
            assert time.monotonic() - stopped_at < deadline + 2.0, role
        finally:
            kill_pids([stuck], signal.SIGCONT)
        wait_for(lambda: tc.member(leader.name).get("state") == "running", 20, "the member key refreshed")
        assert leader.postmaster_pid() == postmaster, role
        assert tc.leader_name() == leader.name, role
        assert not fired(emu, leader), role
    assert f"{'election'} worker (pid" in leader.log_text() and "and is stopped: killing it" in leader.log_text()
    # A few renewals later: still the same leader, unreset.
    renewed = tc.etcd.key(tc.key("leader"))["modifiedIndex"]
    wait_for(lambda: tc.etcd.key(tc.key("leader"))["modifiedIndex"] > renewed, 10, "the lock renewed")
    assert tc.leader_name() == leader.name and not fired(emu, leader)
    assert leader.sql("SELECT pg_is_in_recovery()") == [(False,)]


def test_frozen_postgres_is_fenced_and_a_replica_takes_over(cluster):
    """Keepalive goes on until the health deadline, then every postgres process dies first."""
    tc, emu, leader = cluster
    leader.sql("CREATE TABLE bench_writes (v bigint PRIMARY KEY)")
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 30)
    prober, thread = start_prober(tc.nodes, 1)
    old_writes: list[float] = []  # times the old leader accepted a write after the freeze
    stop_old = threading.Event()

    def try_old_leader() -> None:
        while not stop_old.is_set():
            try:
                conn = leader.connect(timeout=1)
                try:
                    with conn.cursor() as cur:
                        cur.execute("SET statement_timeout = 500")
                        cur.execute("INSERT INTO bench_writes VALUES (-1) ON CONFLICT DO NOTHING")
                    old_writes.append(time.monotonic())
                finally:
                    conn.close()
            except Exception:
                pass
            stop_old.wait(0.1)

    try:
        wait_for(lambda: len(prober.acked) > 50, 30, "the prober to write")
        postmaster = leader.postmaster_pid()
        processes = [postmaster, *descendants(postmaster)]
        kill_pids(processes, signal.SIGSTOP)
        frozen_at = time.monotonic()
        checker = threading.Thread(target=try_old_leader, daemon=True)
        checker.start()
        new = tc.wait_leader(20, exclude=leader.name)
        first = wait_for(lambda: next((t for _, t, n in prober.acked if n == new.name and t > frozen_at), None),
                         10, "writes on the new leader")
        assert first - frozen_at <= 3.0 + 3.0, first - frozen_at  # health deadline + 3 s
        assert not any(alive(p) for p in processes), "a process of the fenced PostgreSQL survived"
        kill_pids(processes, signal.SIGCONT)  # nothing left to continue: they were killed while stopped
        # The old node rejoins as a replica of the new leader, having accepted no write meanwhile.
        tc.wait_streaming(new, [leader], 60)
    finally:
        stop_old.set()
        prober.stop.set()
        thread.join(10)
    assert old_writes == []
    assert writer_runs(prober.acked) == [leader.name, new.name]  # never two writable nodes
    assert "fenced PostgreSQL" in leader.log_text()
    # The lock was kept (renewed) until the fence: no failover before the health deadline.
    fenced = log_time(leader, r"fencing PostgreSQL")
    promoted = log_time(new, r"promoted self to leader")
    assert promoted >= fenced
    assert not fired(emu, leader)


def test_required_watchdog_without_a_device_never_leads_and_automatic_leads_unarmed():
    c = TestCluster(2, dcs=DCS)
    strict, relaxed = c.nodes
    missing = os.path.join(c.base, "no-such-watchdog.sock")
    strict.extra.update({"watchdog.mode": "required", "watchdog.driver": "testing", "watchdog.device": missing})
    relaxed.extra.update({"watchdog.mode": "automatic", "watchdog.driver": "testing", "watchdog.device": missing})
    c.etcd.start()
    try:
        for node in c.nodes:
            node.start()
        leader = c.wait_leader(180)
        assert leader is relaxed  # the required node did not even bootstrap
        c.wait_streaming(relaxed, [strict], 120)
        status = wait_for(lambda: (s := strict.status()).get("watchdog_failed") and s, 20, "watchdog_failed")
        assert "does not exist" in status["watchdog"]["reason"]
        assert relaxed.status()["watchdog"]["armed"] is False
        warning = f"watchdog device {missing} does not exist: leading unarmed if elected"
        assert relaxed.log_text().count(warning) == 1
        relaxed.proc.send_signal(signal.SIGTERM)  # the only node allowed to lead goes away
        relaxed.proc.wait(60)
        for _ in range(DCS["ttl"] + 2 * DCS["loop_wait"]):  # long enough for any race to have happened
            assert c.leader_name() is None
            time.sleep(1)
        assert strict.sql("SELECT pg_is_in_recovery()") == [(True,)]
        assert "Watchdog device is not usable" in strict.log_text()
    finally:
        c.destroy()


def test_postgres_frozen_with_its_worker_is_fenced_by_the_replacement_worker(cluster):
    """The chaos run's find: a postgres worker that starts while PostgreSQL is already hung never had a
    good probe; it must still date the hang from its own first timed-out probe, or nothing fences it."""
    tc, emu, leader = cluster
    postmaster = leader.postmaster_pid()
    worker = leader.worker_pid("postgres")
    assert postmaster and worker
    processes = [postmaster, *descendants(postmaster)]
    kill_pids([*processes, worker], signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        new = tc.wait_leader(30, exclude=leader.name)
        # The worker's heartbeat (5 s), then the health deadline (3 s) counted by the new worker.
        assert time.monotonic() - frozen_at < 5.0 + 3.0 + 5.0
        assert not any(alive(p) for p in processes), "a process of the fenced PostgreSQL survived"
    finally:
        kill_pids([*processes, worker], signal.SIGCONT)
    assert "fenced PostgreSQL" in leader.log_text()
    assert not fired(emu, leader)
    tc.wait_streaming(new, [leader], 60)
