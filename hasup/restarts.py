"""POST /restart and POST /reinitialize: validating a request and judging it against the node (pure).

The api validates the body (parse_restart, parse_reinitialize) and passes
the parameters to election, which judges them against what it knows of
PostgreSQL and the cluster (restart_refusal, reinitialize_refusal) and
carries the action out.  Messages and codes are Patroni's (docs/rest-api.md),
so existing tooling keeps matching on them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hasup.ipc import PgState

Result = tuple[int, str]

RESTART_KEYS = frozenset({"schedule", "role", "postgres_version", "timeout", "restart_pending"})
ROLES = ("primary", "standby_leader", "replica")
_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?\s*$")



def parse_schedule(value: Any, now: datetime, action: str = "switchover") -> tuple[datetime | None, Result | None]:
    """(when, None) or (None, the error to answer) for a scheduled switchover or restart."""
    try:
        when = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return None, (422, "Unable to parse scheduled timestamp. It should be in an unambiguous format, "
                           "e.g. ISO 8601")
    if when.tzinfo is None:
        return None, (400, f"Timezone information is mandatory for the scheduled {action}")
    if when < now:
        return None, (422, f"Cannot schedule {action} in the past")
    return when, None


def version_number(text: str) -> int | None:
    """'15.4' -> 150004, '9.6.24' -> 90624 (server_version_num); None when it is not a version."""
    m = _VERSION.match(text)
    if m is None:
        return None
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if major >= 10:
        # From 10 on the second number is the minor release; a third one is not a thing.
        return None if m.group(3) is not None else major * 10000 + minor
    return major * 10000 + minor * 100 + patch


def parse_restart(body: Mapping[str, Any], now: datetime, paused: bool) -> tuple[dict[str, Any], Result | None]:
    """The restart parameters election needs, or the error to answer."""
    params: dict[str, Any] = {}
    for key in body:
        if key not in RESTART_KEYS:
            return {}, (400, f"Unknown filter for the scheduled restart: {key}")
    if "role" in body:
        role = "primary" if body["role"] == "master" else body["role"]
        if role not in ROLES:
            return {}, (400, "PostgreSQL role should be either primary, standby_leader, or replica")
        params["role"] = role
    if "postgres_version" in body:
        number = version_number(str(body["postgres_version"]))
        if number is None:
            return {}, (400, f"{body['postgres_version']!r} is not a PostgreSQL version (X.Y, or X.Y.Z before 10)")
        params["postgres_version"] = str(body["postgres_version"]).strip()
    if "timeout" in body:
        timeout = body["timeout"]
        try:
            seconds = float(timeout) if not isinstance(timeout, bool) else -1.0
        except (TypeError, ValueError):
            seconds = -1.0
        if not seconds > 0:
            return {}, (400, "Timeout should be a positive number of seconds")
        params["timeout"] = seconds
    if "restart_pending" in body:
        params["restart_pending"] = True
    if body.get("schedule"):
        if paused:
            return {}, (500, "Can't schedule restart in the paused state")
        when, error = parse_schedule(body["schedule"], now, "restart")
        if error is not None or when is None:
            return {}, error or (422, "Unable to parse scheduled timestamp")
        params["schedule"] = when.isoformat()
    return params, None


def node_role(pg: PgState | None, holds_lock: bool) -> str:
    """The role the restart filter compares with."""
    if pg is not None and pg.role == "primary" and holds_lock:
        return "primary"
    return "replica"


def conditions_met(params: Mapping[str, Any], pg: PgState | None, holds_lock: bool) -> bool:
    """Whether role, postgres_version and restart_pending allow this node to restart now."""
    if "role" in params and params["role"] != node_role(pg, holds_lock):
        return False
    if "postgres_version" in params:
        wanted = version_number(str(params["postgres_version"]))
        running = pg.server_version if pg is not None else None
        # Restart only a server older than the requested version (an upgrade waiting for the restart).
        if wanted is None or running is None or running >= wanted:
            return False
    if params.get("restart_pending") and not (pg is not None and pg.pending_restart):
        return False
    return True


def restart_refusal(params: Mapping[str, Any], pg: PgState | None, holds_lock: bool, busy: str) -> Result | None:
    """None when an immediate restart may start now, else the answer."""
    if busy:
        return 503, f"{busy} already in progress"
    if pg is None or pg.data_dir_empty:
        return 503, "restart conditions are not satisfied"
    if pg.state == "starting":
        return 503, "postgres is still starting"
    if not conditions_met(params, pg, holds_lock):
        return 503, "restart conditions are not satisfied"
    return None


def schedule_due(scheduled: Mapping[str, Any], now_wall: float) -> bool:
    try:
        return datetime.fromisoformat(str(scheduled["schedule"])).timestamp() <= now_wall
    except (KeyError, ValueError):
        return True  # unreadable: run it rather than keep it forever


def parse_reinitialize(body: Mapping[str, Any]) -> dict[str, Any]:
    # Patroni's code reads from_leader while its docs say from-leader: take either.
    return {"force": bool(body.get("force")),
            "from_leader": bool(body.get("from_leader", body.get("from-leader", False)))}


def reinitialize_refusal(leader: str | None, holds_lock: bool, busy: str, force: bool) -> Result | None:
    if leader is None:
        return 503, "Cluster has no leader, can not reinitialize"
    if holds_lock:
        return 503, "I am the leader, can not reinitialize"
    if busy and not force:
        return 503, f"{busy} already in progress"
    return None
