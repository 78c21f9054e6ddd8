"""Synchronous replication: who is synchronous, in which order the `sync` key and PostgreSQL change (pure).

The promise: every commit acknowledged to a client is on every node the
`sync` key names, so any of them can be promoted without losing it.  Hence:

- PostgreSQL waits for *every* standby it names (`FIRST n (a, b, ...)` with n
  the length of the list), and it always names everything the key names;
- a new synchronous standby is named in PostgreSQL first, and enters the key
  only once PostgreSQL reports it `sync`;
- a standby leaves the key first, and PostgreSQL only afterwards.

Strict mode never runs without a synchronous standby: with nobody to name,
PostgreSQL waits for any standby (`*`), so writes block instead of
becoming unprotected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hasup.dcs.model import Cluster, Member

STRICT_ANY = ("*",)


@dataclass(frozen=True)
class SyncStep:
    key: tuple[str, ...]  # what the sync key must say next (written before PostgreSQL changes)
    names: tuple[str, ...]  # what synchronous_standby_names must name next


def key_standbys(cluster: Cluster, leader: str) -> tuple[str, ...]:
    """The standbys the `sync` key records for this leader (none when it names another leader)."""
    sync = cluster.sync or {}
    if sync.get("leader") != leader:
        return ()
    listed = sync.get("sync_standby")
    if isinstance(listed, str):
        return tuple(n.strip() for n in listed.split(",") if n.strip())
    if isinstance(listed, list):
        return tuple(str(n) for n in listed)
    return ()


def _int_tag(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def sync_priority(member: Member) -> int:
    """Patroni's sync_priority: a true nosync tag makes it 0; unset (or unreadable) it is 1."""
    tags = member.tags
    if tags.get("nosync"):
        return 0
    value = _int_tag(tags.get("sync_priority"))
    return 1 if value is None else value


def nosync(member: Member) -> bool:
    """Never synchronous: the nosync tag when given (it wins), else a sync_priority of 0 or less."""
    tags = member.tags
    if "nosync" in tags and tags["nosync"] is not None:
        return bool(tags["nosync"])
    value = _int_tag(tags.get("sync_priority"))
    return value is not None and value <= 0


def eligible(replication: Iterable[Mapping[str, Any]], cluster: Cluster, me: str, primary_wal: int,
             max_lag: int) -> list[Member]:
    """Running members streaming from us that may be synchronous, preferred first: higher sync_priority,
    then further ahead (by their member keys).  maximum_lag_on_syncnode (when above 0) leaves out one
    further behind the most advanced of them (or, alone, behind us) than that many bytes."""
    out = []
    for row in replication:
        name = str(row.get("application_name"))
        member = cluster.members.get(name)
        if row.get("state") != "streaming" or name == me or member is None:
            continue
        if member.state != "running" or nosync(member) or member.tags.get("nostream"):
            continue
        out.append(member)
    if max_lag > 0 and out:
        # Member.wal_position: 0 for a position that is missing or not a number (etcd holds what anyone wrote).
        ahead = max(m.wal_position for m in out) if len(out) > 1 else primary_wal
        out = [m for m in out if ahead - m.wal_position <= max_lag]
    out.sort(key=lambda m: (-sync_priority(m), -m.wal_position))  # stable: ties keep their order
    return out


def candidates(replication: Iterable[Mapping[str, Any]], cluster: Cluster, me: str, primary_wal: int = 0,
               max_lag: int = -1) -> list[str]:
    """Standbys that may be synchronous (eligible), not those that may not take over, best first."""
    return [m.name for m in eligible(replication, cluster, me, primary_wal, max_lag) if not m.nofailover]


def quorum_candidates(replication: Iterable[Mapping[str, Any]], cluster: Cluster, me: str, primary_wal: int,
                      max_lag: int, wanted: int) -> list[str]:
    """Quorum mode, as Patroni: every eligible standby, and those that may not take over only while
    fewer than `wanted` others are (they confirm commits but can never be promoted)."""
    out: list[str] = []
    members = eligible(replication, cluster, me, primary_wal, max_lag)
    for m in sorted(members, key=lambda m: m.nofailover):
        if not m.nofailover or len(out) < wanted:
            out.append(m.name)
    return out


def sync_now(replication: Iterable[Mapping[str, Any]]) -> set[str]:
    """Standbys PostgreSQL currently treats as synchronous."""
    return {str(r.get("application_name")) for r in replication
            if r.get("state") == "streaming" and r.get("sync_state") in ("sync", "quorum")}


def next_step(key: Sequence[str], configured: Sequence[str], synchronous: set[str], eligible: Sequence[str],
              count: int, strict: bool) -> SyncStep:
    """One safe step from the current key and PostgreSQL setting towards `count` synchronous standbys.

    key: what the sync key says; configured: what PostgreSQL names now; synchronous: what it
    reports as sync; eligible: standbys that may be chosen, best first.
    """
    keep = [n for n in key if n in eligible]  # current ones stay while they can: no needless churn
    wanted = keep + [n for n in eligible if n not in keep][:max(0, count - len(keep))]
    # Into the key only what PostgreSQL already waits for; out of the key at once.
    new_key = tuple(n for n in key if n in wanted) + tuple(
        n for n in wanted if n not in key and n in configured and n in synchronous)
    names = tuple(dict.fromkeys([*new_key, *wanted]))  # everything in the key, then the newcomers
    if not names and strict:
        names = STRICT_ANY
    return SyncStep(new_key, names)


def standby_names_setting(names: Sequence[str]) -> str:
    """The value of synchronous_standby_names: every listed standby must confirm."""
    if not names:
        return ""
    if tuple(names) == STRICT_ANY:
        return "*"
    quoted = ", ".join('"' + n.replace('"', '""') + '"' for n in names)
    return f"FIRST {len(names)} ({quoted})"


def parse_setting(value: str | None) -> tuple[str, ...]:
    """The names a synchronous_standby_names value lists (as this module writes it)."""
    text = (value or "").strip()
    if not text:
        return ()
    if text == "*":
        return STRICT_ANY
    if "(" in text and text.endswith(")"):
        text = text[text.index("(") + 1:-1]
    return tuple(part.strip().strip('"').replace('""', '"') for part in text.split(",") if part.strip())


def may_race(cluster: Cluster, me: str) -> bool:
    """In synchronous mode only a recorded synchronous standby (or the old leader itself) may take over."""
    sync = cluster.sync or {}
    leader = sync.get("leader")
    if not leader:
        return True  # nothing recorded yet (mode just turned on): nobody has made a promise
    return me == leader or me in key_standbys(cluster, str(leader))
