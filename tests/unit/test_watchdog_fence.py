"""The software fence's decision (hasup.watchdog.fence), as pure functions, and its place in the timing table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasup import ipc, timing
from hasup.timing import Deadlines
from hasup.watchdog import fence
from hasup.watchdog.fence import DEVICE, FENCE, NONE, FenceInputs, fence_at, fence_due, next_check


def inputs(valid_until: float | None = 100.0, margin: float = 3.0, fenced: float | None = None,
           enabled: bool = True) -> FenceInputs:
    return FenceInputs(enabled, valid_until, margin, fenced)


def test_the_fence_falls_due_at_the_earliest_moment_a_device_could_fire():
    f = inputs(valid_until=100.0, margin=3.0)
    at = 100.0 - 3.0 - timing.MIN_TIMEOUT - timing.EPSILON
    assert fence_at(100.0, 3.0) == at == 95.5
    assert not fence_due(at - 0.001, f)
    assert fence_due(at, f)
    assert fence_due(at + 50, f)  # a worker that wakes late still fences
    assert next_check(90.0, f) == pytest.approx(5.5)
    assert next_check(99.0, f) == 0.0


def test_no_lease_no_fence():
    # Never leased, or disarmed (PostgreSQL stopped or demoted, the cluster paused): nothing to fence.
    assert not fence_due(1e9, inputs(valid_until=None))
    assert next_check(0.0, inputs(valid_until=None)) is None


def test_switched_off_or_unsafe_timings_never_fence():
    assert not fence_due(1e9, inputs(enabled=False))
    assert next_check(0.0, inputs(enabled=False)) is None


def test_a_confirmed_fence_is_not_repeated_for_the_same_lease_but_a_renewal_rearms_it():
    assert not fence_due(1e9, inputs(valid_until=100.0, fenced=100.0))
    assert next_check(0.0, inputs(valid_until=100.0, fenced=100.0)) is None
    assert fence_due(200.0, inputs(valid_until=150.0, fenced=100.0))
    assert not fence_due(140.0, inputs(valid_until=150.0, fenced=100.0))


@settings(max_examples=300, deadline=None)
@given(ttl=st.integers(10, 120), loop_wait=st.integers(1, 30), retry=st.integers(1, 30), margin=st.integers(1, 30),
       renewal=st.floats(0, 1000))
def test_a_slow_healthy_renewal_lands_before_the_fence_and_the_fence_before_the_key_can_expire(
        ttl: int, loop_wait: int, retry: int, margin: int, renewal: float) -> None:
    if timing.settings_problem(ttl, loop_wait, retry, margin):
        return  # the worker keeps the fence off then (and warns), as it keeps the device unarmed
    valid_until = renewal + ttl
    at = fence_at(valid_until, margin)
    # The next renewal starts loop_wait later and may take retry_timeout: it lands before the fence.
    tolerance = 1e-9  # float rounding of the sums
    assert renewal + loop_wait + retry <= at + tolerance
    # The kill is confirmed within FENCE_TIMEOUT and still safety_margin before etcd may expire the key.
    assert at + timing.FENCE_TIMEOUT <= valid_until - margin + tolerance
    # Never after the earliest moment the device could fire (hasup.timing's earliest_reset).
    assert at <= renewal + Deadlines.of(ttl, loop_wait, retry, margin).earliest_reset + tolerance


@settings(max_examples=300, deadline=None)
@given(ttl=st.integers(10, 120), loop_wait=st.integers(1, 30), retry=st.integers(1, 30), margin=st.integers(1, 30))
def test_a_frozen_watchdog_worker_is_replaced_before_the_fence_it_owes(
        ttl: int, loop_wait: int, retry: int, margin: int) -> None:
    d = Deadlines.of(ttl, loop_wait, retry, margin, watchdog_on=False, fence_on=True)
    if timing.settings_problem(ttl, loop_wait, retry, margin) or d.fence_budget < 1.5:  # no heartbeat fits
        return
    # The last lease it saw began renewing at 0 and reached it RENEWAL_LATENCY after the next renewal was due;
    # it froze then, having just answered a ping.
    frozen_at = loop_wait + timing.RENEWAL_LATENCY
    running = frozen_at + d.heartbeat("watchdog") + d.ping_interval("watchdog") + timing.RESPAWN
    assert running <= fence_at(ttl, d.safety_margin)
    assert d.heartbeat("watchdog") >= 1.0


def test_the_watchdog_heartbeat_with_the_fence_at_known_profiles():
    # ttl 10, loop_wait 2, safety_margin 3: the fence is due 5.5 s after a renewal began, so a replacement
    # has 2.5 s from the worker's last answer; three quarters of it is the heartbeat, the rest the ping.
    assert Deadlines.of(10, 2, 3, 3, watchdog_on=False, fence_on=True).heartbeat("watchdog") == 1.875
    assert Deadlines.of(10, 2, 3, 3, fence_on=True).heartbeat("watchdog") == 1.5  # the device's is shorter
    assert Deadlines.of(30, 10, 10, 5, watchdog_on=False, fence_on=True).heartbeat("watchdog") == 9.375
    # No fence in time for any replacement: no hair trigger.
    assert Deadlines.of(10, 2, 4, 5, watchdog_on=False, fence_on=True).heartbeat("watchdog") == timing.OTHER_HEARTBEAT


def test_which_protection_a_node_has():
    assert fence.protection("automatic", None, True) == DEVICE
    assert fence.protection("required", None, False) == DEVICE
    assert fence.protection("automatic", "watchdog device /dev/watchdog does not exist", True) == FENCE
    assert fence.protection("off", None, True) == FENCE  # mode is the device's alone, as in Patroni
    assert fence.protection("off", None, False) == NONE
    assert fence.protection("automatic", "missing", False) == NONE


def test_the_start_line_names_the_protection_and_why():
    assert fence.protection_line("automatic", "/dev/watchdog", None, True) == \
        "lease protection: device /dev/watchdog, the software fence acting first"
    line = fence.protection_line("automatic", "/dev/watchdog", "watchdog device /dev/watchdog does not exist", True)
    assert line.startswith("lease protection: software fence (watchdog device /dev/watchdog does not exist)")
    assert "every hasup process" in line  # what it cannot cover
    assert fence.protection_line("off", "/dev/watchdog", None, False) == \
        "lease protection: none (watchdog.mode is off, watchdog.software_fence is off)"


def test_the_watchdog_state_parses_its_fence_fields_at_the_boundary():
    base = ("automatic", False, None, None, None)
    state = ipc.WatchdogState(*base, protection=FENCE, fences=2, last_fence=1.7e9)
    assert ipc.decode(ipc.encode(state, 1, 0.0)).message == state
    with pytest.raises(ipc.ProtocolError):
        ipc.decode(ipc.encode(state, 1, 0.0).replace(b'"fences":2', b'"fences":-2'))
    for bad in ({"fences": -1}, {"fences": "3"}, {"last_fence": "yesterday"}, {"last_fence": True},
                {"protection": "a shield"}):
        with pytest.raises(ValueError):
            ipc.WatchdogState(*base, **bad)  # type: ignore[arg-type]


def test_status_and_metrics_show_the_protection_and_the_last_fence():
    from hasup.api import metrics, status

    labels = '{name="n1",scope="main"}'
    watchdog = {"mode": "off", "armed": False, "protection": FENCE, "fences": 2, "last_fence": 1767225600.5}
    snap: dict[str, object] = {"identity": {"scope": "main", "name": "n1"}, "watchdog": watchdog}
    doc = status.build_status(snap, 10.0)
    assert doc["lease_protection"] == {"kind": FENCE, "fences": 2, "last_fence": "2026-01-01T00:00:00.500+00:00"}
    assert "watchdog" not in doc  # mode off: Patroni's document as before
    text = metrics.render(snap, 10.0)
    assert f"hasup_lease_protection{labels} 1.0" in text
    assert f"hasup_software_fences_total{labels} 2.0" in text
    assert f"hasup_software_fence_last_seconds{labels} 1.7672256005e+09" in text
    # Nothing reported yet, or nonsense from a peer: no field, and the metrics say so without failing.
    assert "lease_protection" not in status.build_status({"identity": {}}, 10.0)
    bad = {**snap, "watchdog": {**watchdog, "fences": -4, "last_fence": "soon"}}
    assert status.build_status(bad, 10.0)["lease_protection"] == {"kind": FENCE, "fences": 0, "last_fence": None}
    assert f"hasup_lease_protection{labels} -1.0" in metrics.render({"identity": snap["identity"]}, 10.0)


def test_the_supervisor_keeps_the_fence_record_across_watchdog_workers():
    h = fence.FenceHistory()
    assert h.carry(0, None) == (0, None)
    assert h.carry(1, 100.0) == (1, 100.0)
    assert h.carry(1, 100.0) == (1, 100.0)  # the same report again
    assert h.carry(0, None) == (1, 100.0)  # a new worker (the old one was replaced after its fence)
    assert h.carry(1, 200.0) == (2, 200.0)
    assert h.carry(0, None) == (2, 200.0)


def test_a_worker_that_died_with_a_ping_unread_still_has_its_last_words_read():
    """The watchdog worker reports its fence while the supervisor is frozen; the thawed supervisor pings it,
    finds its heartbeat overdue and replaces it.  The worker dies with that ping unread, which makes the
    supervisor's next read fail with ECONNRESET: what the worker wrote before must still be read."""
    sup_end, worker_end = ipc.channel_pair()
    sup, worker = ipc.Channel(sup_end, "watchdog"), ipc.Channel(worker_end, "supervisor")
    report = ipc.WatchdogState("off", False, None, None, None, protection=FENCE, fences=1, last_fence=1.7e9)
    worker.send_now(ipc.LogRecord(50, "hasup.watchdog", "software fence: killed PostgreSQL", 1.7e9, "watchdog"))
    worker.send_now(report)
    sup.send_now(ipc.Ping(7))  # never read: the worker dies first
    worker_end.close()
    got = [env.message for env in sup.receive()]
    assert got[-1] == report and isinstance(got[0], ipc.LogRecord)
    with pytest.raises(ipc.PeerClosed):
        sup.receive()
    sup_end.close()


