"""The software fence: a leader whose supervisor and election worker freeze together is stopped by its watchdog
worker before the leader key expires, with no device and with one (docs/operations.md, "The software fence").

One module-scoped 3-node cluster, ttl 10, loop_wait 2, retry_timeout 3, safety_margin 3 (the tightest profile the
lease rule allows): the fence falls due 5.5 s after the last renewal began, 4.5 s before the key can expire.  Each
node's device path is an emulator socket that does not exist at first, so `watchdog.mode: automatic` runs without a
device; the last test starts the emulators, and the same fault must then never reach the device.
"""

from __future__ import annotations

import datetime
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Node, TestCluster, alive, kill_pids, wait_for
from tests.harness.emulators import Emulators
from tests.harness.prober import Prober, start_prober, writer_runs

DCS = {"ttl": 10, "loop_wait": 2, "retry_timeout": 3, "maximum_lag_on_failover": 1048576,
       "postgresql": {"use_pg_rewind": True, "use_slots": False}}
MARGIN = 3
FREEZE = 1.5 * DCS["ttl"]
FIGURES: list[str] = []  # one line per fault, printed at the end of the module (pytest -s shows them)


@pytest.fixture(scope="module")
def tc() -> Iterator[TestCluster]:
    c = TestCluster(3, dcs=DCS)
    for node in c.nodes:
        node.extra.update({"watchdog.mode": "automatic", "watchdog.driver": "testing",
                           "watchdog.device": f"{node.dir}/watchdog.sock", "watchdog.safety_margin": MARGIN})
    c.etcd.start()
    emulators: list[Emulators] = []
    try:
        leader = c.start_all()
        leader.sql("CREATE TABLE bench_writes (v bigint PRIMARY KEY)")
        c.emulators = emulators  # type: ignore[attr-defined]
        yield c
    finally:
        c.destroy()
        for e in emulators:
            e.stop()
        print("\n" + "\n".join(FIGURES))


def log_time(node: Node, pattern: str, after: float = 0.0) -> float | None:
    """Wall-clock time of the first hasup log line matching pattern at or after `after` (wall)."""
    for line in node.log_text().splitlines():
        if re.search(pattern, line):
            # logging's asctime is local time; a naive datetime's timestamp() reads it as such.
            t = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if t >= after:
                return t
    return None


