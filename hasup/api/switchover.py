"""POST /switchover, POST /failover, DELETE /switchover: the API half (docs/rest-api.md, "Switchover and failover").

The API validates the request in Patroni's order, checks that some
candidate is healthy, writes the `failover` key and, for an immediate
request, watches etcd until the leader changes.  Executing it is election's
job (the leader reads the key and hands over).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from hasup.api.admin import Admin, DCSError
from hasup.dcs.model import Cluster, Member
from hasup.restarts import parse_schedule

POLL_INTERVAL = 0.25  # Patroni polls once a second; we want the call to return promptly

Result = tuple[int, str]


def _sync_mode(cluster: Cluster) -> str | None:
    """'sync', 'quorum' or None, from the cluster configuration."""
    value = (cluster.config or {}).get("synchronous_mode")
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered == "quorum":
            return "quorum"
        return "sync" if lowered in ("on", "true", "yes", "1") else None
    return "sync" if value is True else None


def _sync_names(cluster: Cluster) -> set[str]:
    listed = (cluster.sync or {}).get("sync_standby")
    if isinstance(listed, str):
        return {n.strip() for n in listed.split(",") if n.strip()}
    if isinstance(listed, list):
        return {str(n) for n in listed}
    return set()


def _healthy(admin: Admin, members: list[Member]) -> bool:
    if not members:
        return False
    with ThreadPoolExecutor(max_workers=min(8, len(members))) as pool:
        answers = list(pool.map(admin.fetch_status, members))
    return any(s is not None and not s.nofailover and not s.watchdog_failed for s in answers)


def feasibility(admin: Admin, cluster: Cluster, leader: str | None, candidate: str | None,
                action: str) -> Result | None:
    """None when the request can go ahead, else (412, why)."""
    current = cluster.leader.name if cluster.leader else None
    if leader and leader != current:
        return 412, "leader name does not match"
    mode = _sync_mode(cluster)
    if candidate:
        if action == "switchover" and mode == "sync" and candidate not in _sync_names(cluster):
            return 412, "candidate name does not match with sync_standby"
        members = [m for m in cluster.members.values() if m.name == candidate]
        if not members:
            return 412, "candidate does not exists"
    elif mode == "sync":
        members = [m for m in cluster.members.values() if m.name in _sync_names(cluster)]
        if not members:
            return 412, f"{action} is not possible: can not find sync_standby"
    else:
        members = [m for m in cluster.members.values() if m.name != current and m.api_url]
        if not members:
            return 412, f"{action} is not possible: cluster does not have members except leader"
    if not _healthy(admin, members):
        return 412, f"{action} is not possible: no good candidates have been found"
    return None


def request(admin: Admin, action: str, body: Mapping[str, Any], now: datetime) -> Result:
    """Handle POST /switchover or /failover with a parsed JSON object body."""
    leader = body.get("leader") or None
    candidate = body.get("candidate") or body.get("member") or None
    scheduled = body.get("scheduled_at") or None
    leader = str(leader) if leader is not None else None
    candidate = str(candidate) if candidate is not None else None
    try:
        cluster = admin.get_cluster()
    except DCSError:
        return 503, "failed to read the cluster from DCS"
    if action == "failover" and not candidate:
        return 400, "Failover could be performed only to a specific candidate"
    if action == "switchover" and not leader:
        return 400, "Switchover could be performed only from a specific leader"
    when: datetime | None = None
    if scheduled:
        if action == "failover":
            return 400, "Failover can't be scheduled"
        if cluster.paused:
            return 400, "Can't schedule switchover in the paused state"
        when, error = parse_schedule(scheduled, now)
        if error:
            return error
    if cluster.paused and not candidate:
        return 400, "Switchover is possible only to a specific candidate in a paused state"
    if action == "failover" and leader:
        action = "switchover"
    if leader and leader == candidate:
        return 400, "Switchover target and source are the same"
    if when is None:
        problem = feasibility(admin, cluster, leader, candidate, action)
        if problem:
            return problem
    value: dict[str, Any] = {}
    if leader:
        value["leader"] = leader
    if candidate:
        value["member"] = candidate
    if when is not None:
        value["scheduled_at"] = when.isoformat()
    try:
        written = admin.set_failover(value, cluster.failover_index or None)
    except DCSError:
        written = False
    if not written:
        return 503, "failed to write failover key into DCS"
    if when is not None:
        return 202, "Switchover scheduled"
    loop_wait = _loop_wait(cluster)
    return poll(admin, cluster.leader.name if cluster.leader else None, candidate, action,
                2 * max(10, loop_wait))


def _loop_wait(cluster: Cluster) -> int:
    value = (cluster.config or {}).get("loop_wait")
    try:
        return int(value) if value is not None else 10
    except (TypeError, ValueError):
        return 10


def poll(admin: Admin, old_leader: str | None, candidate: str | None, action: str, timeout: float) -> Result:
    """Watch etcd until the leader changes, the request vanishes, or timeout."""
    verb = "switched over" if action == "switchover" else "failed over"
    deadline = admin.clock() + timeout
    while True:
        admin.sleep(POLL_INTERVAL)
        try:
            cluster = admin.get_cluster()
        except DCSError:
            cluster = None
        if cluster is not None:
            new = cluster.leader.name if cluster.leader else None
            if new and new != old_leader:
                if not candidate or candidate == new:
                    return 200, f'Successfully {verb} to "{new}"'
                return 200, f'{verb[0].upper()}{verb[1:]} to "{new}" instead of "{candidate}"'
            if not cluster.failover:
                return 503, f"{action.capitalize()} failed"
        if admin.clock() >= deadline:
            return 503, (f"{action.capitalize()} status unknown after {int(timeout)} seconds; "
                         "operation may still be in progress")


def delete_scheduled(admin: Admin) -> Result:
    """DELETE /switchover."""
    try:
        cluster = admin.get_cluster()
    except DCSError:
        return 503, "failed to read the cluster from DCS"
    if not cluster.failover or not cluster.failover.get("scheduled_at"):
        return 404, "no switchover is scheduled"
    try:
        cleared = admin.clear_failover(cluster.failover_index or None)
    except DCSError:
        return 503, "failed to delete the scheduled switchover from DCS"
    if not cleared:
        return 409, "the scheduled switchover changed meanwhile; not deleted"
    return 200, "scheduled switchover deleted"


def utcnow() -> datetime:
    return datetime.now(UTC)
