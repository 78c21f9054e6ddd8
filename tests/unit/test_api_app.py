"""The falcon app and the JSON documents it serves, with a fake snapshot and falcon.testing."""

from __future__ import annotations

import json
from typing import Any, cast

import falcon
import falcon.testing
import pytest

from hasup import PATRONI_COMPAT_VERSION, ipc
from hasup.api import status as st
from hasup.api.app import INLINE_METHODS, INLINE_PATHS, ApiSettings, InlineAnswers, answers_inline, create_app
from hasup.api.snapshot import Identity, make_snapshot

NOW = 500.0
MB = 1024 * 1024
IDENT = Identity(scope="main", name="n1", api_url="http://10.0.0.1:8008/patroni",
                 tags={"zone": "a", "nofailover": False, "noloadbalance": False, "nosync": True})


def pg_primary(**kw: Any) -> ipc.PgState:
    base: dict[str, Any] = dict(
        state="running", role="primary", data_dir_empty=False, probe_ok=True, probe_at=NOW - 1,
        postmaster_start_time="2024-08-28 19:39:26.352526+00:00", server_version=160004,
        sysid="7412345678901234567", timeline=3, wal_position=0x3000060,
        replication=({"usename": "replicator", "application_name": "n2", "client_addr": "10.0.0.2",
                      "state": "streaming", "sync_state": "async", "sync_priority": 0},))
    base.update(kw)
    return ipc.PgState(**base)


def pg_replica(**kw: Any) -> ipc.PgState:
    base: dict[str, Any] = dict(
        state="running", role="replica", data_dir_empty=False, probe_ok=True, probe_at=NOW - 1,
        server_version=160004, timeline=3, received_location=0x3000060, replayed_location=0x3000000,
        replayed_timestamp="2024-08-28 19:40:00+00:00", replay_paused=False,
        replication_state="streaming")
    base.update(kw)
    return ipc.PgState(**base)


MEMBERS = {
    "n2": {"conn_url": "postgres://10.0.0.2:5433/postgres", "api_url": "http://10.0.0.2:8008/patroni",
           "state": "running", "role": "replica", "xlog_location": 0x3000000, "receive_lsn": 0x3000000,
           "replay_lsn": 0x2FFFF00, "replication_state": "streaming", "timeline": 3},
    "n1": {"conn_url": "postgres://10.0.0.1/postgres", "api_url": "http://10.0.0.1:8008/patroni",
           "state": "running", "role": "primary", "xlog_location": 0x3000060, "timeline": 3,
           "tags": {"zone": "a"}},
    "n3": {"conn_url": "postgres://10.0.0.3:5432/postgres", "api_url": "http://10.0.0.3:8008/patroni",
           "state": "starting", "role": "replica", "pending_restart": True},
}


def view(**kw: Any) -> ipc.ClusterView:
    base: dict[str, Any] = dict(
        read_at=NOW - 1, read_at_wall=1700000000.75, leader="n1", holds_lock=True,
        lock_valid_until=NOW + 20, members=MEMBERS,
        config={"ttl": 30, "loop_wait": 10, "postgresql": {"parameters": {"max_connections": 100}}},
        history=((1, 25165984, "no recovery target specified", "2024-08-28T19:39:26+00:00", "n0"),),
        optime=0x3000060, initialize="7412345678901234567", sync=None, failover=None, paused=False)
    base.update(kw)
    return ipc.ClusterView(**base)


def snap(pg: ipc.PgState | None = None, cluster: ipc.ClusterView | None = None,
         watchdog: ipc.WatchdogState | None = None, identity: Identity = IDENT) -> dict[str, Any]:
    return make_snapshot(identity, pg, cluster, watchdog, now=NOW, now_wall=1700000001.0)


def client(snapshot: dict[str, Any]) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(lambda: snapshot, IDENT, clock=lambda: NOW))


# -- status JSON --------------------------------------------------------------------