def expiry(key: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(key["expiration"].replace("Z", "+00:00")).timestamp()


def freeze_leader(tc: TestCluster, run: int) -> dict[str, float]:
    """Freeze the leader's supervisor and election worker for 1.5 x ttl under a write prober and check the fence.

    Returns the run's figures: the fence's confirmation and the last acknowledged write on the old primary before
    the key's expiry, and the write gap until the new leader acknowledged.
    """
    leader = tc.wait_leader(60)
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 60)
    prober: Prober
    prober, thread = start_prober(tc.nodes, run * 1_000_000)
    wall_minus_mono = time.time() - time.monotonic()
    frozen = [leader.pid, leader.worker_pid("election")]
    postmaster = leader.postmaster_pid()
    assert all(frozen) and postmaster
    try:
        wait_for(lambda: len(prober.acked) > 20, 30, "the prober to write")
        frozen_at_wall = time.time()
        kill_pids([p for p in frozen if p], signal.SIGSTOP)  # nothing is left that could renew the lease or heal
        frozen_at = time.monotonic()
        try:
            key = wait_for(lambda: tc.etcd.key(tc.key("leader")), 5, "the leader key")
            assert key["value"] == leader.name
            wait_for(lambda: not alive(postmaster), FREEZE, "the software fence to kill the old primary")
            seen_dead = time.time()
            # A renewal in flight when we froze may have landed after our read: the later expiry binds.
            key_after = tc.etcd.key(tc.key("leader"))
            expires = expiry(key)
            if key_after is not None and key_after.get("value") == leader.name:
                expires = max(expires, expiry(key_after))
            new = tc.wait_leader(FREEZE, exclude=leader.name)
            wait_for(lambda: any(n == new.name and t > frozen_at for _, t, n in prober.acked), 30,
                     "writes on the new leader")
            # The fault's duration, the experiment's parameter: not a wait for anything.
            time.sleep(max(0.0, frozen_at + FREEZE - time.monotonic()))
            assert leader.worker_pid("watchdog") is not None, "the watchdog worker kept running"
        finally:
            kill_pids([p for p in frozen if p], signal.SIGCONT)
        # After SIGCONT: election learns it lost the key; PostgreSQL comes back as a replica of the new leader.
        wait_for(lambda: leader.postmaster_pid() and leader.sql("SELECT pg_is_in_recovery()") == [(True,)], 90,
                 "the old primary back as a replica")
        tc.wait_streaming(new, [leader], 90)
        wait_for(lambda: any(n == new.name and t > frozen_at + FREEZE for _, t, n in prober.acked), 30,
                 "writes after the thaw")
    finally:
        prober.stop.set()
        thread.join(10)
    assert writer_runs(prober.acked) == [leader.name, new.name]  # no two writable primaries, ever
    fenced = wait_for(lambda: log_time(leader, r"\[watchdog\] software fence: .* killed PostgreSQL, confirmed",
                                       frozen_at_wall), 30, "the fence's log line")
    old_acks = [t for _, t, n in prober.acked if n == leader.name]
    new_acks = [t for _, t, n in prober.acked if n == new.name]
    last_old = old_acks[-1] + wall_minus_mono
    # The old primary stopped acknowledging writes, and was confirmed dead, before etcd could expire its key.
    assert last_old < expires, (last_old, expires)
    assert fenced < expires and seen_dead < expires + 1.0, (fenced, seen_dead, expires)
    status = wait_for(lambda: (s := leader.status()).get("lease_protection", {}).get("fences") and s, 20,
                      "/patroni to show the fence")
    assert status["lease_protection"]["last_fence"] is not None
    return {"fence_to_expiry": expires - fenced, "last_write_to_expiry": expires - last_old,
            "write_gap": new_acks[0] - old_acks[-1], "frozen_at": frozen_at_wall, "fenced": fenced}


@pytest.mark.parametrize("run", [1, 2, 3])
def test_no_device_frozen_supervisor_and_election_are_fenced_before_the_key_expires(tc, run):
    leader = tc.wait_leader(60)
    line = "lease protection: software fence (watchdog device "
    assert all(line in n.log_text() for n in tc.nodes), "each node names its protection at start"
    assert leader.status()["lease_protection"]["kind"] == "software fence"
    figures = freeze_leader(tc, run)
    FIGURES.append(f"no device, run {run}: fence {figures['fence_to_expiry']:.2f} s before the key's expiry, "
                   f"last old-primary write {figures['last_write_to_expiry']:.2f} s before it, "
                   f"write gap {figures['write_gap']:.2f} s")
    assert figures["fence_to_expiry"] >= 0


def test_with_a_device_the_fence_acts_first_and_the_device_never_fires(tc):
    emulators = Emulators(tc, MARGIN)  # the sockets appear where every node expects its device
    tc.emulators.append(emulators)
    leader = tc.wait_leader(60)
    wait_for(lambda: [e["event"] for e in emulators.events(leader)][-1:] in (["keepalive"], ["settimeout"]), 30,
             "the leader's device to be armed")
    assert wait_for(lambda: leader.status().get("lease_protection", {}).get("kind") == "device", 20,
                    "/patroni to name the device")
    figures = freeze_leader(tc, 4)
    FIGURES.append(f"emulated device: fence {figures['fence_to_expiry']:.2f} s before the key's expiry, "
                   f"write gap {figures['write_gap']:.2f} s")
    events = emulators.events(leader)
    assert not any(e["event"] == "fired" for e in events), "the device fired"
    disarm = next(e for e in events if e["event"] == "magic" and e["wall"] > figures["frozen_at"])
    assert figures["fenced"] <= disarm["wall"] + 0.002  # disarmed only once PostgreSQL was confirmed gone
    assert "watchdog disarmed (PostgreSQL fenced)" in leader.log_text()

