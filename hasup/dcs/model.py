"""The cluster as read from etcd, as a small typed model (nothing above sees raw etcd nodes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

from hasup.dcs import parse

T = TypeVar("T")


@dataclass(frozen=True)
class Member:
    name: str
    data: dict[str, Any]
    index: int = 0

    @property
    def conn_url(self) -> str | None:
        v = self.data.get("conn_url")
        return v if isinstance(v, str) else None

    @property
    def api_url(self) -> str | None:
        v = self.data.get("api_url")
        return v if isinstance(v, str) else None

    @property
    def state(self) -> str:
        return str(self.data.get("state", "unknown"))

    @property
    def role(self) -> str:
        return str(self.data.get("role", "unknown"))

    @property
    def wal_position(self) -> int:
        v = self.data.get("xlog_location")
        return v if parse.is_int(v, 0, parse.LSN_END) else 0

    @property
    def timeline(self) -> int | None:
        v = self.data.get("timeline")
        return v if parse.is_int(v, 0, parse.MAX_TIMELINE + 1) else None

    @property
    def tags(self) -> dict[str, Any]:
        t = self.data.get("tags")
        return t if isinstance(t, dict) else {}

    @property
    def nofailover(self) -> bool:
        return bool(self.tags.get("nofailover")) or self.tags.get("failover_priority", 1) == 0

    @property
    def host_port(self) -> tuple[str, int] | None:
        if not self.conn_url:
            return None
        try:
            u = urlparse(self.conn_url)
            return (u.hostname or "", u.port or 5432)
        except ValueError:  # a port out of range (parse.url_problem keeps these out of etcd reads)
            return None


@dataclass(frozen=True)
class Leader:
    name: str
    index: int  # modifiedIndex of the leader key
    expiration: str | None = None  # etcd's wall-clock expiry, for humans and tests


@dataclass(frozen=True)
class Cluster:
    initialize: str | None  # None: key absent; "": bootstrap in progress; else the sysid
    config: dict[str, Any] | None
    config_index: int
    leader: Leader | None
    members: dict[str, Member]
    history: list[list[Any]]
    failover: dict[str, Any] | None
    sync: dict[str, Any] | None
    optime: int | None  # status.optime, or legacy optime/leader
    etcd_index: int = 0  # X-Etcd-Index of the read, for watches
    failover_index: int = 0  # modifiedIndex of the failover key, for compare-and-swap
    status: dict[str, Any] = field(default_factory=dict)
    failsafe: dict[str, Any] | None = None  # {member: api_url} the leader keeps while failsafe_mode is on
    rejected: frozenset[str] = frozenset()  # keys whose values failed their boundary check (hasup.dcs.parse)

    @property
    def timeline(self) -> int:
        """Cluster timeline: one past the last history entry's (1 without history)."""
        for entry in reversed(self.history):
            # build_cluster lets only well-formed entries through; a Cluster made by hand may hold others.
            if isinstance(entry, list | tuple) and entry and parse.is_int(entry[0], 1, parse.MAX_TIMELINE + 1):
                return int(entry[0]) + 1
        return 1

    @property
    def paused(self) -> bool:
        return bool((self.config or {}).get("pause"))

    def leader_member(self) -> Member | None:
        if self.leader is None:
            return None
        return self.members.get(self.leader.name, Member(self.leader.name, {}))

    @property
    def watch_index(self) -> int:
        """Index to watch the leader key from (v2 `waitIndex`, docs/design.md §6): the first one not yet seen."""
        # Every event up to the read's X-Etcd-Index has been seen.
        return max(self.etcd_index, self.leader.index if self.leader else 0) + 1


# Keys whose rejected value is better replaced by the last good one than taken as absent: without
# them a node would fall back to default timing or an unpaused cluster (config), see an older
# timeline (history), let any replica race in synchronous mode (sync), skip the lag check (status),
# confirm a cut-off leader with nobody (failsafe), or lose the system identifier check (initialize).
LAST_GOOD_KEYS = ("config", "history", "sync", "status", "failsafe", "initialize")


def build_cluster(nodes: dict[str, tuple[str | None, int, str | None]], etcd_index: int,
                  bad_values: parse.BadValues | None = None) -> Cluster:
    """Build the model from {relative key: (value, modifiedIndex, expiration)} of one recursive read.

    Every value goes through its boundary parser (hasup.dcs.parse); a rejected one is counted,
    logged once, left out (as if absent) and named in Cluster.rejected, so that the election
    worker can keep the last good one where absence would be unsafe (with_last_good)."""
    rejected: set[str] = set()

    def take(key: str, parser: Callable[[str | None], T | parse.Bad]) -> T | None:
        raw = nodes[key][0] if key in nodes else None
        value = parse.checked(key, raw, parser, bad_values)
        if isinstance(value, parse.Bad):
            rejected.add(key)
            return None
        return value

    leader_name = take("leader", parse.parse_leader)
    leader = Leader(leader_name, nodes["leader"][1], nodes["leader"][2]) if leader_name else None
    members: dict[str, Member] = {}
    named = sorted((key[len("members/"):], key) for key, (value, _i, _e) in nodes.items()
                   if key.startswith("members/") and value is not None)
    # The leader's own key first: a flood of member keys must not push it out.
    named.sort(key=lambda pair: pair[0] != leader_name)
    for name, key in named:
        if not parse.valid_name(name) or len(members) >= parse.MAX_MEMBERS:
            why = f"more than {parse.MAX_MEMBERS} members" if parse.valid_name(name) else "not a member name"
            (bad_values or parse.BAD_VALUES).report(key, nodes[key][0], parse.Bad(why))
            rejected.add(key)
        else:
            data = take(key, parse.parse_member)
            if data is not None:
                members[name] = Member(name, data, nodes[key][1])
    status = take("status", parse.parse_status)
    legacy_optime = take("optime/leader", parse.parse_optime)  # Patroni before 2.1 wrote only this
    optime = status.get("optime") if status else None
    if optime is None:
        optime = legacy_optime
    return Cluster(
        initialize=take("initialize", parse.parse_initialize),
        config=take("config", parse.parse_config),
        config_index=nodes["config"][1] if "config" in nodes else 0,
        leader=leader,
        members=members,
        history=take("history", parse.parse_history) or [],
        failover=take("failover", parse.parse_failover),
        sync=take("sync", parse.parse_sync),
        optime=optime,
        etcd_index=etcd_index,
        failover_index=nodes["failover"][1] if "failover" in nodes else 0,
        status=status or {},
        failsafe=take("failsafe", parse.parse_failsafe),
        rejected=frozenset(rejected),
    )


def with_last_good(cluster: Cluster, last: Cluster | None) -> Cluster:
    """cluster, with each rejected LAST_GOOD_KEYS value replaced by its value in `last` (the previous
    read, itself already patched): a corrupt value keeps the last good one in force until fixed."""
    keys = cluster.rejected.intersection(LAST_GOOD_KEYS)
    if last is None or not keys:
        return cluster
    changes: dict[str, Any] = {key: getattr(last, key) for key in keys if key != "status"}
    if "status" in keys:
        changes["status"] = last.status
        if cluster.optime is None:
            changes["optime"] = last.optime
    return dataclasses.replace(cluster, **changes)
