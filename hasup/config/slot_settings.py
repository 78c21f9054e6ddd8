"""The replication slot settings of the dynamic configuration (docs/operations.md, "Replication slots").

Which slots every node keeps besides its members' (`slots`, or its older names), which existing
slots hasup never touches (`ignore_slots`), and how long a departed member's slot is kept
(`member_slots_ttl`).  Read leniently: a bad entry is skipped with a note, so a running node
keeps going whatever someone writes into etcd.  hasup.postgresql.slots plans with them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hasup.config.values import join_key, shown

VALID_NAME = re.compile(r"[a-z0-9_]{1,63}")
DEFAULT_MEMBER_SLOTS_TTL = 1800.0  # seconds a vanished member's slot is kept (30min)
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(ms|s|min|h|d)?\s*")
# A year: a departed member whose slot must outlive that is not coming back. The bound keeps the
# value finite for the deadline arithmetic it feeds (10**400 or 1e400 written into etcd).
MAX_DURATION = 365 * 86400.0
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
PERMANENT_KEYS = ("slots", "permanent_slots", "permanent_replication_slots")  # first one present wins


@dataclass(frozen=True)
class SlotSpec:
    """A slot hasup wants: physical, or logical with its database and output plugin."""

    name: str
    type: str = "physical"
    database: str | None = None
    plugin: str | None = None


class Slot(Protocol):
    """What an ignore rule looks at in an existing slot (hasup.postgresql.slots.SlotRow)."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def database(self) -> str | None: ...
    @property
    def plugin(self) -> str | None: ...


@dataclass(frozen=True)
class IgnoreRule:
    """Matches a slot when every attribute it sets is equal (an empty rule matches every slot)."""

    name: str | None = None
    type: str | None = None
    database: str | None = None
    plugin: str | None = None

    def matches(self, slot: Slot) -> bool:
        return all(want is None or want == got for want, got in (
            (self.name, slot.name), (self.type, slot.type), (self.database, slot.database),
            (self.plugin, slot.plugin)))


@dataclass(frozen=True)
class SlotSettings:
    use_slots: bool = True
    permanent: tuple[SlotSpec, ...] = ()
    ignore: tuple[IgnoreRule, ...] = ()
    member_slots_ttl: float = DEFAULT_MEMBER_SLOTS_TTL


def parse_duration(value: Any) -> float:
    """Seconds from 1800, '1800', '30min', '2h', '500ms', '1d': finite, from 0 to MAX_DURATION."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration, got {shown(value)}")
    if isinstance(value, str):
        m = _DURATION.fullmatch(value) if len(value) <= 40 else None
        if m is None:
            raise ValueError(f"expected a duration such as 1800, 30min or 2h, got {shown(value)}")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2) or "s"]
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond a float
            seconds = math.inf
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_DURATION):
        raise ValueError(f"expected a duration from 0 to {MAX_DURATION:g} seconds, got {shown(value)}")
    return seconds


def scalar_text(value: Any) -> str | None:
    """A string, number or nothing as text; None for anything else.

    Only scalars: str() of a deeply nested value from etcd could raise RecursionError.
    """
    return str(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else None


def parse_slot_settings(config: Mapping[str, Any], use_slots: bool = True) -> tuple[SlotSettings, list[str]]:
    """Slot settings from the dynamic configuration (etcd's config key); bad entries are
    skipped with a note, so a running node keeps going whatever someone writes there."""
    notes: list[str] = []
    permanent: list[SlotSpec] = []
    key = next((k for k in PERMANENT_KEYS if config.get(k) is not None), PERMANENT_KEYS[0])
    raw = config.get(key) or {}
    if not isinstance(raw, Mapping):
        notes.append(f"{key}: expected a mapping of slot names, got {type(raw).__name__}; ignored")
        raw = {}
    for name, spec in raw.items():
        spec = spec if spec is not None else {}
        if not isinstance(name, str) or not VALID_NAME.fullmatch(name):
            notes.append(f"{join_key(key, name)}: a slot name takes 1 to 63 of a-z, 0-9 and _; ignored")
            continue
        if not isinstance(spec, Mapping):
            notes.append(f"{key}.{name}: expected a mapping (type, database, plugin); ignored")
            continue
        if spec.get("cluster_type") not in (None, "primary"):
            continue  # for standby clusters only, which hasup does not run
        database, plugin = scalar_text(spec.get("database")), scalar_text(spec.get("plugin"))
        kind = spec.get("type") or ("logical" if plugin or database else "physical")
        if kind == "physical":
            permanent.append(SlotSpec(name))
        elif kind == "logical":
            if not database or not plugin:
                notes.append(f"{key}.{name}: a logical slot needs database and plugin; ignored")
                continue
            permanent.append(SlotSpec(name, "logical", database, plugin))
        else:
            notes.append(f"{key}.{name}: type must be physical or logical, got {shown(kind)}; ignored")
    ignore: list[IgnoreRule] = []
    raw_ignore = config.get("ignore_slots") or []
    if not isinstance(raw_ignore, list | tuple):
        notes.append("ignore_slots: expected a list of matchers (name, type, database, plugin); ignored")
        raw_ignore = []
    for i, rule in enumerate(raw_ignore):
        if not isinstance(rule, Mapping):
            notes.append(f"ignore_slots[{i}]: expected a mapping (name, type, database, plugin); ignored")
            continue
        ignore.append(IgnoreRule(scalar_text(rule.get("name")), scalar_text(rule.get("type")),
                                 scalar_text(rule.get("database")), scalar_text(rule.get("plugin"))))
    ttl = DEFAULT_MEMBER_SLOTS_TTL
    if config.get("member_slots_ttl") is not None:
        try:
            ttl = parse_duration(config["member_slots_ttl"])
        except ValueError as exc:
            notes.append(f"member_slots_ttl: {exc}; using {DEFAULT_MEMBER_SLOTS_TTL:g}")
    return SlotSettings(use_slots, tuple(permanent), tuple(ignore), ttl), notes
