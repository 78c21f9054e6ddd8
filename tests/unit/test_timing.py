"""The deadline table: derived values and the rules between them (hasup.timing)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hasup import timing
from hasup.timing import Deadlines
from hasup.watchdog.lease import MAX_PET_INTERVAL

TIGHT = Deadlines.of(ttl=10, loop_wait=2, retry_timeout=3, safety_margin=3)
DEFAULTS = Deadlines.of(ttl=30, loop_wait=10, retry_timeout=10, safety_margin=5)


def test_the_tightest_profile_holds_and_its_figures() -> None:
    assert TIGHT.problems(watchdog=True) == []
    assert TIGHT.watchdog_timeout == 4
    assert TIGHT.election_heartbeat == 2.5  # 10 - 3 - 0.5 - 1, minus loop_wait, respawn and a ping interval
    assert DEFAULTS.problems(watchdog=True) == [] and DEFAULTS.election_heartbeat == timing.MAX_ELECTION_HEARTBEAT


def test_safety_margin_minus_one_is_half_of_ttl() -> None:
    assert Deadlines.of(30, 10, 10, -1).safety_margin == 15


def test_each_rule_names_what_breaks() -> None:
    assert any("health_deadline" in p for p in Deadlines.of(10, 2, 3, 3, health_deadline=2).problems(False))
    slow = Deadlines.of(ttl=20, loop_wait=10, retry_timeout=10, safety_margin=5)
    assert any("loop_wait + retry_timeout" in p for p in slow.problems(watchdog=True))
    assert slow.problems(watchdog=False) == []  # only the watchdog needs that room
    cramped = Deadlines.of(ttl=10, loop_wait=4, retry_timeout=2, safety_margin=3)
    assert any("frozen election worker" in p for p in cramped.problems(watchdog=True))


@settings(max_examples=300, deadline=None)
@given(ttl=st.integers(10, 120), loop_wait=st.integers(1, 30), retry=st.integers(1, 30), margin=st.integers(1, 30))
def test_a_clean_profile_replaces_a_frozen_election_worker_before_the_earliest_reset(
        ttl: int, loop_wait: int, retry: int, margin: int) -> None:
    d = Deadlines.of(ttl, loop_wait, retry, margin)
    if d.problems(watchdog=True):
        return
    # Last renewal at 0; the worker freezes just before the next one, having just answered a ping.
    frozen_at = loop_wait
    noticed = frozen_at + d.election_heartbeat + d.ping_interval("election")
    renewed = noticed + timing.RESPAWN
    earliest_reset = ttl - d.safety_margin - timing.EPSILON - 1.0  # whole-second device timeouts
    assert renewed <= earliest_reset
    assert d.heartbeat("postgres") > timing.PROBE_TIMEOUT  # one probe never looks like a hang
    assert d.pg_report_max_age > timing.PROBE_INTERVAL + timing.PROBE_TIMEOUT


def test_health_deadline_fits_the_failed_probes_it_needs() -> None:
    assert timing.MIN_HEALTH_DEADLINE == timing.FAILED_PROBES_TO_FENCE * timing.PROBE_TIMEOUT + timing.PROBE_INTERVAL
    assert timing.DEFAULT_HEALTH_DEADLINE >= timing.MIN_HEALTH_DEADLINE


@settings(max_examples=300, deadline=None)
@given(ttl=st.integers(10, 120), loop_wait=st.integers(1, 30), retry=st.integers(1, 30), margin=st.integers(1, 30))
def test_a_frozen_watchdog_worker_is_replaced_before_its_device_fires(
        ttl: int, loop_wait: int, retry: int, margin: int) -> None:
    d = Deadlines.of(ttl, loop_wait, retry, margin)
    w = d.watchdog_timeout
    if d.problems(watchdog=True) or w is None or w < 4:
        return  # with W under 4 s there is no time to replace it: a frozen watchdog worker costs a reset
    # It freezes just before a pet was due (the device fires W after the last one), having just answered a ping.
    last_pet = -MAX_PET_INTERVAL
    noticed = d.heartbeat("watchdog") + d.ping_interval("watchdog")
    repetted = noticed + timing.RESPAWN + timing.EPSILON
    assert repetted <= last_pet + w
    assert d.heartbeat("watchdog") >= 1.0


def test_the_watchdog_heartbeat_at_known_profiles() -> None:
    assert DEFAULTS.heartbeat("watchdog") == 11.5  # W = 14 s at Patroni's defaults
    assert TIGHT.heartbeat("watchdog") == 1.5  # W = 4 s
    # No device in use, or too small a W for any replacement to beat it: no hair trigger.
    assert Deadlines.of(30, 10, 10, 5, watchdog_on=False).heartbeat("watchdog") == timing.OTHER_HEARTBEAT
    assert Deadlines.of(10, 2, 4, 5).heartbeat("watchdog") == timing.OTHER_HEARTBEAT  # W = 2 s
