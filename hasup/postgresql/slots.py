"""Replication slots: which ones a node should have, as pure functions (docs/operations.md, "Replication slots").

Given the cluster's members, this node's name and role, the slot settings of
the dynamic configuration and the rows of pg_replication_slots, `plan()`
says which slots to create, drop and advance.  Nothing here touches
PostgreSQL; hasup.postgresql.slot_keeper runs the plan.

What a node keeps:
- the leader: a physical slot for every other member (created as soon as the
  member key appears, so it exists before the member streams), and every
  permanent slot (logical ones only with wal_level=logical);
- a replica that may be promoted: copies of the other members' slots and of
  the permanent physical slots, advanced to the positions the leader
  publishes in /status, so a new leader already holds the WAL its replicas
  and permanent consumers still need;
- nothing else, except slots that `ignore_slots` matches (never dropped) and
  temporary slots (they belong to a session, pg_basebackup's for one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hasup.config.slot_settings import SlotSettings, SlotSpec, scalar_text


@dataclass(frozen=True)
class SlotRow:
    """One row of pg_replication_slots (LSNs as integers)."""

    name: str
    type: str
    database: str | None = None
    plugin: str | None = None
    temporary: bool = False
    active: bool = False
    restart_lsn: int | None = None
    confirmed_flush_lsn: int | None = None
    wal_status: str | None = None

    @property
    def position(self) -> int | None:
        """How far the slot's consumer got: confirmed_flush for logical slots, restart_lsn for physical."""
        return self.confirmed_flush_lsn if self.type == "logical" else self.restart_lsn


@dataclass(frozen=True)
class Plan:
    create: tuple[SlotSpec, ...] = ()
    drop: tuple[tuple[str, str], ...] = ()  # (slot, why)
    advance: tuple[tuple[str, int], ...] = ()  # (physical slot, LSN)
    notes: tuple[str, ...] = ()  # problems worth a log line
    managed: frozenset[str] = field(default_factory=frozenset)  # slots this node keeps (for /status)


def slot_name(member: str) -> str:
    """A member's physical slot: lowercase, '-' and '.' as '_', any other character outside
    [a-z0-9_] as 'u' and its 4-digit code point, at most 63 characters."""
    out = []
    for ch in member.lower():
        if ch in "-.":
            out.append("_")
        elif ch.isascii() and (ch.isalnum() or ch == "_"):
            out.append(ch)
        else:
            out.append(f"u{ord(ch):04d}")
    return "".join(out)[:63]


# -- members -----------------------------------------------------------------------------------


def _tag(data: Mapping[str, Any], tag: str) -> bool:
    tags = data.get("tags")
    return isinstance(tags, Mapping) and bool(tags.get(tag))


def member_slots(members: Mapping[str, Mapping[str, Any]], me: str) -> tuple[dict[str, str], list[str]]:
    """{slot name: member} for the members that stream (not tagged nostream), other than me."""
    mine = slot_name(me)
    out: dict[str, str] = {}
    notes = []
    for name in sorted(members):
        if name == me or _tag(members[name], "nostream"):
            continue
        slot = slot_name(name)
        if slot == mine:
            notes.append(f"members {me} and {name} would share replication slot {slot}: no slot for {name}")
        elif slot in out:
            notes.append(f"members {out[slot]} and {name} would share replication slot {slot}")
        else:
            out[slot] = name
    return out, notes


def upstream_of(members: Mapping[str, Mapping[str, Any]], name: str, leader: str | None) -> str | None:
    """Whom a member streams from: its replicatefrom member while that one runs as a replica,
    else the leader (the rule hasup.election.policy.upstream_for applies on the member itself)."""
    tags = members[name].get("tags") if name in members else None
    source = tags.get("replicatefrom") if isinstance(tags, Mapping) else None
    data = members.get(source) if isinstance(source, str) and source != name else None
    if data is not None and data.get("state") == "running" and data.get("role") == "replica" \
            and data.get("conn_url"):
        return str(source)
    return leader


def cascades(members: Mapping[str, Mapping[str, Any]], me: str, leader: str | None) -> tuple[set[str], dict[str, int]]:
    """Slots of the members that stream from me, and {slot: WAL position} of those that stream
    from a node other than the leader (the leader advances their otherwise idle slots)."""
    downstream: set[str] = set()
    elsewhere: dict[str, int] = {}
    for name, data in members.items():
        if name == me or _tag(data, "nostream"):
            continue
        upstream = upstream_of(members, name, leader)
        if upstream == me:
            downstream.add(slot_name(name))
        elif upstream != leader:
            lsn = data.get("xlog_location")
            if isinstance(lsn, int) and not isinstance(lsn, bool):
                elsewhere[slot_name(name)] = lsn
    return downstream, elsewhere


