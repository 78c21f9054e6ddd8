"""What hasupctl shows and whom it picks, computed from one etcd read of the cluster (pure)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import yaml

from hasup.config.standby import is_standby
from hasup.dcs import parse
from hasup.dcs.model import Cluster, Member
from hasup.postgresql.slots import format_lsn

MB = 1024 * 1024
# Role filters, as patronictl spells them.
ROLE_FILTERS = ("leader", "primary", "standby-leader", "replica", "standby", "any")
# patronictl 4's columns: each replica's received and replayed WAL position and how far each is behind the
# leader's last published one, in MB.
LIST_COLUMNS = ["Member", "Host", "Role", "State", "TL", "Receive LSN", "Receive Lag", "Replay LSN", "Replay Lag"]
# The boxed formats name both lag columns just "Lag" (each follows its LSN column).
PRETTY_NAMES = {"Receive Lag": "Lag", "Replay Lag": "Lag"}
RIGHT_ALIGNED = ("TL", "Receive LSN", "Replay LSN", "Lag")
LONG_REASON = 50  # a pending-restart reason longer than this is hidden in the boxed formats
OPTIONAL_COLUMNS = ["Pending restart", "Pending restart reason", "Scheduled restart", "Tags"]
HISTORY_COLUMNS = ["TL", "LSN", "Reason", "Timestamp", "New Leader"]


def is_standby_cluster(cluster: Cluster) -> bool:
    section = (cluster.config or {}).get("standby_cluster")
    return isinstance(section, dict) and is_standby(section)


def sync_names(cluster: Cluster) -> set[str]:
    """Members named in the sync key, when the cluster runs in synchronous mode."""
    mode = (cluster.config or {}).get("synchronous_mode")
    if not mode or mode in ("off", "false") or not cluster.sync:
        return set()
    names = cluster.sync.get("sync_standby") or ""
    return {n for n in str(names).split(",") if n}


def dcs_role(cluster: Cluster, name: str) -> str:
    """The member's role as /cluster names it: leader, standby_leader, sync_standby, quorum_standby or replica."""
    if cluster.leader is not None and cluster.leader.name == name:
        return "standby_leader" if is_standby_cluster(cluster) else "leader"
    if name in sync_names(cluster):
        return "quorum_standby" if (cluster.config or {}).get("synchronous_mode") == "quorum" else "sync_standby"
    return "replica"


def sorted_members(cluster: Cluster) -> list[Member]:
    return [cluster.members[n] for n in sorted(cluster.members)]


def _position(member: Member, key: str) -> int | None:
    v = member.data.get(key)
    return v if parse.is_int(v, 1, parse.LSN_END) else None


def wal_columns(cluster: Cluster, member: Member) -> dict[str, Any]:
    """Receive/Replay LSN and their lag in MB behind the leader's last published position.

    A position the member does not publish reads "unknown" with a blank lag. A member that publishes only
    its flushed position (older versions) has it shown as received when it streams, as replayed otherwise.
    """
    receive, replay = _position(member, "receive_lsn"), _position(member, "replay_lsn")
    if receive is None and replay is None and (flushed := _position(member, "xlog_location")) is not None:
        if (member.data.get("replication_state") or member.state) == "streaming":
            receive = flushed
        else:
            replay = flushed
    out: dict[str, Any] = {}
    for prefix, lsn in (("Receive", receive), ("Replay", replay)):
        out[f"{prefix} LSN"] = "unknown" if lsn is None else format_lsn(lsn)
        out[f"{prefix} Lag"] = "" if lsn is None or cluster.optime is None \
            else round(max(0, cluster.optime - lsn) / MB)
    return out


def _show_port(members: list[Member]) -> bool:
    """host:port when a port is not 5432 or two members share a host (patronictl's rule)."""
    hosts = [m.host_port for m in members if m.host_port]
    return any(p != 5432 for _, p in hosts) or len({h for h, _ in hosts}) < len(hosts)


def _restart_reason(member: Member, boxed: bool) -> str:
    """One line per changed parameter; in the boxed formats a long one is hidden rather than widen the table."""
    reason = member.data.get("pending_restart_reason")
    if not isinstance(reason, dict):
        return ""
    lines = []
    for param, change in reason.items():
        if isinstance(change, dict):
            line = f"{param}: {change.get('old_value')}->{change.get('new_value')}"
            lines.append(f"{param}: [hidden - too long]" if boxed and len(line) > LONG_REASON else line)
    return "\n".join(lines)


def _tags(member: Member, fmt: str) -> Any:
    """Tags as a mapping for json/yaml, as YAML text for the tables: block style when boxed, else flow."""
    if not member.tags:
        return ""
    if fmt in ("json", "yaml", "yml"):
        return member.tags
    return yaml.safe_dump(member.tags, default_flow_style=fmt != "pretty", allow_unicode=True, width=200).strip()


def _scheduled(member: Member) -> str:
    sched = member.data.get("scheduled_restart")
    if not isinstance(sched, dict) or "schedule" not in sched:
        return ""
    text = str(sched["schedule"])
    if sched.get("postgres_version"):
        text += f" if version < {sched['postgres_version']}"
    return text


