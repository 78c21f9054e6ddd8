"""The generic health check as a table: every path in every node situation."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import pytest
from hypothesis import given
from hypothesis import strategies as s

from hasup import ipc
from hasup.api.health import health_code, parse_lag
from hasup.api.snapshot import Identity, make_snapshot

NOW = 1000.0  # monotonic "now" of every check below
MB = 1024 * 1024
OPTIME = 50 * MB


def pg_primary(**kw: Any) -> ipc.PgState:
    base: dict[str, Any] = dict(state="running", role="primary", data_dir_empty=False, probe_ok=True,
                                probe_at=NOW - 1, timeline=2, wal_position=OPTIME)
    base.update(kw)
    return ipc.PgState(**base)


def pg_replica(lag: int = 0, **kw: Any) -> ipc.PgState:
    base: dict[str, Any] = dict(state="running", role="replica", data_dir_empty=False, probe_ok=True,
                                probe_at=NOW - 1, timeline=2, received_location=OPTIME - lag,
                                replayed_location=OPTIME - lag, replication_state="streaming")
    base.update(kw)
    return ipc.PgState(**base)


def view(**kw: Any) -> ipc.ClusterView:
    base: dict[str, Any] = dict(read_at=NOW - 2, read_at_wall=1700000000.0, leader="other",
                                holds_lock=False, lock_valid_until=0.0, members={}, config={"ttl": 30},
                                history=(), optime=OPTIME, initialize="1", sync=None, failover=None,
                                paused=False)
    base.update(kw)
    return ipc.ClusterView(**base)


def leader_view(**kw: Any) -> ipc.ClusterView:
    return view(**{"leader": "me", "holds_lock": True, "lock_valid_until": NOW + 20, **kw})


def snap(pg: ipc.PgState | None, cluster: ipc.ClusterView | None, *, tags: dict[str, Any] | None = None,
         noloadbalance: bool = False) -> dict[str, Any]:
    ident = Identity(scope="main", name="me", api_url="http://me:8008/patroni", tags=tags or {},
                     noloadbalance=noloadbalance)
    return make_snapshot(ident, pg, cluster, None, now=NOW, now_wall=1700000002.0)


SCENARIOS: dict[str, dict[str, Any]] = {
    "leader primary": snap(pg_primary(), leader_view()),
    "replica streaming": snap(pg_replica(), view()),
    "replica lagging": snap(pg_replica(lag=10 * MB), view()),
    "stopped": snap(pg_replica(state="stopped"), view()),
    "probe failing": snap(pg_replica(probe_ok=False), view()),
    "no pg report yet": snap(None, view()),
    "no DCS view, primary": snap(pg_primary(), None),
    "stale DCS view, lock expired": snap(pg_primary(), leader_view(read_at=NOW - 60, lock_valid_until=NOW - 1)),
    "fresh view, lock expired": snap(pg_primary(), leader_view(lock_valid_until=NOW - 0.1)),
    "paused without DCS view, primary": snap(pg_primary(), view(read_at=NOW - 60, paused=True)),
    "paused without DCS view, replica": snap(pg_replica(), view(read_at=NOW - 60, paused=True)),
    "paused with DCS view, replica": snap(pg_replica(), view(paused=True)),
    "noloadbalance replica": snap(pg_replica(), view(), noloadbalance=True),
    "standby leader": snap(pg_replica(role="standby_leader"), leader_view(config={"standby_cluster": {"port": 1}})),
}

PATHS = ["/", "/primary", "/master", "/leader", "/read-write", "/replica", "/read-only", "/health",
         "/standby-leader", "/standby_leader", "/anything", "/patroni"]

# 1 = 200, 0 = 503, in PATHS order.
EXPECTED = {
    "leader primary":                   "1 1 1 1 1 0 1 1 0 0 0 0",
    "replica streaming":                "0 0 0 0 0 1 1 1 0 0 0 0",
    "replica lagging":                  "0 0 0 0 0 1 1 1 0 0 0 0",  # no lag= asked: lag is unlimited
    "stopped":                          "0 0 0 0 0 0 0 0 0 0 0 0",
    "probe failing":                    "0 0 0 0 0 0 0 0 0 0 0 0",
    "no pg report yet":                 "0 0 0 0 0 0 0 0 0 0 0 0",
    "no DCS view, primary":             "0 0 0 0 0 0 0 1 0 0 0 0",
    "stale DCS view, lock expired":     "0 0 0 0 0 0 0 1 0 0 0 0",
    "fresh view, lock expired":         "0 0 0 0 0 0 0 1 0 0 0 0",
    "paused without DCS view, primary": "1 1 1 1 1 0 1 1 0 0 0 0",
    "paused without DCS view, replica": "0 0 0 0 0 1 1 1 0 0 0 0",
    "paused with DCS view, replica":    "0 0 0 0 0 1 1 1 0 0 0 0",
    "noloadbalance replica":            "0 0 0 0 0 0 0 1 0 0 0 0",
    "standby leader":                   "0 0 0 1 0 0 1 1 1 1 0 0",  # role standby_leader is not "running replica"
}


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
@pytest.mark.parametrize("path_index", range(len(PATHS)))
def test_health_table(scenario: str, path_index: int) -> None:
    path = PATHS[path_index]
    want = 200 if EXPECTED[scenario].split()[path_index] == "1" else 503
    assert health_code(path, {}, SCENARIOS[scenario], NOW) == want, f"{scenario} {path}"


def code(path_and_query: str, scenario: str, now: float = NOW) -> int:
    path, _, query = path_and_query.partition("?")
    return health_code(path, parse_qs(query), SCENARIOS[scenario], now)


@pytest.mark.parametrize("url, scenario, want", [
    ("/replica?lag=1MB", "replica lagging", 503),
    ("/replica?lag=10MB", "replica lagging", 200),
    ("/replica?lag=20971520", "replica lagging", 200),
    ("/replica?lag=1048576", "replica lagging", 503),
    ("/read-only?lag=1MB", "replica lagging", 503),
    ("/read-only?lag=1MB", "leader primary", 200),  # the primary passes read-only whatever lag says
    ("/replica?lag=nonsense", "replica lagging", 200),  # unparsable: unlimited
    ("/replica?lag=0", "replica streaming", 200),
    ("/replica?replication_state=streaming", "replica streaming", 200),
    ("/replica?replication_state=in%20archive%20recovery", "replica streaming", 503),
    ("/health?lag=1MB", "replica lagging", 200),
])
def test_lag_and_replication_state(url: str, scenario: str, want: int) -> None:
    assert code(url, scenario) == want


def test_walreceiver_position_counts_as_leader_optime_without_dcs() -> None:
    behind = snap(pg_replica(received_location=OPTIME, replayed_location=OPTIME - 5 * MB), None)
    assert health_code("/replica", {"lag": ["1MB"]}, behind, NOW) == 503
    assert health_code("/replica", {"lag": ["8MB"]}, behind, NOW) == 200


TAGS = {"zone": "a", "priority": 3, "flag": True, "nofailover": False, "clonefrom": True}


@pytest.mark.parametrize("url, want", [
    ("/replica?tag_zone=a", 200),
    ("/replica?tag_zone=b", 503),
    ("/replica?tag_priority=3", 200),
    ("/replica?tag_flag=true", 200),
    ("/replica?tag_flag=True", 503),  # non-string tags compare as lowercase strings
    ("/replica?tag_clonefrom=true", 200),
    ("/replica?tag_nofailover=false", 503),  # false predefined tags are not published
    ("/replica?tag_missing=x", 503),
    ("/replica?tag_zone=a&tag_priority=3", 200),
    ("/replica?tag_zone=a&tag_priority=4", 503),
    ("/read-only?tag_zone=b", 503),
    ("/health?tag_zone=b", 503),
    ("/anything?tag_zone=a", 503),  # tags never turn a 503 into a 200
])
def test_tag_filters_on_replica(url: str, want: int) -> None:
    path, _, query = url.partition("?")
    assert health_code(path, parse_qs(query), snap(pg_replica(), view(), tags=TAGS), NOW) == want


@pytest.mark.parametrize("path", ["/", "/primary", "/leader", "/read-write", "/master"])
def test_tag_filters_ignored_on_leader_paths(path: str) -> None:
    leader = snap(pg_primary(), leader_view(), tags=TAGS)
    assert health_code(path, {"tag_zone": ["b"]}, leader, NOW) == 200


def at(snapshot: dict[str, Any], t: float) -> dict[str, Any]:
    """snapshot as if rendered at t from a PgState probed just before: only the view ages."""
    pg = snapshot["pg"] and {**snapshot["pg"], "probe_at": t - 1}
    return {**snapshot, "produced_at": t, "pg": pg}


def test_lock_validity_is_judged_at_the_given_time() -> None:
    leader = SCENARIOS["leader primary"]
    assert health_code("/primary", {}, at(leader, NOW + 19), NOW + 19) == 200
    assert health_code("/primary", {}, at(leader, NOW + 21), NOW + 21) == 503


def test_view_older_than_ttl_is_missing() -> None:
    short = snap(pg_replica(), view(config={"ttl": 30}, read_at=NOW - 25, paused=True))
    assert health_code("/primary", {}, short, NOW) == 503  # view still fresh: the lock decides
    assert health_code("/primary", {}, at(short, NOW + 10), NOW + 10) == 503  # stale and paused: role decides
    primary = snap(pg_primary(), view(config={"ttl": 30}, read_at=NOW - 25, paused=True))
    assert health_code("/primary", {}, primary, NOW) == 503
    assert health_code("/primary", {}, at(primary, NOW + 10), NOW + 10) == 200


def test_stale_postgres_report_is_unknown() -> None:
    old = snap(pg_replica(probe_at=NOW - 120), view())
    assert health_code("/replica", {}, old, NOW) == 503
    assert health_code("/health", {}, old, NOW) == 503


@pytest.mark.parametrize("path, sync, want", [
    ("/sync", {"leader": "other", "sync_standby": "me"}, 200),
    ("/synchronous", {"leader": "other", "sync_standby": "x,me"}, 200),
    ("/sync", {"leader": "other", "sync_standby": "x"}, 503),
    ("/async", {"leader": "other", "sync_standby": "x"}, 200),
    ("/asynchronous", {"leader": "other", "sync_standby": "me"}, 503),
    ("/read-only-sync", {"leader": "other", "sync_standby": "me"}, 200),
    ("/read-only-sync", {"leader": "other", "sync_standby": "x"}, 503),
    ("/quorum", {"leader": "other", "sync_standby": "me"}, 503),  # not in quorum mode
])
def test_sync_paths(path: str, sync: dict[str, Any], want: int) -> None:
    assert health_code(path, {}, snap(pg_replica(), view(sync=sync)), NOW) == want


def test_sync_paths_need_a_dcs_view() -> None:
    stale = snap(pg_replica(), view(sync={"sync_standby": "me"}, read_at=NOW - 100))
    assert health_code("/sync", {}, stale, NOW) == 503
    assert health_code("/async", {}, stale, NOW) == 503


def test_quorum_mode_paths() -> None:
    quorum = snap(pg_replica(), view(sync={"sync_standby": "me"}, config={"synchronous_mode": "quorum"}))
    assert health_code("/quorum", {}, quorum, NOW) == 200
    assert health_code("/read-only-quorum", {}, quorum, NOW) == 200
    assert health_code("/sync", {}, quorum, NOW) == 503
    assert health_code("/async", {}, quorum, NOW) == 503


def test_empty_snapshot_is_unhealthy_everywhere() -> None:
    for path in PATHS:
        assert health_code(path, {}, {}, NOW) == 503


@pytest.mark.parametrize("text, want", [
    (None, None), ("", None), ("abc", None), ("10XB", None), ("1kb", None),
    ("0", 0), ("1024", 1024), ("1B", 1), ("1kB", 1024), ("16MB", 16 * MB), (" 16 MB ", 16 * MB),
    ("1.5MB", 3 * MB // 2), ("1GB", 1024 * MB), ("2TB", 2 * 1024 * 1024 * MB),
])
def test_parse_lag(text: str | None, want: int | None) -> None:
    assert parse_lag(text) == want


@given(s.integers(min_value=0, max_value=2 ** 40), s.sampled_from(["", "B", "kB", "MB", "GB", "TB"]))
def test_parse_lag_scales_by_unit(n: int, unit: str) -> None:
    scale = {"": 1, "B": 1, "kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}[unit]
    assert parse_lag(f"{n}{unit}") == n * scale