def own_slot(me: str, tags: Mapping[str, Any], use_slots: bool) -> str | None:
    """primary_slot_name for this node as a replica (None: stream without a slot)."""
    return slot_name(me) if use_slots and not tags.get("nostream") else None


def retain(last_seen: Mapping[str, float], present: Iterable[str], now: float, ttl: float) -> dict[str, float]:
    """Member slots to keep, with when each member was last seen: present ones now, vanished
    ones until ttl has passed (member_slots_ttl; 0 keeps nothing of a vanished member)."""
    kept = {slot: seen for slot, seen in last_seen.items() if now - seen < ttl}
    kept.update(dict.fromkeys(present, now))
    return kept


# -- the plan ----------------------------------------------------------------------------------


def plan(*, me: str, primary: bool, settings: SlotSettings, rows: Iterable[SlotRow],
         member_slot_names: Iterable[str], paused: bool = False, nofailover: bool = False,
         logical_ok: bool = True, leader: str | None = None, status_slots: Mapping[str, Any] | None = None,
         leader_optime: int | None = None, downstream: Iterable[str] = (),
         cascaded: Mapping[str, int] | None = None) -> Plan:
    """What to change so this node's slots are the ones it should keep.

    `primary`: this node leads and PostgreSQL runs as a primary (otherwise it is a replica).
    `member_slot_names`: slots of present members (other than me) and of vanished ones still
    retained.  `logical_ok`: wal_level is logical.  `status_slots`, `leader_optime`: the
    leader's /status, which a replica follows to advance its copies.  `downstream`: slots of
    members streaming from me (a replica keeps them even when nofailover).  `cascaded`: on the
    leader, {slot: WAL position} of members streaming from another replica.
    """
    rows = [r for r in rows if not r.temporary]
    mine = slot_name(me)
    notes: list[str] = []
    if not settings.use_slots:
        # Hands off, but do not leave the slots replicas no longer use holding WAL forever.
        names = set(member_slot_names) - {s.name for s in settings.permanent}
        return Plan(drop=() if paused else tuple(
            (r.name, "use_slots is off") for r in rows
            if r.name in names and r.type == "physical" and not r.active and not _ignored(r, settings)))

    wanted: dict[str, SlotSpec] = {}
    protected: set[str] = set()  # never dropped, even when not wanted here
    for name in member_slot_names:
        if name != mine:
            wanted[name] = SlotSpec(name)
    for spec in settings.permanent:
        protected.add(spec.name)
        if spec.name == mine:
            continue  # nobody streams from me through a slot named like me
        if spec.type == "logical":
            if not primary:
                # PostgreSQL cannot copy a logical slot's state to a standby through SQL before
                # version 17: the new leader creates it afresh after a failover (docs/operations.md).
                protected.discard(spec.name)
                wanted.pop(spec.name, None)
                continue
            if not logical_ok:
                notes.append(f"permanent logical slot {spec.name} needs wal_level=logical: not created")
                wanted.pop(spec.name, None)
                continue
        wanted[spec.name] = spec
    if not primary and nofailover:
        # Never promoted, so copies would only hold WAL back here; members cascading from here
        # still stream through theirs.
        wanted = {name: spec for name, spec in wanted.items() if name in set(downstream)}
        protected = set()

    by_name = {r.name: r for r in rows}
    drop: list[tuple[str, str]] = []
    create: list[SlotSpec] = []
    for r in rows:
        if _ignored(r, settings):
            continue
        want = wanted.get(r.name)
        if want is None:
            if r.name not in protected:
                drop.append((r.name, "not a member or permanent slot"))
            continue
        why = _mismatch(r, want)
        if why:
            drop.append((r.name, why))
            create.append(want)
    for name, spec in wanted.items():
        if name not in by_name:
            create.append(spec)
    if paused:
        drop = []  # maintenance mode: nothing is dropped
        create = [s for s in create if s.name not in by_name]

    # An active slot moves with its walsender; an idle one that nobody streams through from
    # here follows the position of its consumer elsewhere, so it holds no WAL back for nothing.
    # Replica copies follow the leader's /status (the leader's own slot: its optime); on the
    # leader, a cascading member's slot follows the member's reported position.
    targets: Mapping[str, Any] = dict(cascaded or {}) if primary else dict(status_slots or {})
    if not primary and leader and slot_name(leader) not in targets:
        targets = {**targets, slot_name(leader): leader_optime}
    advance: list[tuple[str, int]] = []
    recreated = {name for name, _ in drop}
    for name, spec in wanted.items():
        row = by_name.get(name)
        if spec.type != "physical" or row is None or row.active or name in recreated or row.restart_lsn is None \
                or _ignored(row, settings):
            continue
        target = targets.get(name)
        if isinstance(target, int) and not isinstance(target, bool) and target > row.restart_lsn:
            advance.append((name, target))
    managed = frozenset(wanted) | (protected & set(by_name))
    return Plan(tuple(create), tuple(drop), tuple(advance), tuple(notes), managed)