def test_status_of_a_leading_primary() -> None:
    status = st.build_status(snap(pg_primary(), view()), NOW)
    assert status == {
        "state": "running",
        "postmaster_start_time": "2024-08-28 19:39:26.352526+00:00",
        "role": "primary",
        "server_version": 160004,
        "xlog": {"location": 0x3000060},
        "timeline": 3,
        "replication": [{"usename": "replicator", "application_name": "n2", "client_addr": "10.0.0.2",
                         "state": "streaming", "sync_state": "async", "sync_priority": 0}],
        "dcs_last_seen": 1700000000,
        "tags": {"zone": "a", "nosync": True},
        "database_system_identifier": "7412345678901234567",
        "patroni": {"version": PATRONI_COMPAT_VERSION, "scope": "main", "name": "n1"},
    }


def test_status_of_a_sync_replica_in_a_paused_cluster() -> None:
    cluster = view(leader="n2", holds_lock=False, paused=True, sync={"leader": "n2", "sync_standby": "n1"})
    status = st.build_status(snap(pg_replica(pending_restart=True), cluster), NOW)
    assert status["role"] == "replica"
    assert status["xlog"] == {"received_location": 0x3000060, "replayed_location": 0x3000000,
                              "replayed_timestamp": "2024-08-28 19:40:00+00:00", "paused": False}
    assert status["replication_state"] == "streaming"
    assert status["sync_standby"] is True and status["pause"] is True
    assert status["pending_restart"] is True
    assert "cluster_unlocked" not in status and "replication" not in status


def test_status_received_location_falls_back_to_replayed() -> None:
    status = st.build_status(snap(pg_replica(received_location=None), view(holds_lock=False)), NOW)
    assert status["xlog"]["received_location"] == 0x3000000


def test_status_without_dcs_view_or_leader_is_unlocked() -> None:
    assert st.build_status(snap(pg_primary(), None), NOW)["cluster_unlocked"] is True
    assert st.build_status(snap(pg_primary(), None), NOW)["dcs_last_seen"] == 0
    assert st.build_status(snap(pg_primary(), view(leader=None)), NOW)["cluster_unlocked"] is True
    stale = st.build_status(snap(pg_primary(), view(read_at=NOW - 100)), NOW)
    assert stale["cluster_unlocked"] is True and stale["dcs_last_seen"] == 1700000000


def test_status_of_a_stopped_or_unprobed_postgres() -> None:
    stopped = st.build_status(snap(pg_replica(state="stopped", role="replica"), view()), NOW)
    assert (stopped["state"], stopped["role"]) == ("stopped", "replica")
    assert "xlog" not in stopped and "timeline" not in stopped
    failing = st.build_status(snap(pg_primary(probe_ok=False), view()), NOW)
    assert (failing["state"], failing["role"]) == ("unknown", "primary")
    nothing = st.build_status(snap(None, None), NOW)
    assert (nothing["state"], nothing["role"]) == ("unknown", "unknown")
    assert nothing["patroni"]["name"] == "n1"


def test_status_watchdog_failed_only_when_required() -> None:
    def wd(mode: str, failed: bool) -> ipc.WatchdogState:
        return ipc.WatchdogState(mode=mode, armed=False, timeout=None, last_pet=None,
                                 lease_valid_until=None, failed=failed)
    assert st.build_status(snap(pg_primary(), view(), wd("required", True)), NOW)["watchdog_failed"] is True
    assert "watchdog_failed" not in st.build_status(snap(pg_primary(), view(), wd("automatic", True)), NOW)
    assert "watchdog_failed" not in st.build_status(snap(pg_primary(), view(), wd("required", False)), NOW)


def test_status_quorum_standby() -> None:
    cluster = view(leader="n2", holds_lock=False, sync={"leader": "n2", "sync_standby": "n1,n3"},
                   config={"synchronous_mode": "quorum"})
    status = st.build_status(snap(pg_replica(), cluster), NOW)
    assert status["quorum_standby"] is True and "sync_standby" not in status


# -- /cluster, /history, /config ------------------------------------------------------


