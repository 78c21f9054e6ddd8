"""The dynamic configuration (hasup.config.dynamic): etcd's `config` key, read leniently, and what a
bootstrapping node writes there."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hasup.config import DynamicConfig, initial_dcs_config, parse_dynamic
from hasup.config.dynamic import apply_timing_rule, dynamic_problems
from tests.unit.test_config import load

# -- dynamic configuration ---------------------------------------------------------------------


def test_dynamic_defaults() -> None:
    assert parse_dynamic({}) == (DynamicConfig(), [])


def test_dynamic_reads_every_setting() -> None:
    raw = {
        "ttl": 40, "loop_wait": "5", "retry_timeout": 12, "maximum_lag_on_failover": 0,
        "max_timelines_history": 3, "primary_start_timeout": 60, "primary_stop_timeout": 7,
        "check_timeline": "on", "pause": True,
        "postgresql": {"use_pg_rewind": "yes", "use_slots": False, "parameters": {"work_mem": "8MB"},
                       "pg_hba": ["local all all trust"]},
    }  # fmt: skip
    dynamic, notes = parse_dynamic(raw)
    assert notes == []
    assert dynamic == DynamicConfig(
        ttl=40, loop_wait=5, retry_timeout=12, maximum_lag_on_failover=0, max_timelines_history=3,
        primary_start_timeout=60, primary_stop_timeout=7, check_timeline=True, pause=True,
        use_pg_rewind=True, use_slots=False, parameters={"work_mem": "8MB"}, pg_hba=("local all all trust",),
    )  # fmt: skip


def test_dynamic_ttl_ten_is_accepted() -> None:
    dynamic, notes = parse_dynamic({"ttl": 10, "loop_wait": 2, "retry_timeout": 4})
    assert (dynamic.ttl, dynamic.loop_wait, dynamic.retry_timeout) == (10, 2, 4)
    assert notes == []


def test_dynamic_minimums_are_raised_with_a_warning() -> None:
    dynamic, notes = parse_dynamic({"ttl": 5, "loop_wait": 0, "retry_timeout": 1})
    assert (dynamic.ttl, dynamic.loop_wait, dynamic.retry_timeout) == (10, 1, 3)
    assert notes == [
        "ttl: 5 is below the minimum 10; using 10",
        "loop_wait: 0 is below the minimum 1; using 1",
        "retry_timeout: 1 is below the minimum 3; using 3",
    ]


@pytest.mark.parametrize(
    ("given", "effective"),
    [
        ((30, 10, 10), (10, 10)),
        ((30, 15, 10), (10, 10)),  # loop_wait shrinks to ttl - 2*retry_timeout
        ((30, 10, 15), (1, 14)),  # even loop_wait 1 does not fit: retry_timeout = (ttl-1)//2
        ((10, 10, 10), (1, 4)),
        ((10, 5, 3), (4, 3)),
        ((20, 1, 10), (1, 9)),
    ],
)
def test_dynamic_timing_rule(given: tuple[int, int, int], effective: tuple[int, int]) -> None:
    ttl, loop_wait, retry_timeout = given
    dynamic, notes = parse_dynamic({"ttl": ttl, "loop_wait": loop_wait, "retry_timeout": retry_timeout})
    assert (dynamic.loop_wait, dynamic.retry_timeout) == effective
    if (loop_wait, retry_timeout) == effective:
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].startswith('Violated the rule "loop_wait + 2*retry_timeout <= ttl"')


@given(ttl=st.integers(10, 10_000), loop_wait=st.integers(1, 10_000), retry_timeout=st.integers(3, 10_000))
def test_timing_rule_always_holds_afterwards(ttl: int, loop_wait: int, retry_timeout: int) -> None:
    new_loop_wait, new_retry_timeout, note = apply_timing_rule(ttl, loop_wait, retry_timeout)
    assert new_loop_wait + 2 * new_retry_timeout <= ttl
    assert 1 <= new_loop_wait <= loop_wait and 3 <= new_retry_timeout <= retry_timeout
    assert (note is None) == ((new_loop_wait, new_retry_timeout) == (loop_wait, retry_timeout))


def test_dynamic_invalid_values_fall_back_with_a_warning() -> None:
    dynamic, notes = parse_dynamic(
        {"ttl": "long", "check_timeline": "maybe", "postgresql": {"use_slots": "perhaps", "parameters": "x"}}
    )
    assert dynamic.ttl == 30 and dynamic.check_timeline is False and dynamic.use_slots is True
    assert dynamic.parameters == {}
    assert "ttl: expected an integer, got 'long'; using 30" in notes
    assert len(notes) == 4


def test_dynamic_legacy_timeouts() -> None:
    dynamic, _ = parse_dynamic({"master_start_timeout": 10, "master_stop_timeout": 4})
    assert (dynamic.primary_start_timeout, dynamic.primary_stop_timeout) == (10, 4)
    dynamic, _ = parse_dynamic({"master_start_timeout": 10, "primary_start_timeout": 20})
    assert dynamic.primary_start_timeout == 20


def test_dynamic_not_a_mapping() -> None:
    dynamic, notes = parse_dynamic(["ttl"])  # type: ignore[arg-type]
    assert dynamic == DynamicConfig()
    assert notes == ["config: expected a mapping, got ['ttl']; using the defaults"]


def test_dynamic_safety_settings_are_reported_and_kept() -> None:
    dynamic, notes = parse_dynamic(
        {"synchronous_mode": "quorum", "synchronous_mode_strict": "on", "failsafe_mode": True,
         "standby_cluster": {"host": "10.0.0.9"}}
    )  # fmt: skip
    assert dynamic.synchronous_mode and dynamic.synchronous_mode_strict and dynamic.failsafe_mode
    assert dynamic.standby_cluster == {"host": "10.0.0.9"}
    assert dynamic.quorum_commit
    assert notes == []
    on = parse_dynamic({"synchronous_mode": "on", "synchronous_node_count": 2})[0]
    assert on.synchronous_mode and not on.synchronous_mode_strict and on.synchronous_node_count == 2
    assert parse_dynamic({"standby_cluster": {}})[0].standby_cluster is None



def test_a_bad_standby_cluster_in_etcd_is_refused_as_a_whole_and_ignored_leniently() -> None:
    from hasup.dcs.parse import Bad, parse_config
    bad = {"ttl": 30, "standby_cluster": {"host": "10.0.0.9", "port": 0}}
    refused = parse_config(json.dumps(bad))
    assert isinstance(refused, Bad) and refused.reason == "standby_cluster: port: must be at least 1"
    assert dynamic_problems(bad) == ["standby_cluster: port: must be at least 1, got 0"]
    dynamic, notes = parse_dynamic(bad)  # a running node reading it anyway: not a standby cluster, said once
    assert dynamic.standby_cluster is None and notes[0].startswith("standby_cluster: port: must be at least 1")
    good = parse_config(json.dumps({"standby_cluster": {"host": "10.0.0.9", "port": 5433}}))
    assert good == {"standby_cluster": {"host": "10.0.0.9", "port": 5433}}
    # Only non-defining keys: not a standby cluster at all.
    assert parse_dynamic({"standby_cluster": {"primary_slot_name": "s"}})[0].standby_cluster is None


def test_bootstrap_timing_violation_is_a_load_warning() -> None:
    _, warnings = load({"bootstrap.dcs": {"ttl": 20, "loop_wait": 10, "retry_timeout": 10}})
    assert len(warnings) == 1
    assert warnings[0].startswith('bootstrap.dcs: Violated the rule "loop_wait + 2*retry_timeout <= ttl"')


# -- initial dynamic configuration ---------------------------------------------------------------


def test_initial_dcs_config_fills_defaults() -> None:
    cfg, _ = load({"bootstrap.dcs": {"postgresql": {"parameters": {"max_connections": 200}}}})
    assert initial_dcs_config(cfg) == {
        "ttl": 30,
        "loop_wait": 10,
        "retry_timeout": 10,
        "maximum_lag_on_failover": 1048576,
        "postgresql": {"parameters": {"max_connections": 200}},
    }


def test_initial_dcs_config_applies_the_timing_rule_and_keeps_other_keys() -> None:
    dcs = {"ttl": "20", "loop_wait": 10, "retry_timeout": 10, "master_start_timeout": 5, "slots": {"a": {}}}
    cfg, _ = load({"bootstrap.dcs": dcs})
    written = initial_dcs_config(cfg)
    assert (written["ttl"], written["loop_wait"], written["retry_timeout"]) == (20, 1, 9)
    assert written["master_start_timeout"] == 5 and written["slots"] == {"a": {}}
    assert cfg.bootstrap.dcs["loop_wait"] == 10  # the config itself is not changed