def test_the_setting_defaults_to_on_and_is_validated_like_other_keys():
    from tests.unit.test_config import load, problems_of

    cfg, warnings = load()
    assert cfg.watchdog.software_fence is True and not any("software_fence" in w for w in warnings)
    assert load({"watchdog.software_fence": False})[0].watchdog.software_fence is False
    assert load({"watchdog.software_fence": "off", "watchdog.mode": "off"})[0].watchdog.software_fence is False
    problems = problems_of({"watchdog.software_fence": "sometimes"})
    assert problems == ["watchdog.software_fence: expected a boolean (on/off, true/false, yes/no, 1/0), "
                        "got 'sometimes'"]


def test_election_resends_a_lease_to_a_new_watchdog_worker_only_while_leased():
    from hasup.config import DynamicConfig
    from hasup.election.leases import WatchdogLeases

    mine, theirs = ipc.lease_pair()
    leases, d = WatchdogLeases(mine), DynamicConfig()
    leases.resend(d)  # a fresh election worker (it never led): nothing the fence could take for a lapsed lease
    assert ipc.receive_datagrams(theirs) == []
    leases.grant(100.0, d, paused=False)
    leases.resend(d)
    got = [env.message for env in ipc.receive_datagrams(theirs)]
    assert [m.valid_until for m in got if isinstance(m, ipc.Lease)] == [100.0 + d.ttl] * 2
    leases.disarm("postgres is stopped as primary")
    leases.resend(d)
    assert [type(env.message) for env in ipc.receive_datagrams(theirs)] == [ipc.Disarm]
    mine.close()
    theirs.close()