def test_cluster_document() -> None:
    cluster = view(sync={"leader": "n1", "sync_standby": "n2"}, paused=True,
                   failover={"leader": "n1", "member": "n2", "scheduled_at": "2030-01-01T00:00:00+00:00"})
    doc = st.build_cluster(snap(pg_primary(), cluster))
    assert doc["scope"] == "main" and doc["pause"] is True
    assert doc["scheduled_switchover"] == {"at": "2030-01-01T00:00:00+00:00", "from": "n1", "to": "n2"}
    assert [m["name"] for m in doc["members"]] == ["n1", "n2", "n3"]
    n1, n2, n3 = doc["members"]
    assert n1 == {"name": "n1", "role": "leader", "state": "running", "api_url": "http://10.0.0.1:8008/patroni",
                  "host": "10.0.0.1", "port": 5432, "timeline": 3, "tags": {"zone": "a"}}
    assert n2 == {"name": "n2", "role": "sync_standby", "state": "streaming",
                  "api_url": "http://10.0.0.2:8008/patroni", "host": "10.0.0.2", "port": 5433, "timeline": 3,
                  "receive_lsn": "0/3000000", "receive_lag": 0x60, "replay_lsn": "0/2FFFF00",
                  "replay_lag": 0x160, "lsn": "0/3000000", "lag": 0x60}
    assert n3["role"] == "replica" and n3["state"] == "starting" and n3["pending_restart"] is True
    assert n3["lsn"] == n3["lag"] == n3["receive_lsn"] == n3["replay_lag"] == "unknown"


def test_cluster_lag_is_never_negative_and_unknown_without_optime() -> None:
    ahead = {"n2": {"conn_url": "postgres://h:1/p", "xlog_location": 0x4000000, "state": "running"}}
    doc = st.build_cluster(snap(None, view(members=ahead)))
    assert doc["members"][0]["lag"] == 0 and doc["members"][0]["lsn"] == "0/4000000"
    doc = st.build_cluster(snap(None, view(members=ahead, optime=None)))
    assert doc["members"][0]["lag"] == "unknown"


def test_cluster_without_a_view() -> None:
    assert st.build_cluster(snap(None, None)) == {"members": [], "scope": "main"}


def test_lsn_format() -> None:
    assert st.format_lsn(0) == "0/0"
    assert st.format_lsn(0x1_0000_00A0) == "1/A0"


def test_history_and_config_documents() -> None:
    assert st.build_history(snap(None, view())) == [
        [1, 25165984, "no recovery target specified", "2024-08-28T19:39:26+00:00", "n0"]]
    assert st.build_history(snap(None, view(history=()))) == []
    assert st.build_history(snap(None, None)) == []
    assert st.build_config(snap(None, view(config={}))) is None
    assert st.build_config(snap(None, None)) is None
    secret = view(config={"standby_cluster": {"host": "x", "password": "hunter2"}})
    assert st.build_config(snap(None, secret)) == {"standby_cluster": {"host": "x", "password": "******"}}


# -- the app -------------------------------------------------------------------------


LEADER = snap(pg_primary(), view())
REPLICA = snap(pg_replica(), view(leader="n2", holds_lock=False))


@pytest.mark.parametrize("path", ["/", "/primary", "/master", "/leader", "/read-write", "/read-only",
                                  "/health", "/primary/anything"])
def test_get_health_on_leader_is_200_with_status(path: str) -> None:
    result = client(LEADER).simulate_get(path)
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    assert result.json["role"] == "primary" and result.json["state"] == "running"


@pytest.mark.parametrize("path, want", [("/replica", 503), ("/standby-leader", 503), ("/standby_leader", 503),
                                        ("/whatever", 503), ("/nowhere/x", 503)])
def test_get_unhealthy_paths_on_leader_carry_the_status_too(path: str, want: int) -> None:
    result = client(LEADER).simulate_get(path)
    assert result.status_code == want
    assert result.json["patroni"]["scope"] == "main"


