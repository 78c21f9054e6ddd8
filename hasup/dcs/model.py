"""The cluster as read from etcd, as a small typed model (nothing above sees raw etcd nodes)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse


@dataclass(frozen=True)
class Member:
    name: str
    data: dict[str, Any]
    index: int = 0

    @property
    def conn_url(self) -> str | None:
        return self.data.get("conn_url")

    @property
    def api_url(self) -> str | None:
        return self.data.get("api_url")

    @property
    def state(self) -> str:
        return str(self.data.get("state", "unknown"))

    @property
    def role(self) -> str:
        return str(self.data.get("role", "unknown"))

    @property
    def wal_position(self) -> int:
        v = self.data.get("xlog_location")
        return int(v) if isinstance(v, int | float) else 0

    @property
    def timeline(self) -> int | None:
        v = self.data.get("timeline")
        return int(v) if isinstance(v, int) else None

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
        u = urlparse(self.conn_url)
        return (u.hostname or "", u.port or 5432)


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

    @property
    def timeline(self) -> int:
        """Cluster timeline: one past the last history entry's (1 without history)."""
        if not self.history:
            return 1
        try:
            return int(self.history[-1][0]) + 1
        except (TypeError, ValueError, IndexError):
            return 0

    @property
    def paused(self) -> bool:
        return bool((self.config or {}).get("pause"))

    def leader_member(self) -> Member | None:
        if self.leader is None:
            return None
        return self.members.get(self.leader.name, Member(self.leader.name, {}))

    @property
    def watch_index(self) -> int:
        """Index to watch the leader key from (reference §2.1 'leader version')."""
        # Every event up to the read's X-Etcd-Index has been seen.
        return max(self.etcd_index, self.leader.index if self.leader else 0) + 1


def parse_json(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def build_cluster(nodes: dict[str, tuple[str | None, int, str | None]], etcd_index: int) -> Cluster:
    """Build the model from {relative key: (value, modifiedIndex, expiration)} of one recursive read."""
    members = {}
    for key, (value, index, _exp) in nodes.items():
        if key.startswith("members/") and value is not None:
            name = key[len("members/"):]
            data = parse_json(value)
            members[name] = Member(name, data if isinstance(data, dict) else {}, index)
    leader = None
    if "leader" in nodes and nodes["leader"][0]:
        value, index, exp = nodes["leader"]
        leader = Leader(str(value), index, exp)
    config_value, config_index = (nodes["config"][0], nodes["config"][1]) if "config" in nodes else (None, 0)
    config = parse_json(config_value)
    history = parse_json(nodes.get("history", (None, 0, None))[0])
    failover = parse_json(nodes.get("failover", (None, 0, None))[0])
    sync = parse_json(nodes.get("sync", (None, 0, None))[0])
    status = parse_json(nodes.get("status", (None, 0, None))[0])
    failsafe = parse_json(nodes.get("failsafe", (None, 0, None))[0])
    optime = None
    if isinstance(status, dict) and isinstance(status.get("optime"), int):
        optime = status["optime"]
    elif "optime/leader" in nodes:
        try:
            optime = int(nodes["optime/leader"][0] or "")
        except ValueError:
            optime = None
    return Cluster(
        initialize=nodes["initialize"][0] if "initialize" in nodes else None,
        config=config if isinstance(config, dict) else None,
        config_index=config_index,
        leader=leader,
        members=members,
        history=history if isinstance(history, list) else [],
        failover=failover if isinstance(failover, dict) and failover else None,
        sync=sync if isinstance(sync, dict) else None,
        optime=optime,
        etcd_index=etcd_index,
        failover_index=nodes["failover"][1] if "failover" in nodes else 0,
        status=status if isinstance(status, dict) else {},
        failsafe=failsafe if isinstance(failsafe, dict) else None,
    )
