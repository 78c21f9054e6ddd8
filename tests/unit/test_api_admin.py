"""Access control, /metrics, /liveness, /readiness and the admin endpoints, with a fake Admin."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import falcon.testing
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hasup.api import health, metrics
from hasup.api.access import AccessControl
from hasup.api.admin import DCSError, config_problems, patch_config
from hasup.api.app import ApiSettings, create_app
from hasup.dcs.model import Cluster, Leader, Member
from hasup.peers import PeerStatus
from hasup.restarts import parse_schedule
from tests.unit.test_api_app import IDENT, LEADER, NOW, REPLICA, pg_primary, pg_replica, snap, view

MEMBERS = {
    "n1": {"api_url": "http://10.0.0.1:8008/patroni", "conn_url": "postgres://10.0.0.1:5432/postgres",
           "state": "running", "role": "primary"},
    "n2": {"api_url": "http://10.0.0.2:8008/patroni", "conn_url": "postgres://10.0.0.2:5432/postgres",
           "state": "running", "role": "replica"},
}


def cluster(leader: str | None = "n1", config: dict[str, Any] | None = None,
            failover: dict[str, Any] | None = None, members: dict[str, Any] | None = None) -> Cluster:
    return Cluster(
        initialize="1", config={"ttl": 30, "loop_wait": 10, "retry_timeout": 10} if config is None else config,
        config_index=7, leader=Leader(leader, 5) if leader else None,
        members={n: Member(n, d) for n, d in (MEMBERS if members is None else members).items()},
        history=[[1, 100, "no recovery target specified", "2024-01-01T00:00:00+00:00", "n1"]],
        failover=failover, sync=None, optime=100, failover_index=9 if failover else 0)


class FakeAdmin:
    def __init__(self, c: Cluster | None = None) -> None:
        self.cluster = c or cluster()
        self.down = False
        self.cas_fails = False
        self.writes: list[tuple[str, Any, int | None]] = []
        self.healthy: dict[str, bool] = {"n1": True, "n2": True}
        self.after_write: list[Cluster] = []  # what get_cluster returns after a failover write
        self.reloads = 0
        self.operations: list[tuple[str, dict[str, Any]]] = []
        self.operation_answer = (200, "done")
        self.now = 0.0
        self.gate: threading.Event | None = None
        self.waiting = 0
        self.lock = threading.Lock()

    def get_cluster(self) -> Cluster:
        if self.gate is not None:
            with self.lock:
                self.waiting += 1
            self.gate.wait(5)
        if self.down:
            raise DCSError("etcd is down")
        if self.after_write and any(w[0] == "failover" for w in self.writes):
            self.cluster = self.after_write.pop(0) if len(self.after_write) > 1 else self.after_write[0]
        return self.cluster

    def set_config(self, config: dict[str, Any], index: int | None) -> bool:
        self.writes.append(("config", config, index))
        return not self.cas_fails

    def set_failover(self, value: dict[str, Any], index: int | None) -> bool:
        self.writes.append(("failover", value, index))
        return not self.cas_fails

    def clear_failover(self, index: int | None) -> bool:
        self.writes.append(("clear", None, index))
        return not self.cas_fails

    def fetch_status(self, member: Member) -> PeerStatus | None:
        if not self.healthy.get(member.name):
            return None
        return PeerStatus(member.name, "replica", "running", 100)

    def reload(self) -> None:
        self.reloads += 1

    def operate(self, action: str, params: dict[str, Any]) -> tuple[int, str]:
        self.operations.append((action, params))
        return self.operation_answer

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now


AUTH = "Basic " + base64.b64encode(b"admin:s3cr3t-pass").decode()


def client(snapshot: dict[str, Any] = LEADER, admin: FakeAdmin | None = None, **settings: Any,
           ) -> falcon.testing.TestClient:
    access = settings.pop("access", AccessControl("admin", "s3cr3t-pass"))
    app = create_app(lambda: snapshot, IDENT, clock=lambda: NOW, admin=admin,
                     settings=ApiSettings(access=access, **settings))
    return falcon.testing.TestClient(app)


def post(c: falcon.testing.TestClient, path: str, body: Any, method: str = "POST",
         auth: str | None = AUTH, remote: str = "127.0.0.1") -> falcon.testing.Result:
    headers = {"Authorization": auth} if auth else {}
    return c.simulate_request(method, path, body=json.dumps(body), headers=headers, remote_addr=remote)


# -- access control --------------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [("POST", "/switchover"), ("POST", "/failover"), ("PATCH", "/config"),
                                          ("PUT", "/config"), ("POST", "/reload"), ("DELETE", "/switchover"),
                                          ("POST", "/restart")])
def test_unsafe_endpoints_need_basic_auth(method: str, path: str) -> None:
    admin = FakeAdmin()
    c = client(admin=admin)
    missing = post(c, path, {}, method, auth=None)
    assert missing.status_code == 401 and missing.text == "no auth header received"
    assert missing.headers["www-authenticate"] == 'Basic realm="Patroni"'
    for wrong in ("Basic " + base64.b64encode(b"admin:nope").decode(), "Basic !!!", "Bearer x"):
        denied = post(c, path, {}, method, auth=wrong)
        assert denied.status_code == 401 and denied.text == "not authenticated", wrong
        assert "s3cr3t" not in denied.text
    assert admin.writes == [] and admin.reloads == 0


def test_safe_methods_never_need_auth() -> None:
    c = client(admin=FakeAdmin())
    for path in ("/primary", "/patroni", "/cluster", "/config", "/history", "/metrics", "/liveness"):
        assert c.simulate_get(path).status_code in (200, 503), path
    assert c.simulate_head("/primary").status_code == 200


def test_allowlist_and_members() -> None:
    members_only = AccessControl(None, None, (), include_members=True)
    c = client(snap(pg_primary(), view()), FakeAdmin(), access=members_only)
    assert post(c, "/reload", {}, remote="10.0.0.2").status_code == 202  # n2's api_url
    refused = post(c, "/reload", {}, remote="10.9.9.9")
    assert refused.status_code == 403 and refused.text == "Access is denied"
    cidr = AccessControl("admin", "s3cr3t-pass", ("192.168.0.0/16", "db.example"),
                         resolve=lambda host: ["172.16.0.5"] if host == "db.example" else [])
    c = client(admin=FakeAdmin(), access=cidr)
    assert post(c, "/reload", {}, remote="192.168.4.4").status_code == 202
    assert post(c, "/reload", {}, remote="172.16.0.5").status_code == 202
    assert post(c, "/reload", {}, remote="::ffff:192.168.1.1").status_code == 202
    assert post(c, "/reload", {}, remote="10.0.0.1").status_code == 403
    # allowlist before authentication: a stranger learns nothing about the credentials
    assert post(c, "/reload", {}, remote="10.0.0.1", auth=None).status_code == 403


def test_extra_headers_on_every_response() -> None:
    headers = {"X-Frame-Options": "SAMEORIGIN"}
    hsts = {"Strict-Transport-Security": "x"}
    plain = client(admin=FakeAdmin(), http_extra_headers=headers, https_extra_headers=hsts)
    for result in (plain.simulate_get("/primary"), plain.simulate_head("/replica"), plain.simulate_get("/liveness"),
                   post(plain, "/reload", {}, auth=None), plain.simulate_get("/metrics")):
        assert result.headers["x-frame-options"] == "SAMEORIGIN"
        assert "strict-transport-security" not in result.headers
    tls = client(admin=FakeAdmin(), http_extra_headers=headers, https_extra_headers={"Strict-Transport-Security": "x"},
                 tls=True)
    result = tls.simulate_get("/primary")
    assert result.headers["x-frame-options"] == "SAMEORIGIN" and result.headers["strict-transport-security"] == "x"


def test_access_control_repr_hides_the_password() -> None:
    assert "s3cr3t" not in repr(AccessControl("admin", "s3cr3t-pass"))


# -- /liveness, /readiness, staleness -----------------------------------------------------------


def test_liveness() -> None:
    fresh = {**LEADER, "received": {"cluster": NOW - 5}}
    assert health.liveness_code(fresh, NOW) == 200
    assert health.liveness_code({**LEADER, "received": {"cluster": NOW - 31}}, NOW) == 503  # primary: ttl
    assert health.liveness_code({**REPLICA, "received": {"cluster": NOW - 31}}, NOW) == 200  # replica: 2*ttl
    assert health.liveness_code({**REPLICA, "received": {"cluster": NOW - 61}}, NOW) == 503
    assert health.liveness_code({**fresh, "produced_at": NOW - 20}, NOW) == 503  # reader thread stuck
    paused = snap(pg_primary(), view(paused=True))
    assert health.liveness_code({**paused, "produced_at": NOW - 100}, NOW) == 200
    c = client(fresh)
    result = c.simulate_get("/liveness")
    assert result.status_code == 200 and result.content == b""
    assert c.simulate_head("/liveness").status_code == 503  # HEAD runs the generic check, as Patroni


def test_readiness() -> None:
    assert client(LEADER).simulate_get("/readiness").status_code == 200
    replica = client(REPLICA)
    assert replica.simulate_get("/readiness").status_code == 200  # 0x60 bytes behind, within 1 MB
    assert replica.simulate_get("/readiness", query_string="lag=16").status_code == 503
    assert replica.simulate_get("/readiness", query_string="lag=16&mode=write").status_code == 200
    assert replica.simulate_get("/readiness").content == b""
    stopped = client(snap(pg_replica(state="stopped"), view(leader="n2", holds_lock=False)))
    assert stopped.simulate_get("/readiness").status_code == 503
    archive = client(snap(pg_replica(replication_state=None), view(leader="n2", holds_lock=False)))
    assert archive.simulate_get("/readiness").status_code == 503


def test_stale_snapshot_drains_the_primary() -> None:
    assert health.health_code("/primary", {}, LEADER, NOW) == 200
    old_pg = snap(pg_primary(probe_at=NOW - health.PG_STATE_MAX_AGE - 0.1), view())
    assert health.health_code("/primary", {}, old_pg, NOW) == 503
    assert health.health_code("/leader", {}, old_pg, NOW) == 503
    assert health.health_code("/primary", {}, {**LEADER, "produced_at": NOW - 9}, NOW) == 503
    old_view = {**LEADER, "received": {"cluster": NOW - 23}}  # loop_wait 10 + retry_timeout 10 + 2
    assert health.health_code("/primary", {}, old_view, NOW) == 503
    assert health.health_code("/primary", {}, {**LEADER, "received": {"cluster": NOW - 21}}, NOW) == 200
    assert health.PG_STATE_MAX_AGE < 6  # below HAProxy's inter 2s x fall 3 (docs/haproxy.cfg, hasup.timing)


# -- /metrics -------------------------------------------------------------------------------------


def test_metrics_parse_and_match_the_status() -> None:
    result = client(LEADER).simulate_get("/metrics")
    assert result.status_code == 200 and result.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(result.text)}
    for family in families.values():
        for sample in family.samples:
            assert sample.labels == {"scope": "main", "name": "n1"}
    value = {name: f.samples[0].value for name, f in families.items()}
    assert value["patroni_primary"] == 1 and value["patroni_replica"] == 0
    assert value["patroni_xlog_location"] == 0x3000060 and families["patroni_xlog_location"].type == "counter"
    assert value["patroni_postgres_state"] == 5 and value["patroni_postgres_timeline"] == 3
    assert value["patroni_version"] == metrics.version_number("4.1.4") or value["patroni_version"] > 0
    assert value["patroni_postgres_server_version"] == 160004 and value["patroni_cluster_unlocked"] == 0
    assert value["patroni_dcs_last_seen"] == 1700000000 and value["patroni_failover_priority"] == 1
    assert "# TYPE patroni_xlog_location counter" in result.text  # Patroni's bare counter names
    assert result.text.index("# Values: 0=") < result.text.index("# HELP patroni_postgres_state")
    expected = {"patroni_version", "patroni_postgres_running", "patroni_postmaster_start_time", "patroni_primary",
                "patroni_xlog_location", "patroni_standby_leader", "patroni_replica", "patroni_sync_standby",
                "patroni_quorum_standby", "patroni_xlog_received_location", "patroni_xlog_replayed_location",
                "patroni_xlog_replayed_timestamp", "patroni_xlog_paused", "patroni_postgres_streaming",
                "patroni_postgres_in_archive_recovery", "patroni_postgres_server_version", "patroni_cluster_unlocked",
                "patroni_failsafe_mode_is_active", "patroni_failsafe_mode_enabled", "patroni_failsafe_member",
                "patroni_postgres_timeline", "patroni_dcs_last_seen", "patroni_pending_restart", "patroni_is_paused",
                "patroni_postgres_state", "patroni_failover_priority",
                "hasup_dcs_bad_values", "hasup_election_cycle_errors",  # hasup's own (docs/design.md §11)
                "hasup_rest_api_unprotected", "hasup_log_records_lost",
                "hasup_lease_protection", "hasup_software_fences", "hasup_software_fence_last_seconds"}
    assert set(families) == expected
    assert value["hasup_rest_api_unprotected"] == 0
    assert value["hasup_dcs_bad_values"] == 0 and families["hasup_dcs_bad_values"].type == "counter"
    assert "hasup_dcs_bad_values_total{" in result.text and "hasup_election_cycle_errors_total{" in result.text


def test_metrics_of_a_replica_and_of_nothing() -> None:
    families = {f.name: f.samples[0].value for f in text_string_to_metric_families(
        client(REPLICA).simulate_get("/metrics").text)}
    assert families["patroni_replica"] == 1 and families["patroni_postgres_streaming"] == 1
    assert families["patroni_xlog_received_location"] == 0x3000060 and families["patroni_xlog_location"] == 0
    empty = {f.name: f.samples[0].value for f in text_string_to_metric_families(
        client(snap(None, None)).simulate_get("/metrics").text)}
    assert empty["patroni_postgres_state"] == -1 and empty["patroni_cluster_unlocked"] == 1
    assert metrics.version_number("4.1.4") == 40104 and metrics.version_number("3.0") == 30000


# -- /config, /cluster, /history, /reload -------------------------------------------------------


def test_patch_merge_rules() -> None:
    current = {"ttl": 30, "postgresql": {"parameters": {"work_mem": "4MB", "a": 1}}, "x": {"y": 1}}
    merged = patch_config(current, {"ttl": 40, "postgresql": {"parameters": {"a": None, "b": 2}}, "x": None,
                                    "new": {"k": None, "v": 1}})
    assert merged == {"ttl": 40, "postgresql": {"parameters": {"work_mem": "4MB", "b": 2}}, "new": {"v": 1}}
    assert current["postgresql"]["parameters"]["a"] == 1  # untouched


def test_get_config_cluster_history_read_etcd_fresh() -> None:
    admin = FakeAdmin(cluster(config={"ttl": 45, "loop_wait": 3}))
    c = client(admin=admin)
    assert c.simulate_get("/config").json == {"ttl": 45, "loop_wait": 3}
    doc = c.simulate_get("/cluster").json
    assert [m["name"] for m in doc["members"]] == ["n1", "n2"] and doc["members"][0]["role"] == "leader"
    assert c.simulate_get("/history").json[0][4] == "n1"
    admin.down = True  # etcd silent: the snapshot answers
    assert c.simulate_get("/config").json["ttl"] == 30
    assert [m["name"] for m in c.simulate_get("/cluster").json["members"]] == ["n1", "n2", "n3"]
    empty = client(snap(None, None), FakeAdmin(cluster(config={})))
    assert empty.simulate_get("/config").status_code == 502


def test_patch_config_writes_with_cas() -> None:
    admin = FakeAdmin()
    c = client(admin=admin)
    result = post(c, "/config", {"loop_wait": 5, "postgresql": {"parameters": {"work_mem": "8MB"}}}, "PATCH")
    assert result.status_code == 200
    want = {"ttl": 30, "loop_wait": 5, "retry_timeout": 10, "postgresql": {"parameters": {"work_mem": "8MB"}}}
    assert result.json == want and admin.writes == [("config", want, 7)]
    admin.cas_fails = True
    assert post(c, "/config", {"ttl": 40}, "PATCH").status_code == 409


@pytest.mark.parametrize("body, key", [
    ({"ttl": "soon"}, "config.ttl"), ({"loop_wait": -1}, "config.loop_wait"),
    ({"postgresql": {"parameters": "x"}}, "config.postgresql.parameters"),
    ({"maximum_lag_on_failover": [1]}, "config.maximum_lag_on_failover"),
    ({"synchronous_mode": "sometimes"}, "config.synchronous_mode"),
])
def test_patch_config_refuses_values_hasup_cannot_use(body: dict[str, Any], key: str) -> None:
    admin = FakeAdmin()
    for method in ("PATCH", "PUT"):
        result = post(client(admin=admin), "/config", body, method)
        assert result.status_code == 422, method
        assert any(p.startswith(key + ":") for p in result.json["problems"]), result.json
    assert admin.writes == []


def test_timing_rule_violations_are_stored_as_given() -> None:
    admin = FakeAdmin()
    result = post(client(admin=admin), "/config", {"ttl": 20, "loop_wait": 10, "retry_timeout": 10}, "PATCH")
    assert result.status_code == 200 and admin.writes[0][1]["ttl"] == 20
    assert config_problems({"ttl": 20, "loop_wait": 10, "retry_timeout": 10}) == []


def test_config_bodies() -> None:
    admin = FakeAdmin()
    c = client(admin=admin)
    assert c.simulate_patch("/config", headers={"Authorization": AUTH}).status_code == 411
    assert c.simulate_patch("/config", body="not json", headers={"Authorization": AUTH}).status_code == 400
    assert post(c, "/config", [], "PATCH").status_code == 400
    assert post(c, "/config", {}, "PATCH").status_code == 400
    assert post(c, "/config", "x", "PUT").status_code == 400
    no_config = FakeAdmin(cluster(config={}))
    assert post(client(admin=no_config), "/config", {"ttl": 40}, "PATCH").status_code == 503
    assert admin.writes == []


def test_put_config_replaces() -> None:
    admin = FakeAdmin()
    body = {"ttl": 40, "postgresql": {"parameters": {"work_mem": "2MB"}}}
    result = post(client(admin=admin), "/config", body, "PUT")
    assert result.status_code == 200 and result.json == body and admin.writes == [("config", body, None)]


def test_reload_signals_the_supervisor() -> None:
    admin = FakeAdmin()
    result = post(client(admin=admin), "/reload", {})
    assert (result.status_code, result.text, admin.reloads) == (202, "reload scheduled", 1)


def test_writes_without_admin_are_503() -> None:
    assert post(client(), "/config", {"ttl": 40}, "PATCH").status_code == 503


# -- /switchover, /failover ------------------------------------------------------------------------


def switched(to: str) -> Cluster:
    return cluster(leader=to)


@pytest.mark.parametrize("path, body, code, text", [
    ("/failover", {"leader": "n1"}, 400, "Failover could be performed only to a specific candidate"),
    ("/switchover", {"candidate": "n2"}, 400, "Switchover could be performed only from a specific leader"),
    ("/failover", {"candidate": "n2", "scheduled_at": "2099-01-01T00:00:00+00:00"}, 400,
     "Failover can't be scheduled"),
    ("/switchover", {"leader": "n1", "scheduled_at": "2099-01-01T00:00:00"}, 400,
     "Timezone information is mandatory for the scheduled switchover"),
    ("/switchover", {"leader": "n1", "scheduled_at": "2001-01-01T00:00:00+00:00"}, 422,
     "Cannot schedule switchover in the past"),
    ("/switchover", {"leader": "n1", "scheduled_at": "next tuesday"}, 422,
     "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601"),
    ("/switchover", {"leader": "n1", "candidate": "n1"}, 400, "Switchover target and source are the same"),
    ("/switchover", {"leader": "n9"}, 412, "leader name does not match"),
    ("/switchover", {"leader": "n1", "candidate": "n7"}, 412, "candidate does not exists"),
])
def test_switchover_validation(path: str, body: dict[str, Any], code: int, text: str) -> None:
    admin = FakeAdmin()
    result = post(client(admin=admin), path, body)
    assert (result.status_code, result.text) == (code, text)
    assert admin.writes == []


def test_switchover_paused_and_candidates() -> None:
    paused = FakeAdmin(cluster(config={"pause": True}))
    result = post(client(admin=paused), "/switchover", {"leader": "n1"})
    assert (result.status_code, result.text) == (
        400, "Switchover is possible only to a specific candidate in a paused state")
    result = post(client(admin=paused), "/switchover", {"leader": "n1", "scheduled_at": "2099-01-01T00:00+00:00"})
    assert (result.status_code, result.text) == (400, "Can't schedule switchover in the paused state")
    alone = FakeAdmin(cluster(members={"n1": MEMBERS["n1"]}))
    result = post(client(admin=alone), "/switchover", {"leader": "n1"})
    assert (result.status_code, result.text) == (
        412, "switchover is not possible: cluster does not have members except leader")
    sick = FakeAdmin()
    sick.healthy = {"n1": True, "n2": False}
    result = post(client(admin=sick), "/switchover", {"leader": "n1"})
    assert (result.status_code, result.text) == (412, "switchover is not possible: no good candidates have been found")


def test_switchover_succeeds_when_the_candidate_leads() -> None:
    admin = FakeAdmin()
    admin.after_write = [cluster(failover={"leader": "n1", "member": "n2"}), switched("n2")]
    result = post(client(admin=admin), "/switchover", {"leader": "n1", "candidate": "n2"})
    assert (result.status_code, result.text) == (200, 'Successfully switched over to "n2"')
    assert admin.writes == [("failover", {"leader": "n1", "member": "n2"}, None)]
    assert admin.now <= 1.0  # polled every 0.25 s


def test_failover_outcomes() -> None:
    admin = FakeAdmin()
    admin.after_write = [switched("n2")]
    result = post(client(admin=admin), "/failover", {"candidate": "n2"})
    assert (result.status_code, result.text) == (200, 'Successfully failed over to "n2"')
    other = FakeAdmin(cluster(members={**MEMBERS, "n3": MEMBERS["n2"]}))
    other.healthy["n3"] = True
    other.after_write = [switched("n3")]
    result = post(client(admin=other), "/switchover", {"leader": "n1", "candidate": "n2"})
    assert (result.status_code, result.text) == (200, 'Switched over to "n3" instead of "n2"')
    gone = FakeAdmin()
    gone.after_write = [cluster(failover=None)]
    result = post(client(admin=gone), "/switchover", {"leader": "n1", "candidate": "n2"})
    assert (result.status_code, result.text) == (503, "Switchover failed")
    stuck = FakeAdmin()
    stuck.after_write = [cluster(failover={"leader": "n1", "member": "n2"})]
    result = post(client(admin=stuck), "/switchover", {"leader": "n1", "candidate": "n2"})
    assert result.status_code == 503 and result.text == (
        "Switchover status unknown after 20 seconds; operation may still be in progress")
    assert 20 <= stuck.now <= 20.5
    broken = FakeAdmin()
    broken.cas_fails = True
    result = post(client(admin=broken), "/switchover", {"leader": "n1", "candidate": "n2"})
    assert (result.status_code, result.text) == (503, "failed to write failover key into DCS")


def test_scheduled_switchover_and_its_deletion() -> None:
    admin = FakeAdmin()
    when = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    result = post(client(admin=admin), "/switchover", {"leader": "n1", "scheduled_at": when.isoformat()})
    assert (result.status_code, result.text) == (202, "Switchover scheduled")
    assert admin.writes == [("failover", {"leader": "n1", "scheduled_at": when.isoformat()}, None)]
    assert post(client(admin=admin), "/switchover", {}, "DELETE").status_code == 404
    scheduled = FakeAdmin(cluster(failover={"leader": "n1", "scheduled_at": when.isoformat()}))
    result = post(client(admin=scheduled), "/switchover", {}, "DELETE")
    assert (result.status_code, result.text) == (200, "scheduled switchover deleted")
    assert scheduled.writes == [("clear", None, 9)]
    scheduled.cas_fails = True
    assert post(client(admin=scheduled), "/switchover", {}, "DELETE").status_code == 409


def test_schedule_parsing() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    when, error = parse_schedule("2030-01-01T01:00:00Z", now)
    assert error is None and when == now + timedelta(hours=1)


# -- admin endpoints never take every thread -----------------------------------------------------------


def test_admin_slots_leave_room_for_health_checks() -> None:
    admin = FakeAdmin()
    admin.gate = threading.Event()
    c = client(admin=admin, admin_slots=2)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(c.simulate_get("/cluster").status_code))
               for _ in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 5
        while admin.waiting < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert admin.waiting == 2
        # both slots are held by calls blocked on etcd: a third admin call is turned away at
        # once, and health checks never wait for a slot
        third = c.simulate_get("/history")
        assert third.status_code == 503 and third.json["error"] == "too many admin requests in progress"
        assert c.simulate_get("/primary").status_code == 200
    finally:
        admin.gate.set()
        for t in threads:
            t.join(5)
    assert results == [200, 200]


def test_an_unprotected_rest_api_shows_in_metrics() -> None:
    from hasup.api import snapshot
    exposed = snapshot.Identity("main", "n1", rest_unprotected=True)
    snap = snapshot.make_snapshot(exposed, None, None, None, now=1.0, now_wall=1.0)
    assert 'hasup_rest_api_unprotected{name="n1",scope="main"} 1.0' in metrics.render(snap, 1.0)
