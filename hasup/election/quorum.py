"""Quorum commit (`synchronous_mode: quorum`): the promise, the steps that keep it, who may promote (pure).

Two records describe synchronous replication, and they change one at a time:

- PostgreSQL commits once `num` of the standbys it `names` confirmed
  (`synchronous_standby_names = ANY num (names)`): a Commit;
- the `sync` key says who must be asked before anyone promotes: a candidate
  has to see `quorum + 1` of the *members* (the key's leader and its voters,
  `sync_standby`), none of them ahead of it: a Key.

The promise: every acknowledged commit is on at least one node of any
`quorum + 1` members the primary is not one of.  With `others` the members
other than the primary, a commit is missing from at most
`len(others) - max(0, num - len(names - others))` of them, and that must not
exceed `quorum` (`safe`).

Order of changes (`next_step`):

- a new PostgreSQL setting is applied only if the key as it stands is safe
  for it; the commits acknowledged under the old setting stay covered because
  the key was safe for the old one too and does not change until the new one
  is *settled*: `num` of its names hold the WAL up to where it took effect;
- a key that promises less (more members, or a lower quorum) is written only
  while the setting is settled and safe for it; one that promises no less
  (fewer members and no lower quorum) may be written any time it is safe.

After a failover the new primary first writes itself as the key's leader and
its predecessor as a voter: `others` stays the same set, so nothing changes
for the promise.  Before it promotes, it runs with the setting that makes the
key safe for it (`promotion_commit`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hasup.dcs.model import Cluster


@dataclass(frozen=True)
class Key:
    """The sync key in quorum mode: leader, voters (sync_standby) and quorum."""

    leader: str | None
    voters: frozenset[str]
    quorum: int

    def members(self) -> frozenset[str]:
        return self.voters | ({self.leader} if self.leader else frozenset())


@dataclass(frozen=True)
class Commit:
    """synchronous_standby_names: `num` of `names` confirm each commit."""

    num: int
    names: frozenset[str]


NO_COMMIT = Commit(0, frozenset())


@dataclass(frozen=True)
class Step:
    key: Key | None  # written first, when set
    commit: Commit | None  # applied afterwards, when set


# -- reading and writing the two records ----------------------------------------------------------


def read_key(cluster: Cluster) -> Key | None:
    """The sync key as quorum mode reads it; None when it names no leader (nothing promised yet)."""
    sync = cluster.sync or {}
    leader = sync.get("leader")
    if not isinstance(leader, str) or not leader:
        return None
    listed = sync.get("sync_standby")
    if isinstance(listed, str):
        voters = frozenset(n.strip() for n in listed.split(",") if n.strip())
    elif isinstance(listed, list):
        voters = frozenset(str(n) for n in listed)
    else:
        voters = frozenset()
    quorum = sync.get("quorum")
    return Key(leader, voters - {leader}, quorum if isinstance(quorum, int) and quorum > 0 else 0)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def render(commit: Commit, strict: bool) -> str:
    """The synchronous_standby_names value; strict mode waits for any standby rather than none."""
    if not commit.names and strict:
        return "*"
    if not commit.names or commit.num <= 0:
        return ""
    return f"ANY {commit.num} ({', '.join(_quote(n) for n in sorted(commit.names))})"


def _split_names(text: str) -> list[str]:
    names, cur, quoted, i = [], "", False, 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == '"' and text[i + 1:i + 2] == '"':
                cur += '"'
                i += 1
            elif ch == '"':
                quoted = False
            else:
                cur += ch
        elif ch == '"':
            quoted = True
        elif ch == ",":
            names.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    names.append(cur.strip())
    return [n for n in names if n]


_SETTING = re.compile(r"^(?:(?:ANY|FIRST)\s+)?(\d+)\s*\((.*)\)$", re.IGNORECASE | re.DOTALL)


def parse_commit(value: str | None) -> Commit:
    """What a synchronous_standby_names value guarantees: at least `num` of `names` confirm a commit.

    FIRST n guarantees as much as ANY n; a bare list is FIRST 1; '*' (any standby) and anything
    unreadable guarantee nothing about any named node."""
    text = (value or "").strip()
    if not text:
        return NO_COMMIT
    m = _SETTING.match(text)
    num, names = (int(m.group(1)), _split_names(m.group(2))) if m else (1, _split_names(text))
    if "*" in names or not names:
        return NO_COMMIT
    return Commit(min(num, len(names)), frozenset(names))


# -- the promise ----------------------------------------------------------------------------------


def missing_at_most(me: str, key: Key, commit: Commit) -> int:
    """How many of the key's members other than the primary `me` may lack an acknowledged commit."""
    others = key.members() - {me}
    held = max(0, commit.num - len(commit.names - others))
    return len(others) - held


def safe(me: str, key: Key, commit: Commit) -> bool:
    return missing_at_most(me, key, commit) <= key.quorum


def promises_no_less(new: Key, old: Key, me: str) -> bool:
    """Whatever setting `old` was safe for, `new` is safe for too: no more members other than us, and
    no lower quorum unless none are left (then only we could be promoted)."""
    others = new.members() - {me}
    return others <= old.members() - {me} and (new.quorum >= old.quorum or not others)


def valid_key(key: Key) -> bool:
    """A quorum nobody could ever reach is no use (and Patroni refuses to read it)."""
    return key.quorum == 0 or key.quorum < len(key.voters)


def target(active: Sequence[str], wanted: int) -> tuple[frozenset[str], int, int]:
    """(names, num, quorum) the leader aims at: every eligible standby votes and may confirm."""
    names = frozenset(active)
    num = min(wanted, len(names))
    return names, num, len(names) - num


def _lowest_quorum(me: str, leader: str, voters: frozenset[str], commit: Commit) -> int:
    return missing_at_most(me, Key(leader, voters, 0), commit)


