"""The deadline table: derived values and the rules between them (hasup.timing)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasup import timing
from hasup.timing import FIGURES, MAX_PET_INTERVAL, Deadlines, Figures

HAPROXY_CFG = Path(__file__).resolve().parents[2] / "docs" / "haproxy.cfg"
TIGHT = Deadlines.of(ttl=10, loop_wait=2, retry_timeout=3, safety_margin=3)
DEFAULTS = Deadlines.of(ttl=30, loop_wait=10, retry_timeout=10, safety_margin=5)


def test_the_tightest_profile_holds_and_its_figures() -> None:
    assert TIGHT.problems(watchdog=True) == []
    assert TIGHT.watchdog_timeout == 4
    assert TIGHT.election_heartbeat == 2.5  # 10 - 3 - 0.5 - 1, minus loop_wait, respawn and a ping interval
    assert DEFAULTS.problems(watchdog=True) == [] and DEFAULTS.election_heartbeat == timing.MAX_ELECTION_HEARTBEAT


def test_pings_come_a_third_of_a_heartbeat_apart_but_never_faster_than_the_fast_interval() -> None:
    # Where the budget leaves no more (the tightest profile), as often as ever: the budgets are unchanged.
    assert TIGHT.ping_interval("election") == TIGHT.ping_interval("watchdog") == timing.FAST_PING_INTERVAL
    # An idle node at Patroni's defaults: each worker two or three times a heartbeat.
    for role in ("election", "watchdog", "api", "vip"):
        assert DEFAULTS.ping_interval(role) == pytest.approx(DEFAULTS.heartbeat(role) / timing.PINGS_PER_HEARTBEAT)
    unarmed = Deadlines.of(30, 10, 10, 5, watchdog_on=False)
    assert unarmed.ping_interval("watchdog") == timing.OTHER_HEARTBEAT / 3


def test_safety_margin_minus_one_is_half_of_ttl() -> None:
    assert Deadlines.of(30, 10, 10, -1).safety_margin == 15


# Every derived bound: its value at the defaults, and the formula it must keep.
@pytest.mark.parametrize(("value", "formula", "expected"), [
    (timing.MIN_HEALTH_DEADLINE, timing.FAILED_PROBES_TO_FENCE * timing.PROBE_TIMEOUT + timing.PROBE_INTERVAL, 3.0),
    (FIGURES.report_gap, timing.KEEPALIVE + timing.PROBE_INTERVAL + timing.PROBE_TIMEOUT, 5.0),
    (timing.PG_STATE_MAX_AGE, FIGURES.report_gap + timing.DELIVERY, 5.5),
    (timing.SNAPSHOT_MAX_AGE, timing.RERENDER + timing.RENDER_SLACK, 6.0),
    (timing.PRIMARY_STALENESS, timing.PG_STATE_MAX_AGE, 5.5),
    (FIGURES.haproxy_down_after, timing.HAPROXY_INTER * timing.HAPROXY_FALL, 6.0),
    (timing.STALE_PGSTATE, timing.KEEPALIVE + timing.PROBE_INTERVAL + timing.POSTGRES_HEARTBEAT + timing.DELIVERY,
     9.5),
    (timing.PG_REPORT_MAX_AGE, timing.PROBE_INTERVAL + timing.PROBE_TIMEOUT + timing.REPORT_SLACK, 3.0),
    (DEFAULTS.pg_report_max_age, timing.PG_REPORT_MAX_AGE, 3.0),
    (DEFAULTS.earliest_reset, 30 - 5 - timing.EPSILON - timing.MIN_TIMEOUT, 23.5),
    (DEFAULTS.election_budget, DEFAULTS.earliest_reset - 10 - timing.RESPAWN - timing.FAST_PING_INTERVAL, 12.5),
    (DEFAULTS.watchdog_timeout, 30 - 5 - timing.EPSILON - 10 - timing.RENEWAL_LATENCY, 14),
    (DEFAULTS.watchdog_room, 14 - MAX_PET_INTERVAL - timing.RESPAWN - timing.EPSILON, 12.0),
    (DEFAULTS.watchdog_heartbeat, DEFAULTS.watchdog_room * 3 / 4, 9.0),  # a quarter of the room is the ping's
    (DEFAULTS.ping_interval("watchdog"), DEFAULTS.watchdog_room / 4, 3.0),
    (DEFAULTS.ping_interval("election"), timing.MAX_ELECTION_HEARTBEAT / 3, 5 / 3),
    (DEFAULTS.ping_interval("postgres"), timing.PING_INTERVAL, 2.0),
    (DEFAULTS.ping_interval("api"), timing.OTHER_HEARTBEAT / 3, 5.0),
    (DEFAULTS.heartbeat("postgres"), timing.POSTGRES_HEARTBEAT, 5.0),
])
def test_each_derived_bound_at_the_defaults(value: float, formula: float, expected: float) -> None:
    assert value == formula == expected


# Each rule, a combination of settings or figures that breaks it, and the line that says so.  `alone`:
# nothing else breaks with it (no W >= 1, say, leaves no room to replace a frozen election worker either).
@pytest.mark.parametrize(("deadlines", "watchdog", "line", "alone"), [
    (Deadlines.of(10, 2, 3, 3, health_deadline=2), False, "postgresql.health_deadline: must be at least 3 s", True),
    (Deadlines.of(30, 10, 10, 5, figures=replace(FIGURES, postgres_heartbeat=3.0)), False,
     "timing: a postgres worker blocked on one probe (1 s) must answer the next ping (2 s apart) within its "
     "heartbeat of 3 s", True),
    (Deadlines.of(30, 10, 10, 5, figures=replace(FIGURES, report_slack=0.5)), False,
     "timing: a postgres worker failing its probes reports every 2.5 s, but its reports vouch for only 2.5 s: "
     "a hung primary would never be fenced", True),
    # The keepalive hasup had before this rule was checked: 7.5 s is not below 2 s x 3.
    (Deadlines.of(30, 10, 10, 5, figures=replace(FIGURES, keepalive=5.0)), False,
     "timing: /primary may answer from a probe 7.5 s old (keepalive 5 + probe interval 1 + probe timeout 1 + "
     "delivery 0.5), not below HAProxy's inter x fall (2 s x 3 = 6 s, docs/haproxy.cfg)", True),
    (Deadlines.of(30, 10, 10, 5, figures=replace(FIGURES, haproxy_inter=1.5)), False,
     "timing: /primary may answer from a probe 5.5 s old (keepalive 3 + probe interval 1 + probe timeout 1 + "
     "delivery 0.5), not below HAProxy's inter x fall (1.5 s x 3 = 4.5 s, docs/haproxy.cfg)", True),
    (Deadlines.of(30, 10, 10, 5, figures=replace(FIGURES, haproxy_fall=2)), False,
     "not below HAProxy's inter x fall (2 s x 2 = 4 s", True),
    (Deadlines.of(20, 10, 10, 5), True,
     "watchdog: loop_wait + retry_timeout + 1.5 must not exceed ttl - safety_margin (10 + 10 + 1.5 > 20 - 5; the "
     "1.5 s is the watchdog's whole-second granularity and the check-to-pet allowance)", False),
    (Deadlines.of(10, 5.5, 0, 3), True,
     "watchdog: no device timeout of at least 1 s fits ttl - safety_margin - loop_wait", False),
    # Room for a slow renewal and for W, but not for replacing a frozen election worker (0.9 s).
    (Deadlines.of(10, 3.6, 1.9, 3), True,
     "watchdog: a frozen election worker cannot be replaced before the watchdog resets the node: ttl - "
     "safety_margin - loop_wait must be at least 3.5 s", True),
])
def test_each_rule_fails_for_a_combination_that_breaks_it(deadlines: Deadlines, watchdog: bool, line: str,
                                                          alone: bool) -> None:
    problems = deadlines.problems(watchdog)
    assert any(line in p for p in problems), problems
    assert len(problems) == 1 or not alone, problems
    # Without a watchdog, the lease rules do not apply; the others always do.
    assert deadlines.problems(watchdog=False) == deadlines.static_problems()


def test_the_health_deadline_minimum_follows_the_probe_figures() -> None:
    faster = replace(FIGURES, probe_timeout=0.5)
    assert faster.min_health_deadline == 2.0
    assert Deadlines.of(30, 10, 10, 5, health_deadline=2.5, figures=faster).problems(watchdog=True) == []
    assert Deadlines.of(30, 10, 10, 5, health_deadline=2.5).static_problems() != []


def test_only_the_watchdog_needs_room_in_the_lease() -> None:
    slow = Deadlines.of(ttl=20, loop_wait=10, retry_timeout=10, safety_margin=5)
    assert slow.problems(watchdog=False) == [] and slow.lease_problems(watchdog=True)


def test_every_rule_holds_at_the_defaults() -> None:
    assert FIGURES.problems() == []
    assert DEFAULTS.problems(watchdog=True) == [] and TIGHT.problems(watchdog=True) == []


@settings(max_examples=300, deadline=None)
@given(keepalive=st.floats(0.5, 10), interval=st.floats(0.1, 5), timeout=st.floats(0.1, 5),
       heartbeat=st.floats(0.5, 20), delivery=st.floats(0, 2), inter=st.floats(0.5, 10), fall=st.integers(1, 5))
def test_clean_figures_keep_every_bound_in_order(keepalive: float, interval: float, timeout: float, heartbeat: float,
                                                 delivery: float, inter: float, fall: int) -> None:
    f = Figures(probe_interval=interval, probe_timeout=timeout, keepalive=keepalive, delivery=delivery,
                postgres_heartbeat=heartbeat, haproxy_inter=inter, haproxy_fall=fall)
    if f.problems():
        return
    # A live worker's state is fresh to election whenever it is fresh to /primary (the heartbeat rule implies it).
    assert f.stale_pgstate > f.pg_state_max_age
    assert f.primary_staleness < f.haproxy_down_after
    assert f.pg_report_max_age > f.probe_interval + f.probe_timeout


def test_the_haproxy_figures_are_the_ones_docs_haproxy_cfg_ships() -> None:
    text = HAPROXY_CFG.read_text()
    servers = [line for line in text.splitlines() if line.strip().startswith("default-server")]
    assert len(servers) == 2  # /primary and /replica
    for line in servers:
        inter = re.search(r"\binter\s+(\d+(?:\.\d+)?)(ms|s)?\b", line)
        fall = re.search(r"\bfall\s+(\d+)\b", line)
        assert inter and fall, line
        seconds = float(inter.group(1)) / (1000 if inter.group(2) == "ms" else 1)
        assert (seconds, int(fall.group(1))) == (timing.HAPROXY_INTER, timing.HAPROXY_FALL), line
    assert "uri /primary" in text


def test_one_epsilon() -> None:
    from hasup.watchdog.lease import LeaseRule

    assert LeaseRule(safety_margin=3).epsilon == timing.EPSILON
    assert timing.device_timeout(30, 10, 5) == DEFAULTS.watchdog_timeout
    # The slack the lease rule's settings check names is that same epsilon plus the device's second.
    assert "+ 1.5 must not exceed" in (timing.settings_problem(20, 10, 10, 5) or "")


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
    assert DEFAULTS.heartbeat("watchdog") == 9.0  # W = 14 s at Patroni's defaults
    assert TIGHT.heartbeat("watchdog") == 1.5  # W = 4 s
    # No device in use, or too small a W for any replacement to beat it: no hair trigger.
    assert Deadlines.of(30, 10, 10, 5, watchdog_on=False).heartbeat("watchdog") == timing.OTHER_HEARTBEAT
    assert Deadlines.of(10, 2, 4, 5).heartbeat("watchdog") == timing.OTHER_HEARTBEAT  # W = 2 s


def test_the_cluster_view_is_trusted_for_a_cycle_and_its_slowest_read_never_past_ttl():
    assert timing.view_max_age(30, 10, 10) == 10 + 10 + timing.VIEW_SLACK
    assert timing.view_max_age(10, 5, 5) == 10  # the leader key may have expired unseen after ttl
