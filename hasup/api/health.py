"""The generic health check: an HTTP status code from path, query and snapshot (docs/rest-api.md).

Load balancers call these paths every few seconds; the answer comes from the
snapshot alone, so it stays fast when PostgreSQL or etcd do not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from hasup import timing
from hasup.api import status as st
from hasup.timing import PG_STATE_MAX_AGE, SNAPSHOT_MAX_AGE

OK = 200
UNAVAILABLE = 503


# PostgreSQL's memory units, as Patroni's lag parameter takes them (1024-based).
_LAG_UNITS = {"B": 1, "kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}
# Patroni reads the number with strtod when it has a fraction or an exponent ("1.5MB", "1e6").
_LAG_RE = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*$")
_LAG_TEXT_MAX = 100  # characters; a longer value is not a lag anyone means
_LAG_NEGATIVE_INFINITY = -(2 ** 64)  # below any difference of two WAL positions: always lagging


def parse_lag(value: str | None) -> int | None:
    """Bytes of tolerated lag; None (unlimited) when absent or unparsable.

    A fraction or exponent goes through a float as in Patroni; one that
    overflows it (1e400) is unlimited, or, negative, a lag no replica meets.
    """
    if value is None or len(value) > _LAG_TEXT_MAX:
        return None
    m = _LAG_RE.match(value)
    if not m:
        return None
    unit = m.group(2) or "B"
    if unit not in _LAG_UNITS:
        return None
    number = m.group(1)
    if "." in number or "e" in number or "E" in number:
        scaled = float(number) * _LAG_UNITS[unit]
        if math.isinf(scaled):
            return None if scaled > 0 else _LAG_NEGATIVE_INFINITY
        return int(round(scaled))
    return int(number) * _LAG_UNITS[unit]


def _first(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _replica_code(query: Mapping[str, list[str]], snap: st.Snap, status: Mapping[str, Any],
                  fresh: Mapping[str, Any] | None) -> int:
    xlog = status.get("xlog") or {}
    replayed = xlog.get("replayed_location") or 0
    # The leader's position: the last optime it published, or what our walreceiver
    # already holds (a lower bound of it), whichever is further.
    leader_optime = max((fresh or {}).get("optime") or 0, xlog.get("received_location") or 0)
    lag = parse_lag(_first(query, "lag"))
    lagging = lag is not None and leader_optime > replayed + lag
    wanted_state = _first(query, "replication_state")
    identity = snap.get("identity") or {}
    if (identity.get("noloadbalance") or lagging or status.get("role") != "replica"
            or status.get("state") != "running"
            or (wanted_state is not None and status.get("replication_state") != wanted_state)):
        return UNAVAILABLE
    return OK


def _leader_codes(snap: st.Snap, status: Mapping[str, Any], fresh: Mapping[str, Any] | None,
                  now: float) -> tuple[int, int, int]:
    """(leader, primary, standby_leader) codes."""
    role = status.get("role")
    if fresh is None and st.is_paused(snap):
        # Paused and etcd out of reach: nothing moves, so PostgreSQL's own role is the truth.
        leader = OK if role in ("primary", "standby_leader") else UNAVAILABLE
        return (leader, OK if role == "primary" else UNAVAILABLE,
                OK if role == "standby_leader" else UNAVAILABLE)
    if st.holds_lock(snap, now):
        if st.is_standby_cluster(st.cluster_view(snap)):
            standby = OK if role in ("replica", "standby_leader") else UNAVAILABLE
            return OK, UNAVAILABLE, standby
        return OK, OK, UNAVAILABLE
    return UNAVAILABLE, UNAVAILABLE, UNAVAILABLE


def _tags_match(query: Mapping[str, list[str]], snap: st.Snap) -> bool:
    tags = st.effective_tags(snap)
    for key, values in query.items():
        if not key.startswith("tag_") or not values:
            continue
        name = key[4:]
        if name not in tags:
            return False
        configured = tags[name]
        expected = configured if isinstance(configured, str) else str(configured).lower()
        if values[0] != expected:
            return False
    return True


def view_max_age(snap: st.Snap) -> float:
    ttl = float(snap.get("ttl") or 30)
    return timing.view_max_age(ttl, float(snap.get("loop_wait") or 10), float(snap.get("retry_timeout") or 10))


def stale(snap: st.Snap, now: float) -> bool:
    """The snapshot, its PgState or its ClusterView is too old to claim a role on."""
    produced = snap.get("produced_at") or 0
    if produced and now - produced > SNAPSHOT_MAX_AGE:
        return True
    pg = snap.get("pg")
    if isinstance(pg, dict) and (pg.get("probe_at") or 0) > 0 and now - pg["probe_at"] > PG_STATE_MAX_AGE:
        return True
    received = snap.get("received") or {}
    got_view = received.get("cluster") if isinstance(received, dict) else None
    return bool(got_view and now - got_view > view_max_age(snap))


def code_for(path: str, query: Mapping[str, list[str]], snap: st.Snap, status: Mapping[str, Any],
             now: float) -> int:
    """health_code with the status document already built (GET needs both)."""
    if path == "/":
        path = "/primary"
    fresh = st.fresh_view(snap, now)
    leader, primary, standby_leader = _leader_codes(snap, status, fresh, now)
    replica = _replica_code(query, snap, status, fresh)
    if stale(snap, now):
        leader = primary = standby_leader = replica = UNAVAILABLE

    leader_path = True
    if "standby_leader" in path or "standby-leader" in path:
        code = standby_leader
    elif "leader" in path:
        code = leader
    elif "master" in path or "primary" in path or "read-write" in path:
        code = primary
    else:
        leader_path = False
        code = _other_path_code(path, status, fresh, snap, replica, primary, standby_leader)

    if not leader_path and code == OK and not _tags_match(query, snap):
        code = UNAVAILABLE
    return code


def _other_path_code(path: str, status: Mapping[str, Any], fresh: Mapping[str, Any] | None,
                     snap: st.Snap, replica: int, primary: int, standby_leader: int) -> int:
    if "replica" in path:
        return replica
    if "read-only" in path and "sync" not in path and "quorum" not in path:
        return OK if OK in (primary, standby_leader) else replica
    if "health" in path:
        return OK if status.get("state") == "running" else UNAVAILABLE
    if fresh is None:
        return UNAVAILABLE
    name = (snap.get("identity") or {}).get("name")
    listed = name in st.sync_members(fresh)
    quorum = st.quorum_mode(fresh)
    sync_member, quorum_member = listed and not quorum, listed and quorum
    if path in ("/sync", "/synchronous") and sync_member:
        return replica
    if path == "/quorum" and quorum_member:
        return replica
    if path in ("/async", "/asynchronous") and not sync_member and not quorum_member:
        return replica
    if path == "/read-only-quorum":
        return OK if OK in (primary, standby_leader) else (replica if quorum_member else UNAVAILABLE)
    if path in ("/read-only-sync", "/read-only-synchronous"):
        return OK if OK in (primary, standby_leader) else (replica if sync_member else UNAVAILABLE)
    return UNAVAILABLE


def health_code(path: str, query: Mapping[str, list[str]], snap: st.Snap, now: float) -> int:
    """200 or 503 for a GET/HEAD/OPTIONS on path, as Patroni's generic health check answers.

    now is monotonic; it decides whether the leader lock and the etcd view still count.
    """
    return code_for(path, query, snap, st.build_status(snap, now), now)


# -- /liveness and /readiness (docs/rest-api.md) ---------------------------------------


def liveness_code(snap: st.Snap, now: float) -> int:
    """200 while the api's reader thread turns and election reported recently.

    Election publishes a view every cycle, so its age plays the part of
    Patroni's next_run: within ttl on a primary, 2*ttl otherwise.  Paused
    clusters are always live, as in Patroni.
    """
    if st.is_paused(snap):
        return OK
    produced = snap.get("produced_at") or 0
    if not produced or now - produced > SNAPSHOT_MAX_AGE:
        return UNAVAILABLE
    pg = snap.get("pg") if isinstance(snap.get("pg"), dict) else {}
    ttl = float(snap.get("ttl") or 30)
    threshold = ttl if (pg or {}).get("role") == "primary" else 2 * ttl
    received = snap.get("received") if isinstance(snap.get("received"), dict) else {}
    view = st.cluster_view(snap)
    last = (received or {}).get("cluster") or (view or {}).get("read_at") or (received or {}).get("start") or 0
    return OK if last and now - last < threshold else UNAVAILABLE


def readiness_code(query: Mapping[str, list[str]], snap: st.Snap, now: float) -> int:
    if st.holds_lock(snap, now) and not stale(snap, now):
        return OK
    status = st.build_status(snap, now)
    if stale(snap, now) or status.get("state") != "running" or status.get("replication_state") != "streaming":
        return UNAVAILABLE
    xlog = status.get("xlog") or {}
    fresh = st.fresh_view(snap, now)
    received = xlog.get("received_location")
    if fresh is None and received is None:
        # No view of the leader's position: only a leader that failsafe mode keeps leading vouches for us.
        return OK if st.failsafe_active(snap, now) else UNAVAILABLE
    leader_optime = max((fresh or {}).get("optime") or 0, received or 0)
    mode = _first(query, "mode")
    position = received if mode == "write" else xlog.get("replayed_location")
    lag = parse_lag(_first(query, "lag"))
    if lag is None:
        lag = int(snap.get("maximum_lag_on_failover") or 1048576)
    return OK if leader_optime - (position or 0) <= lag else UNAVAILABLE