def test_get_replica_with_query() -> None:
    c = client(REPLICA)
    assert c.simulate_get("/replica").status_code == 200
    assert c.simulate_get("/replica", query_string="lag=10").status_code == 503
    assert c.simulate_get("/replica", query_string="lag=1MB").status_code == 200
    assert c.simulate_get("/replica", query_string="tag_zone=a").status_code == 200
    assert c.simulate_get("/replica", query_string="tag_zone=b").status_code == 503
    assert c.simulate_get("/primary").status_code == 503


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
@pytest.mark.parametrize("path, leader_code, replica_code", [
    ("/primary", 200, 503), ("/replica", 503, 200), ("/health", 200, 200), ("/read-only", 200, 200),
    ("/patroni", 503, 503), ("/cluster", 503, 503), ("/config", 503, 503), ("/nowhere", 503, 503),
])
def test_head_and_options_answer_the_code_without_body(method: str, path: str, leader_code: int,
                                                       replica_code: int) -> None:
    for snapshot, want in ((LEADER, leader_code), (REPLICA, replica_code)):
        result = client(snapshot).simulate_request(method, path)
        assert result.status_code == want, (method, path)
        assert result.content == b""


def test_get_patroni_is_always_200() -> None:
    for snapshot in (LEADER, REPLICA, snap(None, None)):
        result = client(snapshot).simulate_get("/patroni")
        assert result.status_code == 200
        assert result.json["patroni"] == {"version": PATRONI_COMPAT_VERSION, "scope": "main", "name": "n1"}


def test_get_cluster_and_history() -> None:
    c = client(LEADER)
    cluster = c.simulate_get("/cluster")
    assert cluster.status_code == 200 and [m["name"] for m in cluster.json["members"]] == ["n1", "n2", "n3"]
    history = c.simulate_get("/history")
    assert history.status_code == 200 and history.json[0][0] == 1
    empty = client(snap(None, None))
    assert empty.simulate_get("/history").json == []
    assert empty.simulate_get("/cluster").json == {"members": [], "scope": "main"}


def test_get_config() -> None:
    result = client(LEADER).simulate_get("/config")
    assert result.status_code == 200 and result.json["ttl"] == 30
    missing = client(snap(pg_primary(), view(config={}))).simulate_get("/config")
    assert missing.status_code == 502 and "error" in missing.json
    assert client(snap(None, None)).simulate_get("/config").status_code == 502


@pytest.mark.parametrize("method, path", [
    ("DELETE", "/reinitialize"), ("PUT", "/restart"), ("DELETE", "/failover"), ("POST", "/metrics"),
    ("POST", "/primary"), ("DELETE", "/nowhere"),
    ("POST", "/"), ("PUT", "/patroni"),
])
def test_unsupported_methods_are_501_json(method: str, path: str) -> None:
    result = client(LEADER).simulate_request(method, path, body="{}")
    assert result.status_code == 501
    assert result.json == {"error": f"Unsupported method ('{method}')"}


def test_snapshot_reader_failure_degrades_to_unknown() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    c = falcon.testing.TestClient(create_app(broken, IDENT, clock=lambda: NOW))
    result = c.simulate_get("/patroni")
    assert result.status_code == 200 and result.json["state"] == "unknown"
    assert c.simulate_get("/health").status_code == 503
    empty = falcon.testing.TestClient(create_app(dict, IDENT, clock=lambda: NOW))
    assert empty.simulate_get("/primary").status_code == 503


def test_clock_decides_lock_validity() -> None:
    times = [NOW]
    c = falcon.testing.TestClient(create_app(lambda: LEADER, IDENT, clock=lambda: times[0]))
    assert c.simulate_get("/primary").status_code == 200
    times[0] = NOW + 21  # past lock_valid_until
    assert c.simulate_get("/primary").status_code == 503


