"""The replication slot settings of the dynamic configuration (hasup.config.slot_settings)."""

from __future__ import annotations

from typing import Any

import pytest

from hasup.config.slot_settings import IgnoreRule, SlotSettings, SlotSpec, parse_duration, parse_slot_settings
from hasup.postgresql.slots import SlotRow


@pytest.mark.parametrize(("config", "permanent", "notes"), [
    ({"slots": {"p": {"type": "physical"}, "l": {"type": "logical", "database": "d", "plugin": "pgoutput"},
                "q": None, "s": {"type": "physical", "cluster_type": "standby"}}},
     (SlotSpec("p"), SlotSpec("l", "logical", "d", "pgoutput"), SlotSpec("q")), []),
    ({"permanent_slots": {"p": {}}}, (SlotSpec("p"),), []),
    ({"permanent_replication_slots": {"l": {"database": "d", "plugin": "x"}}}, (SlotSpec("l", "logical", "d", "x"),),
     []),
    ({"slots": {"Bad-Name": {}, "l": {"type": "logical"}, "t": {"type": "other"}, "m": "x"}}, (),
     ["slots.Bad-Name: a slot name takes 1 to 63 of a-z, 0-9 and _; ignored",
      "slots.l: a logical slot needs database and plugin; ignored",
      "slots.t: type must be physical or logical, got 'other'; ignored",
      "slots.m: expected a mapping (type, database, plugin); ignored"]),
    ({"slots": ["p"]}, (), ["slots: expected a mapping of slot names, got list; ignored"]),
])
def test_permanent_slot_settings(config: dict[str, Any], permanent: tuple[SlotSpec, ...], notes: list[str]) -> None:
    settings, got = parse_slot_settings(config)
    assert settings.permanent == permanent and got == notes


def test_ignore_and_ttl_settings() -> None:
    settings, notes = parse_slot_settings(
        {"ignore_slots": [{"name": "cdc"}, {"type": "logical", "plugin": "pgoutput"}, "junk"],
         "member_slots_ttl": "10min"}, use_slots=False)
    assert settings.ignore == (IgnoreRule(name="cdc"), IgnoreRule(type="logical", plugin="pgoutput"))
    assert settings.member_slots_ttl == 600 and settings.use_slots is False
    assert notes == ["ignore_slots[2]: expected a mapping (name, type, database, plugin); ignored"]
    assert parse_slot_settings({})[0] == SlotSettings()
    _, notes = parse_slot_settings({"member_slots_ttl": "soon", "ignore_slots": {"name": "x"}})
    assert len(notes) == 2 and notes[1].startswith("member_slots_ttl: expected a duration")


@pytest.mark.parametrize(("value", "seconds"), [(0, 0.0), (90, 90.0), ("1800", 1800.0), ("30min", 1800.0),
                                                ("2h", 7200.0), ("500ms", 0.5), ("1d", 86400.0), ("1.5 s", 1.5)])
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [True, -1, "ten", "5 weeks"])
def test_bad_durations(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_an_ignore_rule_matches_every_attribute_it_sets() -> None:
    row = SlotRow("cdc", "logical", "app", "pgoutput")
    assert IgnoreRule().matches(row) and IgnoreRule(name="cdc", plugin="pgoutput").matches(row)
    assert not IgnoreRule(name="cdc", database="other").matches(row)