def _ignored(row: SlotRow, settings: SlotSettings) -> bool:
    return any(rule.matches(row) for rule in settings.ignore)


def _mismatch(row: SlotRow, spec: SlotSpec) -> str:
    """Why an existing slot cannot serve as `spec` ('' when it can)."""
    if row.wal_status == "lost":
        return "its WAL was removed (wal_status lost)"
    if row.type != spec.type:
        return f"it is {row.type}, wanted {spec.type}"
    if spec.type == "logical" and (row.database, row.plugin) != (spec.database, spec.plugin):
        return f"it decodes {row.database}/{row.plugin}, wanted {spec.database}/{spec.plugin}"
    return ""


def status_value(optime: int, slots: Mapping[str, int] | None, retain_slots: Iterable[str],
                 previous: Mapping[str, Any] | None, own: str | None = None) -> dict[str, Any]:
    """The leader's /status value, as Patroni's leader writes it (docs/migration.md, "The status key").

    `own` is the leader's own member slot (None when it never streams): it is listed in
    `slots` at the leader's optime and in `retain_slots`, so that when this leader crashes
    every other member, of either kind, keeps its slot until member_slots_ttl has passed,
    after its member key has expired.  Until the slot keeper has reported (`slots` None,
    e.g. right after a promotion), the previous leader's slot positions and retained names
    stay.  Empty fields are left out, as Patroni leaves them out."""
    if slots is None:
        prev = previous or {}
        old_slots, old_retain = prev.get("slots"), prev.get("retain_slots")
        slots = dict(old_slots) if isinstance(old_slots, Mapping) else {}
        retain_slots = [str(s) for s in old_retain] if isinstance(old_retain, list | tuple) else []
    positions = dict(slots)
    kept = set(retain_slots)
    if own is not None:
        positions[own] = optime
        kept.add(own)
    value: dict[str, Any] = {"optime": optime}
    if positions:
        value["slots"] = positions
    if kept:
        value["retain_slots"] = sorted(kept)
    return value


def handover_value(optime: int, previous: Mapping[str, Any] | None, own: str | None) -> dict[str, Any]:
    """The /status value a leader leaves when it hands over: where it stopped, and the member
    slots it retained (its own included), with no slot positions, as Patroni's leader leaves it
    at shutdown; the next leader keeps those slots for member_slots_ttl."""
    prev = previous or {}
    old_retain = prev.get("retain_slots")
    kept = {str(s) for s in old_retain} if isinstance(old_retain, list | tuple) else set()
    if own is not None:
        kept.add(own)
    return {"optime": optime, **({"retain_slots": sorted(kept)} if kept else {})}


def parse_lsn(value: Any) -> int | None:
    """'16/B374D848' as an integer (None for anything else)."""
    if not isinstance(value, str) or "/" not in value:
        return None
    hi, _, lo = value.partition("/")
    try:
        return (int(hi, 16) << 32) + int(lo, 16)
    except ValueError:
        return None


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def row_of(raw: Mapping[str, Any]) -> SlotRow:
    """A SlotRow from one pg_replication_slots row as JSON."""
    return SlotRow(
        name=str(raw.get("slot_name")), type=str(raw.get("slot_type")), database=scalar_text(raw.get("database")),
        plugin=scalar_text(raw.get("plugin")), temporary=bool(raw.get("temporary")), active=bool(raw.get("active")),
        restart_lsn=parse_lsn(raw.get("restart_lsn")), confirmed_flush_lsn=parse_lsn(raw.get("confirmed_flush_lsn")),
        wal_status=scalar_text(raw.get("wal_status")),
    )
