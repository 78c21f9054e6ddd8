"""The REST API on a live cluster: health codes by method, authentication, PATCH /config reaching PostgreSQL."""

from __future__ import annotations

import base64
import json
import signal
import time
import urllib.error
import urllib.request

import pytest

from hasup.timing import PG_STATE_MAX_AGE, PROBE_INTERVAL, PROBE_TIMEOUT
from tests.harness import TestCluster, descendants, kill_pids, wait_for

LOOP_WAIT = 2
USER, PASSWORD = "admin", "api-secret-5e1f"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def tc():
    c = TestCluster(3)
    for node in c.nodes:
        node.extra.update({"restapi.authentication.username": USER, "restapi.authentication.password": PASSWORD,
                           # The frozen-PostgreSQL test watches the api's staleness bound, which a
                           # fence (tests/integration/test_watchdog.py) would otherwise pre-empt.
                           "postgresql.health_deadline": 60})
    with c:  # starts etcd; destroys everything on the way out
        c.start_all()
        yield c


def call(node, method: str, path: str, body: object = None, auth: bool = False) -> tuple[int, bytes]:
    return call_raw(node, method, path, json.dumps(body).encode() if body is not None else None, auth)


def call_raw(node, method: str, path: str, data: bytes | None, auth: bool = True) -> tuple[int, bytes]:
    """A request with the body as given (json.dumps cannot write 1e400); with credentials unless told not."""
    req = urllib.request.Request(f"http://127.0.0.1:{node.api_port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    try:
        with _opener.open(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# (path, code on the leader, code on a streaming replica) as Patroni answers them, asynchronous replication.
HEALTH = [
    ("/", 200, 503), ("/primary", 200, 503), ("/master", 200, 503), ("/leader", 200, 503),
    ("/read-write", 200, 503), ("/standby-leader", 503, 503), ("/standby_leader", 503, 503),
    ("/replica", 503, 200), ("/read-only", 200, 200), ("/health", 200, 200),
    ("/sync", 503, 503), ("/synchronous", 503, 503), ("/async", 503, 200), ("/asynchronous", 503, 200),
    ("/read-only-sync", 200, 503), ("/replica?replication_state=streaming", 503, 200),
    ("/replica?lag=1GB", 503, 200), ("/replica?tag_rack=r9", 503, 503), ("/no-such-check", 503, 503),
]


def test_health_endpoints_by_method_on_leader_and_replica(tc):
    leader = tc.wait_leader(30)
    replica = next(n for n in tc.nodes if n is not leader)
    wait_for(lambda: replica.api("/replica")[0] == 200, 20, "the replica's /replica")
    failures = []
    for path, on_leader, on_replica in HEALTH:
        for node, expected in ((leader, on_leader), (replica, on_replica)):
            for method in ("GET", "HEAD", "OPTIONS"):
                code, body = call(node, method, path)
                if code != expected:
                    failures.append((node.name, method, path, code, expected))
                if method != "GET":
                    assert body == b"", (method, path)
                elif path != "/no-such-check":
                    assert json.loads(body)["patroni"]["name"] == node.name
    assert failures == []


def test_unsafe_requests_need_credentials(tc):
    leader = tc.wait_leader(30)
    for method, path in (("PATCH", "/config"), ("PUT", "/config"), ("POST", "/switchover"), ("POST", "/reload")):
        code, body = call(leader, method, path, {"x": 1})
        assert code == 401, (method, path, code)
        assert PASSWORD not in body.decode(errors="replace")
    assert call(leader, "GET", "/config")[0] == 200  # safe methods never ask


def test_patch_config_reaches_every_node_and_bad_values_change_nothing(tc):
    leader = tc.wait_leader(30)
    code, _ = call(leader, "PATCH", "/config", {"postgresql": {"parameters": {"work_mem": "8MB"}}}, auth=True)
    assert code == 200
    for node in tc.nodes:
        wait_for(lambda node=node: node.sql("SHOW work_mem") == [("8MB",)], 3 * LOOP_WAIT + 2,
                 f"work_mem on {node.name}")
    code, _ = call(leader, "PATCH", "/config", {"postgresql": {"parameters": {"max_files_per_process": 1100}}},
                   auth=True)
    assert code == 200
    wait_for(lambda: leader.status().get("pending_restart") is True, 3 * LOOP_WAIT + 5, "pending_restart")
    before = tc.etcd.value(tc.key("config"))
    code, body = call(leader, "PATCH", "/config", {"ttl": "soon"}, auth=True)
    assert 400 <= code < 500 and "ttl" in body.decode()
    assert tc.etcd.value(tc.key("config")) == before


def test_health_checks_stay_fast_while_postgres_is_frozen(tc):
    leader = tc.wait_leader(30)
    pm = leader.postmaster_pid()
    assert pm
    frozen = [pm, *descendants(pm)]
    kill_pids(frozen, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        for path in ("/health", "/patroni", "/primary"):
            started = time.monotonic()
            code, _ = call(leader, "GET", path)
            took = time.monotonic() - started
            assert took < 0.1, (path, took)
            assert code in (200, 503)
        # The snapshot's PostgreSQL facts age; past their bound (hasup.timing) /primary drains.
        wait_for(lambda: call(leader, "GET", "/primary")[0] == 503, PG_STATE_MAX_AGE + 5, "/primary to turn 503")
        # Not before the facts were actually stale: the last good probe came at most a probe before the freeze.
        assert time.monotonic() - frozen_at >= PG_STATE_MAX_AGE - PROBE_INTERVAL - PROBE_TIMEOUT
    finally:
        kill_pids(frozen, signal.SIGCONT)
    wait_for(lambda: call(leader, "GET", "/primary")[0] == 200, 30, "/primary back to 200 after SIGCONT")


def test_config_values_that_cannot_be_applied_never_reach_etcd(tc):
    """ttl 1e400, a 600-deep object, a 2 MB value; 4xx with a JSON reason each."""
    leader = tc.wait_leader(30)
    workers = {(n.name, role): n.worker_pid(role) for n in tc.nodes for role in ("api", "election")}
    before = tc.etcd.value(tc.key("config"))
    deep: object = 1
    for _ in range(600):
        deep = {"a": deep}
    bodies = [b'{"ttl": 1e400}', json.dumps({"postgresql": deep}).encode(),
              json.dumps({"postgresql": {"parameters": {"application_name": "v" * (2 * 1024 * 1024)}}}).encode()]
    for method in ("PATCH", "PUT"):
        for raw in bodies:
            code, body = call_raw(leader, method, "/config", raw)
            assert 400 <= code < 500, (method, raw[:30], code)
            assert json.loads(body)["error"], body
    assert tc.etcd.value(tc.key("config")) == before
    # Healthy for three cycles, and nobody restarted to get there.
    settle = time.monotonic() + 3 * LOOP_WAIT
    while time.monotonic() < settle:
        assert call(leader, "GET", "/primary")[0] == 200
        for node in tc.nodes:
            assert call(node, "GET", "/patroni")[0] == 200
        time.sleep(0.5)  # pacing of the checks, not synchronisation
    assert {(n.name, role): n.worker_pid(role) for n in tc.nodes for role in ("api", "election")} \
        == workers
    assert tc.etcd.value(tc.key("config")) == before
