"""POST /restart and /reinitialize: body validation, the node's conditions, and election's desk."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from hasup import ipc, restarts
from hasup.dcs.model import Cluster, Leader, Member
from hasup.election.operator import OperatorDesk
from tests.unit.test_api_admin import AUTH, FakeAdmin, client, post
from tests.unit.test_api_app import LEADER, pg_primary, snap, view

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("body", "code", "text"), [
    ({"role": "boss"}, 400, "PostgreSQL role should be either primary, standby_leader, or replica"),
    ({"timeout": 0}, 400, "Timeout should be a positive number of seconds"),
    ({"timeout": "soon"}, 400, "Timeout should be a positive number of seconds"),
    ({"timeout": True}, 400, "Timeout should be a positive number of seconds"),
    ({"postgres_version": "fifteen"}, 400, "'fifteen' is not a PostgreSQL version"),
    ({"postgres_version": "15.1.2"}, 400, "'15.1.2' is not a PostgreSQL version"),
    ({"when": "now"}, 400, "Unknown filter for the scheduled restart: when"),
    ({"schedule": "tomorrow"}, 422, "Unable to parse scheduled timestamp"),
    ({"schedule": "2030-01-02T00:00:00"}, 400, "Timezone information is mandatory for the scheduled restart"),
    ({"schedule": "2029-01-01T00:00:00+00:00"}, 422, "Cannot schedule restart in the past"),
])
def test_bad_restart_bodies(body: dict[str, Any], code: int, text: str) -> None:
    params, error = restarts.parse_restart(body, NOW, paused=False)
    assert error is not None and error[0] == code and error[1].startswith(text) and params == {}


def test_good_restart_body_and_paused_schedule() -> None:
    body = {"role": "master", "postgres_version": "16.2", "timeout": "30", "restart_pending": False,
            "schedule": "2030-01-02T00:00:00Z"}
    params, error = restarts.parse_restart(body, NOW, paused=False)
    assert error is None
    assert params == {"role": "primary", "postgres_version": "16.2", "timeout": 30.0, "restart_pending": True,
                      "schedule": "2030-01-02T00:00:00+00:00"}
    assert restarts.parse_restart({"schedule": "2030-01-02T00:00:00Z"}, NOW, paused=True)[1] == \
        (500, "Can't schedule restart in the paused state")
    assert restarts.parse_restart({}, NOW, paused=True) == ({}, None)  # an immediate restart is fine paused


@pytest.mark.parametrize(("text", "number"), [("15.4", 150004), ("9.6.24", 90624), ("10.0", 100000),
                                               ("9.6", 90600), ("x", None), ("15", None)])
def test_version_number(text: str, number: int | None) -> None:
    assert restarts.version_number(text) == number


def pg(**kw: Any) -> ipc.PgState:
    base: dict[str, Any] = {"state": "running", "role": "primary", "data_dir_empty": False, "probe_ok": True,
                            "probe_at": 1.0, "server_version": 150004, "postmaster_start_time": "t0"}
    return ipc.PgState(**{**base, **kw})


def test_restart_conditions() -> None:
    primary, replica = pg(), pg(role="replica")
    assert restarts.restart_refusal({}, primary, True, "") is None
    assert restarts.restart_refusal({"role": "primary"}, primary, True, "") is None
    assert restarts.restart_refusal({"role": "replica"}, primary, True, "")[1] == \
        "restart conditions are not satisfied"  # type: ignore[index]
    assert restarts.restart_refusal({"role": "replica"}, replica, False, "") is None
    # A primary without the lock is no leader: as far as the filter goes it is a replica.
    assert restarts.restart_refusal({"role": "primary"}, primary, False, "") is not None
    assert restarts.restart_refusal({"postgres_version": "15.5"}, primary, True, "") is None
    assert restarts.restart_refusal({"postgres_version": "15.4"}, primary, True, "") is not None
    assert restarts.restart_refusal({"restart_pending": True}, primary, True, "") is not None
    assert restarts.restart_refusal({"restart_pending": True}, pg(pending_restart=True), True, "") is None
    assert restarts.restart_refusal({}, primary, True, "creating replica") == \
        (503, "creating replica already in progress")
    assert restarts.restart_refusal({}, pg(state="starting"), True, "") == (503, "postgres is still starting")
    assert restarts.restart_refusal({}, None, True, "") is not None


def test_reinitialize_refusals() -> None:
    assert restarts.reinitialize_refusal(None, False, "", False) == \
        (503, "Cluster has no leader, can not reinitialize")
    assert restarts.reinitialize_refusal("n1", True, "", False) == (503, "I am the leader, can not reinitialize")
    assert restarts.reinitialize_refusal("n1", False, "restart", False) == (503, "restart already in progress")
    assert restarts.reinitialize_refusal("n1", False, "restart", True) is None
    assert restarts.parse_reinitialize({"from-leader": True}) == {"force": False, "from_leader": True}


# -- the REST side ------------------------------------------------------------------------


def test_restart_endpoint_validates_then_asks_election() -> None:
    admin = FakeAdmin()
    c = client(admin=admin)
    bad = post(c, "/restart", {"role": "boss"})
    assert bad.status_code == 400 and admin.operations == []
    admin.operation_answer = (200, "restarted successfully")
    ok = c.simulate_post("/restart", headers={"Authorization": AUTH})  # no body at all: defaults
    assert (ok.status_code, ok.text) == (200, "restarted successfully")
    assert admin.operations == [("restart", {})]
    admin.operation_answer = (404, "no restarts are scheduled")
    gone = post(c, "/restart", {}, method="DELETE")
    assert (gone.status_code, gone.text) == (404, "no restarts are scheduled")
    assert admin.operations[-1] == ("cancel_restart", {})
    admin.operation_answer = (200, "reinitialize started")
    reinit = post(c, "/reinitialize", {"force": True})
    assert (reinit.status_code, reinit.text) == (200, "reinitialize started")
    assert admin.operations[-1] == ("reinitialize", {"force": True, "from_leader": False})
    assert post(c, "/reinitialize", [1]).status_code == 400
    assert post(c, "/restart", {}, auth=None).status_code == 401


def test_scheduling_in_a_paused_cluster_is_refused_by_the_api() -> None:
    admin = FakeAdmin()
    paused = snap(pg_primary(), view(paused=True))
    result = post(client(paused, admin=admin), "/restart", {"schedule": "2099-01-01T00:00:00Z"})
    assert (result.status_code, result.text) == (500, "Can't schedule restart in the paused state")
    assert admin.operations == []
    assert post(client(LEADER, admin=admin), "/restart", {"schedule": "2099-01-01T00:00:00Z"}).status_code == 200


# -- election's desk -------------------------------------------------------------------------


class FakeElection:
    def __init__(self, leader: str | None = "n1", me_leads: bool = False) -> None:
        members = {n: Member(n, {"conn_url": f"postgres://127.0.0.1:{5432 + i}/postgres"}) for i, n in
                   enumerate(("n1", "n2"))}
        self.cluster: Cluster | None = Cluster(initialize="1", config={}, config_index=1,
                                               leader=Leader(leader, 1) if leader else None, members=members,
                                               history=[], failover=None, sync=None, optime=None)
        self.pg: ipc.PgState | None = pg(role="primary" if me_leads else "replica")
        self.me_leads = me_leads
        self.pending: dict[int, tuple[ipc.Request, int | None]] = {}
        self.sent: list[ipc.Request] = []
        self.busy_with = ""

    @property
    def busy(self) -> str:
        return self.busy_with

    def holds_lock(self) -> bool:
        return self.me_leads

    def request(self, cls: type[ipc.Request], **kwargs: Any) -> int:
        rid = len(self.sent) + 1
        req = cls(id=rid, deadline=time.monotonic() + 60, **kwargs)
        self.sent.append(req)
        self.pending[rid] = (req, None)
        return rid


def desk_for(el: FakeElection) -> tuple[OperatorDesk, list[ipc.Message]]:
    out: list[ipc.Message] = []
    return OperatorDesk(el, el.holds_lock, lambda: el.cluster, lambda: el.busy, out.append), out


def admin_request(rid: int, action: str, **params: Any) -> ipc.AdminRequest:
    return ipc.AdminRequest(rid, time.monotonic() + 60, action, params)


def test_immediate_restart_of_a_replica_is_answered_when_postgres_is_back() -> None:
    el = FakeElection()
    desk, out = desk_for(el)
    desk.handle(admin_request(7, "restart"))
    assert out == []  # not yet: PostgreSQL is restarting
    (req,) = el.sent
    assert isinstance(req, ipc.Restart) and req.leader == "n1"
    assert req.leader_conn_url == "postgres://127.0.0.1:5432/postgres"
    desk.on_reply(ipc.Reply(req.id, "Restart", True))
    assert out == [ipc.AdminReply(7, 200, "restarted successfully")]
    desk.handle(admin_request(8, "restart"))
    desk.on_reply(ipc.Reply(el.sent[-1].id, "Restart", False, "did not start"))
    assert out[-1] == ipc.AdminReply(8, 503, "restart failed")


def test_restart_of_the_leader_keeps_no_upstream_and_refusals_answer_at_once() -> None:
    el = FakeElection(me_leads=True)
    desk, out = desk_for(el)
    desk.handle(admin_request(1, "restart", role="replica"))
    assert out == [ipc.AdminReply(1, 503, "restart conditions are not satisfied")] and el.sent == []
    desk.handle(admin_request(2, "restart", role="primary", timeout=30.0))
    (req,) = el.sent
    assert isinstance(req, ipc.Restart) and req.leader is None and req.timeout == 30.0
    el.busy_with = "restart"
    desk.handle(admin_request(3, "restart"))
    assert out[-1] == ipc.AdminReply(3, 503, "restart already in progress")
    desk.handle(ipc.AdminRequest(4, time.monotonic() - 1, "restart", {}))  # its caller gave up
    assert out[-1].id == 3


def test_lost_restart_is_answered_on_the_next_tick() -> None:
    el = FakeElection()
    desk, out = desk_for(el)
    desk.handle(admin_request(5, "restart"))
    el.pending.clear()  # the postgres worker was replaced
    desk.tick(time.time())
    assert out == [ipc.AdminReply(5, 503, "restart failed: the postgres worker was replaced")]


def test_scheduled_restart_runs_when_due_and_can_be_deleted() -> None:
    el = FakeElection()
    desk, out = desk_for(el)
    soon = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
    desk.handle(admin_request(1, "restart", schedule=soon, role="replica"))
    assert out[-1] == ipc.AdminReply(1, 202, "Restart scheduled")
    assert desk.scheduled == {"schedule": soon, "role": "replica", "postmaster_start_time": "t0"}
    desk.handle(admin_request(2, "restart", schedule=soon))
    assert out[-1] == ipc.AdminReply(2, 409, "Another restart is already scheduled")
    desk.tick(time.time())
    assert el.sent == []  # not due yet
    desk.tick(time.time() + 3601)
    assert isinstance(el.sent[-1], ipc.Restart) and desk.scheduled is None
    desk.handle(admin_request(3, "cancel_restart"))
    assert out[-1] == ipc.AdminReply(3, 404, "no restarts are scheduled")
    desk.handle(admin_request(4, "restart", schedule=soon))
    desk.handle(admin_request(5, "cancel_restart"))
    assert out[-1] == ipc.AdminReply(5, 200, "scheduled restart deleted") and desk.scheduled is None


def test_scheduled_restart_is_dropped_when_postgres_restarted_meanwhile_or_conditions_fail() -> None:
    el = FakeElection()
    desk, _ = desk_for(el)
    desk.handle(admin_request(1, "restart", schedule="2000-01-01T00:00:00+00:00"))
    el.pg = pg(role="replica", postmaster_start_time="t1")
    desk.tick(time.time())
    assert desk.scheduled is None and el.sent == []
    desk.handle(admin_request(2, "restart", schedule="2000-01-01T00:00:00+00:00", role="primary"))
    desk.tick(time.time())
    assert desk.scheduled is None and el.sent == []  # a replica: the role filter says no


def test_reinitialize_desk() -> None:
    el = FakeElection()
    desk, out = desk_for(el)
    desk.handle(admin_request(1, "reinitialize", force=False))
    assert out[-1] == ipc.AdminReply(1, 200, "reinitialize started")
    (req,) = el.sent
    assert isinstance(req, ipc.Reinitialize) and req.leader == "n1" and not req.force
    leader = FakeElection(me_leads=True)
    desk, out = desk_for(leader)
    desk.handle(admin_request(2, "reinitialize"))
    assert out[-1] == ipc.AdminReply(2, 503, "I am the leader, can not reinitialize") and leader.sent == []
    nobody = FakeElection(leader=None)
    desk, out = desk_for(nobody)
    desk.handle(admin_request(3, "reinitialize"))
    assert out[-1] == ipc.AdminReply(3, 503, "Cluster has no leader, can not reinitialize")