def _lowest_num(me: str, key: Key, names: frozenset[str]) -> int | None:
    for num in range(0 if not names else 1, len(names) + 1):
        if safe(me, key, Commit(num, names)):
            return num
    return None


def _without(me: str, key: Key, commit: Commit, fewer: frozenset[str]) -> Key:
    """The key with fewer voters and the quorum kept (raised if the setting needs it; 0 with none left)."""
    return Key(me, fewer, max(key.quorum, _lowest_quorum(me, me, fewer, commit)) if fewer else 0)


def next_step(me: str, key: Key | None, commit: Commit, settled: bool, active: Sequence[str],
              wanted: int) -> Step:
    """One safe step from the key and PostgreSQL's setting towards the target (module docstring).

    key: the sync key (None: it names no leader); commit: what PostgreSQL
    runs with; settled: that setting holds since `num` of its names reached where it took effect;
    active: eligible standbys streaming from us.  Step(None, None) when there is nothing to do now.
    """
    if key is None:
        key = Key(me, frozenset(), 0)
        return Step(key, None)
    if key.leader != me:
        # Take over the key: the old leader becomes a voter, so the members other than us are the same.
        return Step(Key(me, key.members() - {me}, key.quorum), None)
    alive = frozenset(active)
    # Members that stopped streaming leave the key, one or all at once, with the quorum kept (promising
    # no less), or leave PostgreSQL's names with as many confirmations as the key needs.
    drops: list[Step] = []
    for gone in sorted((key.voters | commit.names) - alive):
        if gone in key.voters:
            drops.append(Step(_without(me, key, commit, key.voters - {gone}), None))
        need = _lowest_num(me, key, commit.names - {gone})
        if gone in commit.names and need is not None:
            drops.append(Step(None, Commit(need, commit.names - {gone})))
    if key.voters - alive:
        drops.append(Step(_without(me, key, commit, key.voters & alive), None))
    for move in drops:
        if allowed(me, key, commit, settled, move):
            return move
    names, num, quorum = target(active, wanted)
    kept = (key.voters | commit.names) & alive
    kept_num = min(wanted, len(kept))
    waypoints = [(kept, kept_num, len(kept) - kept_num), (names, num, quorum)]
    for w_names, w_num, w_quorum in waypoints:
        w_key, w_commit = Key(me, w_names, w_quorum), Commit(w_num, w_names)
        if w_key == key and w_commit == commit:
            continue
        moves: list[Step] = []
        if w_commit != commit:
            moves.append(Step(None, w_commit))
        if w_key != key:
            moves.append(Step(w_key, None))
        # When the waypoint itself is not safe yet, a way there: the members with a higher quorum,
        # or the names with a higher num.
        lowest = _lowest_quorum(me, me, w_names, commit)
        if lowest > w_quorum and Key(me, w_names, lowest) != key:
            moves.append(Step(Key(me, w_names, lowest), None))
        need = _lowest_num(me, key, w_names)
        if need is not None and need > w_num and Commit(need, w_names) != commit:
            moves.append(Step(None, Commit(need, w_names)))
        for move in moves:
            if allowed(me, key, commit, settled, move):
                return move
    return Step(None, None)


def allowed(me: str, key: Key, commit: Commit, settled: bool, move: Step) -> bool:
    """Whether a one-record change keeps the promise (module docstring)."""
    if move.key is not None:
        new = move.key
        if not valid_key(new) or not safe(me, new, commit):
            return False
        return settled or promises_no_less(new, key, me)
    assert move.commit is not None
    return safe(me, key, move.commit)


def settled(commit: Commit, since: int | None, positions: Mapping[str, int]) -> bool:
    """The setting holds for every acknowledged commit: `num` of its names hold the WAL up to `since`,
    where it took effect (None: not known yet)."""
    if commit.num <= 0:
        return True
    if since is None:
        return False
    return sum(1 for n in commit.names if positions.get(n, 0) >= since) >= commit.num


def promotion_commit(me: str, key: Key) -> Commit:
    """The setting a candidate runs with before it promotes: as much as the key promises for it."""
    others = key.members() - {me}
    return Commit(max(0, len(others) - key.quorum), others)


# -- the leader race ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Witness:
    """A member's answer in the race: its WAL position, whether it is a running replica, may promote."""

    name: str
    wal_position: int
    running: bool
    may_promote: bool = True
    failover_priority: int = 1


def may_promote(me: str, my_wal: int, my_priority: int, key: Key, seen: Iterable[Witness]) -> tuple[bool, str]:
    """Patroni's quorum race: of the key's members, `quorum + 1` (counting ourselves when one) must be
    seen at or behind us, and no member that could promote may be ahead (the old leader excepted)."""
    members = key.members()
    votes = 0 if me in members else -1
    ahead = 0
    for w in seen:
        if w.name == me or w.name not in members or not w.may_promote:
            continue
        if w.wal_position > my_wal:
            ahead += 1
            if w.name != key.leader:
                return False, f"{w.name} has a higher wal position"
            continue
        if not w.running or w.wal_position <= 0:
            continue
        if w.wal_position == my_wal and w.failover_priority > my_priority and w.name != key.leader:
            return False, f"{w.name} has the same wal position and a higher failover priority"
        votes += 1
    if votes >= key.quorum or (ahead == 0 and key.leader == me):
        return True, f"quorum reached ({votes + 1} of {len(members)} members seen, {key.quorum + 1} needed)"
    return False, f"quorum not reached: {votes + 1} of the members seen at or behind me, {key.quorum + 1} needed"


def row_names(replication: Iterable[Mapping[str, Any]]) -> list[str]:
    return [str(r.get("application_name")) for r in replication if r.get("state") == "streaming"]
