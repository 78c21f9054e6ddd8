"""GET /metrics: Patroni's Prometheus metrics (docs/rest-api.md, "Metrics"), from the snapshot.

A prometheus_client collector turns the status document into metric
families; every sample carries {scope, name}.  prometheus_client names a
counter family `<name>_total` in its HELP/TYPE lines, while Patroni's
counters (patroni_xlog_location and friends) keep their bare names there:
render() puts the bare names back, so dashboards built on Patroni match.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from hasup import PATRONI_COMPAT_VERSION
from hasup.api import status as st

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Patroni's PostgresqlState strings and their fixed index (the value of patroni_postgres_state).
POSTGRES_STATES = (
    "initializing new cluster", "initdb failed", "running custom bootstrap script", "custom bootstrap failed",
    "creating replica", "running", "starting", "starting after custom bootstrap", "start failed",
    "restarting", "restart failed", "stopping", "stopped", "stop failed", "crashed",
)
STATE_VALUES = "# Values: " + ", ".join(f"{i}={s}" for i, s in enumerate(POSTGRES_STATES))
LEASE_PROTECTION = {"device": 2, "software fence": 1, "none": 0}
_COUNTERS = ("patroni_xlog_location", "patroni_xlog_received_location", "patroni_xlog_replayed_location")


def version_number(version: str) -> int:
    """4.1.4 -> 40104: every dotted part zero-padded to two digits."""
    parts = [re.sub(r"\D.*", "", p) or "0" for p in version.split(".")[:3]]
    parts += ["0"] * (3 - len(parts))
    return int("".join(f"{int(p):02d}" for p in parts))


def _epoch(value: Any) -> float:
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0


def _flag(value: Any) -> int:
    return 1 if value else 0


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _supervisor(snap: st.Snap) -> Mapping[str, Any]:
    """What the supervisor itself reports (hasup.workers.api renders it from ipc.LogLoss)."""
    value = snap.get("supervisor")
    return value if isinstance(value, Mapping) else {}


def values(snap: st.Snap, now: float) -> list[tuple[str, str, str, float]]:
    """(name, type, help, value) for every metric, in Patroni's order."""
    status = st.build_status(snap, now)
    role, state = status.get("role"), status.get("state")
    xlog = status.get("xlog") or {}
    primary, replica = role == "primary", role == "replica"
    view = st.cluster_view(snap) or {}
    config: dict[str, Any] = view["config"] if isinstance(view.get("config"), dict) else {}
    tags = st.effective_tags(snap)
    priority = 0 if tags.get("nofailover") else tags.get("failover_priority", 1)
    out: list[tuple[str, str, str, float]] = [
        ("patroni_version", "gauge", "Contract version hasup implements, two digits per part.",
         version_number(PATRONI_COMPAT_VERSION)),
        ("patroni_postgres_running", "gauge", "1 when PostgreSQL answers as running.",
         _flag(state == "running")),
        ("patroni_postmaster_start_time", "gauge", "Postmaster start, in Unix seconds.",
         _epoch(status.get("postmaster_start_time"))),
        ("patroni_primary", "gauge", "1 when this node runs as primary.", _flag(primary)),
        ("patroni_xlog_location", "counter", "Flushed WAL position in bytes on a primary, else 0.",
         (xlog.get("location") or 0) if primary else 0),
        ("patroni_standby_leader", "gauge", "1 when this node leads a standby cluster.",
         _flag(role == "standby_leader")),
        ("patroni_replica", "gauge", "1 when this node runs as replica.", _flag(replica)),
        ("patroni_sync_standby", "gauge", "1 when /sync names this node (synchronous mode).",
         _flag(status.get("sync_standby"))),
        ("patroni_quorum_standby", "gauge", "1 when /sync names this node (quorum mode).",
         _flag(status.get("quorum_standby"))),
        ("patroni_xlog_received_location", "counter", "Received WAL position in bytes on a replica, else 0.",
         (xlog.get("received_location") or 0) if not primary else 0),
        ("patroni_xlog_replayed_location", "counter", "Replayed WAL position in bytes on a replica, else 0.",
         (xlog.get("replayed_location") or 0) if not primary else 0),
        ("patroni_xlog_replayed_timestamp", "gauge", "Last replayed commit time, Unix seconds, 0 if none.",
         _epoch(xlog.get("replayed_timestamp"))),
        ("patroni_xlog_paused", "gauge", "1 while WAL replay is paused.",
         _flag(xlog.get("paused"))),
    ]
    server_version = status.get("server_version") or 0
    if not server_version or server_version >= 90600:
        replication_state = status.get("replication_state")
        out += [
            ("patroni_postgres_streaming", "gauge", "1 while the WAL receiver streams.",
             _flag(replication_state == "streaming")),
            ("patroni_postgres_in_archive_recovery", "gauge", "1 while recovering from the WAL archive.",
             _flag(replication_state == "in archive recovery")),
        ]
    state_index = POSTGRES_STATES.index(state) if state in POSTGRES_STATES else -1
    out += [
        ("patroni_postgres_server_version", "gauge", "server_version_num of the running server, else 0.",
         server_version),
        ("patroni_cluster_unlocked", "gauge", "1 when no leader key is known.",
         _flag(status.get("cluster_unlocked"))),
        ("patroni_failsafe_mode_is_active", "gauge", "1 while failsafe mode holds on this node.",
         _flag(status.get("failsafe_mode_is_active"))),
        ("patroni_failsafe_mode_enabled", "gauge", "1 when the cluster configuration turns failsafe mode on.",
         _flag(str(config.get("failsafe_mode", "")).lower() in ("true", "on", "yes", "1"))),
        ("patroni_failsafe_member", "gauge", "1 when this node is in the failsafe member list.", 0),
        ("patroni_postgres_timeline", "gauge", "Timeline of the running server, else 0.",
         status.get("timeline") or 0),
        ("patroni_dcs_last_seen", "gauge", "Unix time of the last successful etcd read.",
         status.get("dcs_last_seen") or 0),
        ("patroni_pending_restart", "gauge", "1 when a changed setting waits for a restart.",
         _flag(status.get("pending_restart"))),
        ("patroni_is_paused", "gauge", "1 while the cluster is paused (maintenance mode).",
         _flag(status.get("pause"))),
        ("patroni_postgres_state", "gauge", "PostgreSQL state as its index in the list above; -1 if unknown.",
         state_index),
        ("patroni_failover_priority", "gauge", "Failover priority of this node; 0 means it never takes over.",
         priority if isinstance(priority, int) else 1),
        # hasup's own (docs/design.md §8, §11): corrupt etcd values ignored, election cycles that failed, lost logs.
        ("hasup_dcs_bad_values_total", "counter", "etcd values rejected by the boundary checks (ignored).",
         _count(view.get("dcs_bad_values"))),
        ("hasup_election_cycle_errors_total", "counter", "Election cycles ended by an unexpected error.",
         _count(view.get("cycle_errors"))),
        ("hasup_log_records_lost_total", "counter", "Log records lost: dropped by a worker whose pipe to the "
         "supervisor was full, or not written by the supervisor's log writer.", _count(_supervisor(snap).get(
             "log_records_lost"))),
        ("hasup_rest_api_unprotected", "gauge", "1 when this REST API is reachable from other hosts without "
         "authentication, an allowlist or required client certificates.",
         _flag((snap.get("identity") or {}).get("rest_unprotected"))),
    ]
    protection = status.get("lease_protection") or {}
    last_fence = protection.get("last_fence")
    out += [
        ("hasup_lease_protection", "gauge", "What stops PostgreSQL when the leader lease runs out unrenewed: "
         "2=device (the software fence first), 1=software fence, 0=none, -1=not reported yet.",
         LEASE_PROTECTION.get(str(protection.get("kind")), -1)),
        ("hasup_software_fences_total", "counter", "Times the watchdog worker killed PostgreSQL because the "
         "leader lease ran out unrenewed (since that worker started).", _count(protection.get("fences"))),
        ("hasup_software_fence_last_seconds", "gauge", "Unix time of the software fence's last kill, 0 if none.",
         _epoch(last_fence)),
    ]
    return out


class SnapshotCollector:
    """A prometheus_client collector over one snapshot."""

    def __init__(self, snap: st.Snap, now: float) -> None:
        self.snap, self.now = snap, now

    def collect(self) -> Iterator[Metric]:
        identity: Mapping[str, Any] = self.snap.get("identity") or {}
        labels = {"scope": str(identity.get("scope") or ""), "name": str(identity.get("name") or "")}
        for name, kind, text, value in values(self.snap, self.now):
            # prometheus_client adds `_total` to a counter family's name itself.
            metric = Metric(name.removesuffix("_total") if kind == "counter" else name, text, kind)
            metric.add_sample(name, labels, float(value))
            yield metric


def render(snap: st.Snap, now: float) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap, now))
    text = generate_latest(registry).decode()
    for name in _COUNTERS:
        text = text.replace(f"# HELP {name}_total ", f"# HELP {name} ")
        text = text.replace(f"# TYPE {name}_total counter", f"# TYPE {name} counter")
    return text.replace("# HELP patroni_postgres_state ", STATE_VALUES + "\n# HELP patroni_postgres_state ", 1)