def test_internal_errors_are_json_500(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(snapshot: Any) -> Any:
        raise ValueError("bug")

    monkeypatch.setattr(st, "build_cluster", explode)
    result = client(LEADER).simulate_get("/cluster")
    assert result.status_code == 500 and result.json == {"error": "internal error"}


def test_no_secret_reaches_a_response() -> None:
    secret = "s3cr3t-pw"
    members = {"n2": {"conn_url": "postgres://10.0.0.2:5432/postgres", "api_url": "http://10.0.0.2/patroni",
                      "state": "running"}}
    cluster = view(members=members, config={"postgresql": {"parameters": {}}, "password": secret})
    c = client(snap(pg_primary(), cluster))
    for path in ("/patroni", "/cluster", "/config", "/history", "/primary", "/nowhere"):
        assert secret not in c.simulate_get(path).text, path
    assert json.loads(c.simulate_get("/config").text)["password"] == "******"


@pytest.mark.parametrize("path", ["/reload", "/switchover", "/failover", "/restart", "/reinitialize"])
def test_get_on_an_action_path_is_the_generic_health_check(path: str) -> None:
    result = client(LEADER).simulate_get(path)
    assert result.status_code == 503 and result.json["role"] == "primary"


# -- what the gunicorn worker may answer in its loop ---------------------------------------------


class _Untouchable:
    """An admin interface whose every use fails the request (the app answers 500 then)."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"admin.{name} used")


@pytest.mark.parametrize("path", sorted(p.decode() for p in INLINE_PATHS))
def test_inline_paths_answer_from_the_snapshot_alone(path: str) -> None:
    app = create_app(lambda: snap(pg_primary(), view()), IDENT, clock=lambda: NOW, admin=cast(Any, _Untouchable()))
    c = falcon.testing.TestClient(app)
    for method in sorted(INLINE_METHODS):
        assert c.simulate_request(method.decode(), path, query_string="lag=1MB").status_code in (200, 503)


def test_only_exact_snapshot_paths_with_safe_methods_are_inline() -> None:
    assert answers_inline(b"GET", b"/primary") and answers_inline(b"HEAD", b"/replica")
    assert answers_inline(b"OPTIONS", b"/") and answers_inline(b"GET", b"/metrics")
    for method, path in ((b"POST", b"/primary"), (b"get", b"/primary"), (b"GET", b"/cluster"), (b"GET", b"/config"),
                         (b"GET", b"/history"), (b"GET", b"/failsafe"), (b"GET", b"/%63luster"),
                         (b"GET", b"/primary/x"), (b"GET", b"//cluster"), (b"DELETE", b"/restart")):
        assert not answers_inline(method, path), (method, path)


# -- answers made without falcon (the gunicorn worker's fast path) ---------------------------------

QUERIES = ["", "lag=10", "lag=1MB", "tag_zone=a", "tag_zone=b", "replication_state=streaming", "lag=%31MB&x"]
SNAPSHOTS = {"leader": LEADER, "replica": REPLICA, "nothing": snap(None, None)}


@pytest.mark.parametrize("which", sorted(SNAPSHOTS))
@pytest.mark.parametrize("tls", [False, True])
def test_inline_answers_are_the_apps_answers(which: str, tls: bool) -> None:
    """Every path and method the loop may answer without falcon: the same status, headers and body."""
    snapshot = SNAPSHOTS[which]
    settings = ApiSettings(http_extra_headers={"X-Http": "1"}, https_extra_headers={"X-Https": "2"}, tls=tls)
    c = falcon.testing.TestClient(create_app(lambda: snapshot, IDENT, clock=lambda: NOW, settings=settings))
    inline = InlineAnswers(lambda: snapshot, IDENT, clock=lambda: NOW, settings=settings)
    compared = 0
    for path in sorted(INLINE_PATHS):
        for method in sorted(INLINE_METHODS):
            for query in QUERIES:
                want = c.simulate_request(method.decode(), path.decode(), query_string=query)
                got = inline(method, path, query.encode())
                assert got is not None, (method, path, query)
                code, headers, body = got
                where = (which, method, path, query)
                assert code == want.status_code, where
                assert body == want.content, where
                assert dict(headers) == {k: v for k, v in want.headers.items()}, where
                compared += 1
    assert compared == len(INLINE_PATHS) * len(INLINE_METHODS) * len(QUERIES)


@pytest.mark.parametrize("method, path", [(b"GET", b"/cluster"), (b"POST", b"/primary"), (b"GET", b"/primary/x"),
                                          (b"PATCH", b"/config"), (b"GET", b"/%70rimary")])
def test_inline_answers_leave_everything_else_to_the_app(method: bytes, path: bytes) -> None:
    assert InlineAnswers(lambda: LEADER, IDENT, clock=lambda: NOW)(method, path, b"") is None


def test_inline_answers_leave_a_failure_to_the_apps_error_handling() -> None:
    def broken_clock() -> float:
        raise RuntimeError("boom")

    assert InlineAnswers(lambda: LEADER, IDENT, clock=broken_clock)(b"GET", b"/primary", b"") is None
