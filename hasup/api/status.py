"""Patroni's JSON documents (status, /cluster, /history, /config), built from a snapshot.

Pure functions of the snapshot dict (see snapshot.make_snapshot) and the
current monotonic time: no SQL and no etcd call, so they answer in
microseconds whatever PostgreSQL or etcd are doing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from hasup import PATRONI_COMPAT_VERSION, ipc
from hasup.config.standby import is_standby

# Patroni publishes these boolean tags only when they are set.
PREDEFINED_BOOL_TAGS = frozenset({"clonefrom", "nofailover", "noloadbalance", "nosync", "nostream"})
# PostgreSQL states in which Patroni runs its status query.
_QUERIED_STATES = frozenset({"running", "starting", "restarting"})

Snap = Mapping[str, Any]


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# -- what the snapshot says about the cluster view ------------------------------------


def cluster_view(snap: Snap) -> dict[str, Any] | None:
    """The last ClusterView, however old (None before the first)."""
    view = snap.get("cluster")
    return view if isinstance(view, dict) else None


def failsafe_active(snap: Snap, now: float) -> bool:
    """Failsafe mode holds on this node: it leads with every member's confirmation while etcd is gone,
    or its leader, cut off from etcd, pinged it within ttl (hasup.election.failsafe)."""
    until = (cluster_view(snap) or {}).get("failsafe_until")
    return isinstance(until, int | float) and not isinstance(until, bool) and until > now


def fresh_view(snap: Snap, now: float) -> dict[str, Any] | None:
    """The ClusterView if etcd was read less than ttl seconds ago, else None (Patroni's "no DCS view")."""
    view = cluster_view(snap)
    if view is None:
        return None
    read_at = view.get("read_at") or 0
    ttl = snap.get("ttl") or 30
    if read_at <= 0 or now - read_at > ttl:
        return None
    return view


def holds_lock(snap: Snap, now: float) -> bool:
    """This node holds the leader key and its last refresh still covers now (monotonic)."""
    view = cluster_view(snap)
    if view is None or not view.get("holds_lock"):
        return False
    return bool((view.get("lock_valid_until") or 0) > now)


def is_paused(snap: Snap) -> bool:
    view = cluster_view(snap)
    return bool(view and view.get("paused"))


def is_standby_cluster(view: Mapping[str, Any] | None) -> bool:
    return bool(view and is_standby(_dict(_dict(view.get("config")).get("standby_cluster"))))


def quorum_mode(view: Mapping[str, Any] | None) -> bool:
    return bool(view and _dict(view.get("config")).get("synchronous_mode") == "quorum")


def sync_members(view: Mapping[str, Any] | None) -> set[str]:
    """Names listed in the /sync key (a comma-separated string, or a list)."""
    if not view:
        return set()
    listed = _dict(view.get("sync")).get("sync_standby")
    if isinstance(listed, str):
        return {n.strip() for n in listed.split(",") if n.strip()}
    if isinstance(listed, list | tuple):
        return {str(n) for n in listed}
    return set()


def effective_tags(snap: Snap) -> dict[str, Any]:
    """Configured tags as Patroni publishes them: predefined booleans only when true."""
    tags = _dict(_dict(snap.get("identity")).get("tags"))
    return {k: v for k, v in tags.items() if k not in PREDEFINED_BOOL_TAGS or v}


# -- status JSON (GET /patroni and the health endpoints) ------------------------------


def pg_stale(pg: Mapping[str, Any], snap: Snap, now: float) -> bool:
    """The postgres worker's report is older than ttl: it says nothing about now.

    The postgres worker reports after every probe, and a silent one is
    restarted by its heartbeat long before ttl, so this is only a backstop.
    """
    probe_at = pg.get("probe_at") or 0
    return bool(probe_at > 0 and now - probe_at > (snap.get("ttl") or 30))


def _pg_fields(pg: Mapping[str, Any] | None, snap: Snap, now: float) -> dict[str, Any]:
    if pg is None:
        return {"state": "unknown", "role": "unknown"}
    state = str(pg.get("state") or "unknown")
    role = str(pg.get("role") or "unknown")
    if state in _QUERIED_STATES and (not pg.get("probe_ok") or pg_stale(pg, snap, now)):
        # Patroni reports a failed status query like this.
        return {"state": "unknown" if state == "running" else state, "role": role}
    if state not in _QUERIED_STATES:
        return {"state": state, "role": role}
    out: dict[str, Any] = {"state": state}
    if pg.get("postmaster_start_time") is not None:
        out["postmaster_start_time"] = pg["postmaster_start_time"]
    out["role"] = role
    if pg.get("server_version") is not None:
        out["server_version"] = pg["server_version"]
    if role == "primary":
        out["xlog"] = {"location": pg.get("wal_position")}
    else:
        replayed = pg.get("replayed_location")
        received = pg.get("received_location")
        out["xlog"] = {
            "received_location": received if received is not None else replayed,
            "replayed_location": replayed,
            "replayed_timestamp": pg.get("replayed_timestamp"),
            "paused": bool(pg.get("replay_paused")),
        }
    if pg.get("timeline") is not None:
        out["timeline"] = pg["timeline"]
    if role != "primary" and pg.get("replication_state"):
        out["replication_state"] = pg["replication_state"]
    if pg.get("replication"):
        out["replication"] = [dict(r) for r in pg["replication"]]
    return out


def build_status(snap: Snap, now: float) -> dict[str, Any]:
    """Patroni's status document (GET /patroni, and the health checks' body) from a snapshot, at monotonic
    time now."""
    pg = snap.get("pg") if isinstance(snap.get("pg"), dict) else None
    out = _pg_fields(pg, snap, now)
    view = cluster_view(snap)
    if out.get("role") == "replica" and holds_lock(snap, now) and is_standby_cluster(view):
        out["role"] = "standby_leader"  # as Patroni names the lock holder of a standby cluster
    fresh = fresh_view(snap, now)
    identity = _dict(snap.get("identity"))
    name = identity.get("name")
    if fresh is not None and out.get("role") == "replica" and name in sync_members(fresh):
        # As Patroni: only a replica is a synchronous or quorum standby (a new primary the key still lists is not).
        out["quorum_standby" if quorum_mode(fresh) else "sync_standby"] = True
    if is_paused(snap):
        out["pause"] = True
    if fresh is None or not fresh.get("leader"):
        out["cluster_unlocked"] = True
    out["dcs_last_seen"] = int(view.get("read_at_wall") or 0) if view else 0
    tags = effective_tags(snap)
    if tags:
        out["tags"] = tags
    if pg is not None and pg.get("sysid"):
        out["database_system_identifier"] = str(pg["sysid"])
    if pg is not None and pg.get("pending_restart"):
        out["pending_restart"] = True
    if view and isinstance(view.get("scheduled_restart"), dict):
        out["scheduled_restart"] = view["scheduled_restart"]
    if failsafe_active(snap, now):
        out["failsafe_mode_is_active"] = True
    if view and view.get("last_decision"):
        # hasup's own: why this node does (or does not do) what it does, e.g. not taking over.
        out["last_decision"] = str(view["last_decision"])
    watchdog = snap.get("watchdog")
    if isinstance(watchdog, dict) and watchdog.get("failed") and watchdog.get("mode") == "required":
        # Only a required watchdog that cannot run makes a node ineligible.
        out["watchdog_failed"] = True
    if isinstance(watchdog, dict) and watchdog.get("mode") not in (None, "off"):
        # hasup's own field (Patroni has none): what the device is doing, and why not when it is not.
        last_pet = watchdog.get("last_pet")
        out["watchdog"] = {
            "mode": watchdog.get("mode"), "armed": bool(watchdog.get("armed")), "timeout": watchdog.get("timeout"),
            "last_pet_age": round(now - last_pet, 3) if isinstance(last_pet, int | float) else None,
            "failed": bool(watchdog.get("failed")), "reason": watchdog.get("reason") or None,
        }
    protection = lease_protection(watchdog)
    if protection is not None:
        out["lease_protection"] = protection
    out["patroni"] = {"version": PATRONI_COMPAT_VERSION, "scope": identity.get("scope"), "name": name}
    return out


def lease_protection(watchdog: Any) -> dict[str, Any] | None:
    """hasup's own field: what stops PostgreSQL when the lease runs out unrenewed (device, software fence or
    none), how often the software fence killed it and when last (docs/operations.md, "The software fence")."""
    if not isinstance(watchdog, dict) or not watchdog.get("protection"):
        return None
    last = watchdog.get("last_fence")
    fences = watchdog.get("fences")
    return {
        "kind": str(watchdog["protection"]),
        "fences": fences if isinstance(fences, int) and not isinstance(fences, bool) and fences >= 0 else 0,
        "last_fence": datetime.fromtimestamp(last, UTC).isoformat(timespec="milliseconds")
        if isinstance(last, int | float) and not isinstance(last, bool) and 0 < last < 1e11 else None,
    }


# -- /cluster, /history, /config --------------------------------------------------------


def _member_json(name: str, data: Mapping[str, Any], *, is_leader: bool, standby: bool,
                 sync: set[str], quorum: bool, optime: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if is_leader:
        out["role"] = "standby_leader" if standby else "leader"
    elif name in sync:
        out["role"] = "quorum_standby" if quorum else "sync_standby"
    else:
        out["role"] = "replica"
    state = data.get("state", "unknown")
    if not is_leader and data.get("replication_state"):
        state = data["replication_state"]
    out["state"] = state
    out["api_url"] = data.get("api_url")
    conn_url = data.get("conn_url")
    if isinstance(conn_url, str) and conn_url:
        try:
            parsed = urlparse(conn_url)
            out["host"] = parsed.hostname
            out["port"] = parsed.port or 5432
        except ValueError:  # a malformed conn_url in etcd: leave host and port out
            pass
    if _int(data.get("timeline")) is not None:
        out["timeline"] = data["timeline"]
    for key in ("pending_restart", "pending_restart_reason", "scheduled_restart"):
        if data.get(key):
            out[key] = data[key]
    if _dict(data.get("tags")):
        out["tags"] = data["tags"]
    if not is_leader:
        for prefix, key in (("receive", "receive_lsn"), ("replay", "replay_lsn"), ("", "xlog_location")):
            lsn = _int(data.get(key))
            lsn_key = f"{prefix}_lsn" if prefix else "lsn"
            lag_key = f"{prefix}_lag" if prefix else "lag"
            out[lsn_key] = format_lsn(lsn) if lsn is not None else "unknown"
            out[lag_key] = max(optime - lsn, 0) if lsn is not None and optime is not None else "unknown"
    return out


def build_cluster(snap: Snap) -> dict[str, Any]:
    """The /cluster document, with Patroni's fields, from the last ClusterView."""
    identity = _dict(snap.get("identity"))
    view = cluster_view(snap)
    out: dict[str, Any] = {"members": [], "scope": identity.get("scope")}
    if view is None:
        return out
    members = _dict(view.get("members"))
    optime = _int(view.get("optime"))
    sync = sync_members(view)
    for name in sorted(members):
        out["members"].append(_member_json(
            name, _dict(members[name]), is_leader=name == view.get("leader"),
            standby=is_standby_cluster(view), sync=sync, quorum=quorum_mode(view), optime=optime))
    if view.get("paused"):
        out["pause"] = True
    failover = _dict(view.get("failover"))
    if failover.get("scheduled_at"):
        scheduled: dict[str, Any] = {"at": failover["scheduled_at"]}
        if failover.get("leader"):
            scheduled["from"] = failover["leader"]
        if failover.get("member"):
            scheduled["to"] = failover["member"]
        out["scheduled_switchover"] = scheduled
    return out


def build_history(snap: Snap) -> list[Any]:
    view = cluster_view(snap)
    history = view.get("history") if view else None
    return [list(h) if isinstance(h, list | tuple) else h for h in history] if history else []


def build_config(snap: Snap) -> dict[str, Any] | None:
    """The dynamic configuration, secrets redacted; None when etcd holds none (the caller answers 502)."""
    view = cluster_view(snap)
    config = view.get("config") if view else None
    if not isinstance(config, dict) or not config:
        return None
    redacted = ipc.redact(config)
    return redacted if isinstance(redacted, dict) else None