def member_row(cluster: Cluster, member: Member, with_port: bool, fmt: str = "json") -> dict[str, Any]:
    role = dcs_role(cluster, member.name)
    leading = role in ("leader", "standby_leader")
    hp = member.host_port
    host = "" if hp is None else f"{hp[0]}:{hp[1]}" if with_port else hp[0]
    state = (not leading and member.data.get("replication_state")) or member.state
    row: dict[str, Any] = {
        "Member": member.name, "Host": host, "Role": role.replace("_", " ").title(), "State": state,
        "TL": "" if member.timeline is None else member.timeline,
    }
    row.update(dict.fromkeys(LIST_COLUMNS[5:], "") if leading else wal_columns(cluster, member))
    row.update({
        "Pending restart": "*" if member.data.get("pending_restart") else "",
        "Pending restart reason": _restart_reason(member, fmt in ("pretty", "topology")),
        "Scheduled restart": _scheduled(member),
        "Tags": _tags(member, fmt),
    })
    return row


def topology(cluster: Cluster) -> list[tuple[int, Member]]:
    """Members with their depth: the leader, then whom each replicates from (tag replicatefrom)."""
    members = sorted_members(cluster)
    names = {m.name for m in members}
    leader = cluster.leader.name if cluster.leader and cluster.leader.name in names else None

    def parent(m: Member) -> str | None:
        if m.name == leader:
            return None
        upstream = m.tags.get("replicatefrom")
        if isinstance(upstream, str) and upstream in names and upstream != m.name:
            return upstream
        return leader

    out: list[tuple[int, Member]] = []
    placed: set[str] = set()

    def walk(name: str | None, level: int) -> None:
        for m in members:
            if m.name not in placed and parent(m) == name:
                placed.add(m.name)
                out.append((level, m))
                walk(m.name, level + 1)
    walk(None, 0)
    for m in members:  # cycles in replicatefrom: show them at the top rather than lose them
        if m.name not in placed:
            placed.add(m.name)
            out.append((0, m))
            walk(m.name, 1)
    return out


def member_table(cluster: Cluster, scope: str, fmt: str, extended: bool = False,
                 nested: bool = False) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of `list` (nested: `topology`, names indented under their upstream)."""
    ordered = topology(cluster) if nested else [(0, m) for m in sorted_members(cluster)]
    with_port = _show_port([m for _, m in ordered])
    rows = []
    for level, m in ordered:
        row = member_row(cluster, m, with_port, fmt)
        if level:
            row["Member"] = "  " * (level - 1) + "+ " + m.name
        rows.append(row)
    columns = LIST_COLUMNS + [c for c in OPTIONAL_COLUMNS if extended or any(r[c] for r in rows)]
    if fmt not in ("pretty", "topology"):
        columns = ["Cluster"] + columns
        for row in rows:
            row["Cluster"] = scope
    return columns, [[r[c] for c in columns] for r in rows]


def header_names(columns: list[str], fmt: str) -> list[str]:
    """The header row as patronictl prints it: the boxed formats shorten both lag columns to "Lag"."""
    return [PRETTY_NAMES.get(c, c) for c in columns] if fmt in ("pretty", "topology") else columns


def cluster_title(cluster: Cluster, scope: str) -> str:
    sysid = {None: "uninitialized", "": "initializing"}.get(cluster.initialize, cluster.initialize)
    return f"Cluster: {scope} ({sysid})"


def service_lines(cluster: Cluster) -> list[str]:
    """The footer of the pretty table: maintenance mode and a scheduled switchover."""
    lines = []
    if cluster.paused:
        lines.append("Maintenance mode: on")
    fo = cluster.failover or {}
    if fo.get("scheduled_at"):
        lines.append(f"Switchover scheduled at: {fo['scheduled_at']}")
        if fo.get("leader"):
            lines.append(f"                    from: {fo['leader']}")
        if fo.get("member"):
            lines.append(f"                      to: {fo['member']}")
    return lines


def history_rows(cluster: Cluster) -> list[list[Any]]:
    rows = []
    for entry in cluster.history:
        if isinstance(entry, list) and entry:
            rows.append((list(entry) + [""] * 5)[:5])
    return rows


# -- choosing members --------------------------------------------------------------------------


def leader_is_standby(cluster: Cluster) -> bool:
    leader = cluster.leader_member()
    return is_standby_cluster(cluster) or (leader is not None and leader.role == "standby_leader")


def members_with_role(cluster: Cluster, role: str) -> list[Member]:
    """Members matching a role filter (ROLE_FILTERS), in name order."""
    leader = cluster.leader_member()
    if role in ("leader", "primary", "standby-leader"):
        if leader is None:
            return []
        if role == "primary" and leader_is_standby(cluster) or role == "standby-leader" \
                and not leader_is_standby(cluster):
            return []
        return [leader]
    members = sorted_members(cluster)
    if role in ("replica", "standby"):
        return [m for m in members if leader is None or m.name != leader.name]
    return members


def leader_first(cluster: Cluster) -> list[Member]:
    """Members that publish an api_url, the leader first: whom to ask for a cluster-wide change."""
    leader = cluster.leader_member()
    first = [leader] if leader is not None and leader.api_url else []
    return first + [m for m in sorted_members(cluster) if m.api_url and m not in first]


def conn_params(member: Member) -> dict[str, Any]:
    """libpq parameters from the member's conn_url (host, port, dbname)."""
    params: dict[str, Any] = {}
    if member.conn_url:
        parts = urlsplit(member.conn_url)
        if parts.hostname:
            params["host"] = parts.hostname
        params["port"] = parts.port or 5432
        if parts.path.strip("/"):
            params["dbname"] = parts.path.strip("/")
    return params


def dsn(member: Member) -> str:
    params = conn_params(member)
    return " ".join(f"{k}={params[k]}" for k in ("host", "port") if k in params)
