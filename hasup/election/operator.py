"""Operator requests relayed from the REST API to election: restart (now or scheduled), reinitialize.

Election owns them because only election knows whether the node leads, what
the postgres worker is busy with, and whom a replica follows; the postgres
worker merely executes.  An immediate restart is answered when PostgreSQL is
back (or failed); a reinitialize is answered once it has started, as Patroni
does.  A scheduled restart lives here, in memory, and is published in the
member key and /patroni until it runs or is deleted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from hasup import ipc, restarts
from hasup.dcs.model import Cluster
from hasup.election.postgres_link import PostgresLink

log = logging.getLogger("hasup.election")


class OperatorDesk:
    def __init__(self, link: PostgresLink, holds_lock: Callable[[], bool], cluster: Callable[[], Cluster | None],
                 busy: Callable[[], str], send: Callable[[ipc.Message], object]) -> None:
        self.link, self.holds_lock, self.cluster, self.busy = link, holds_lock, cluster, busy
        self.send = send
        self.scheduled: dict[str, Any] | None = None
        self.restarts: dict[int, int] = {}  # postgres request id -> the api's request id

    def handle(self, req: ipc.AdminRequest) -> None:
        if time.monotonic() > req.deadline:
            return  # the caller has given up; acting now would surprise it
        if req.action == "restart":
            answer = self.restart(req)
        elif req.action == "cancel_restart":
            answer = self.cancel_restart()
        elif req.action == "reinitialize":
            answer = self.reinitialize(bool(req.params.get("force")), bool(req.params.get("from_leader")))
        else:
            answer = (400, f"unknown action {req.action!r}")
        if answer is not None:
            self.send(ipc.AdminReply(req.id, *answer))

    # -- restart -----------------------------------------------------------------------------

    def restart(self, req: ipc.AdminRequest) -> tuple[int, str] | None:
        pg, params = self.link.pg, dict(req.params)
        if params.get("schedule"):
            if self.scheduled is not None:
                return 409, "Another restart is already scheduled"
            start_time = pg.postmaster_start_time if pg is not None else None
            self.scheduled = {**params, "postmaster_start_time": start_time}
            log.info("restart scheduled at %s", params["schedule"])
            return 202, "Restart scheduled"
        refusal = restarts.restart_refusal(params, pg, self.holds_lock(), self.busy())
        if refusal is not None:
            return refusal
        self.restarts[self.start_restart(params)] = req.id
        return None  # answered by on_reply, once PostgreSQL is back

    def start_restart(self, params: dict[str, Any]) -> int:
        c = self.cluster()
        leader = c.leader.name if c is not None and c.leader is not None and not self.holds_lock() else None
        member = c.members.get(leader) if c is not None and leader else None
        log.info("restarting PostgreSQL on request")
        return self.link.request(ipc.Restart, timeout=params.get("timeout"), leader=leader,
                          leader_conn_url=member.conn_url if member else None)

    def cancel_restart(self) -> tuple[int, str]:
        if self.scheduled is None:
            return 404, "no restarts are scheduled"
        self.scheduled = None
        log.info("scheduled restart deleted")
        return 200, "scheduled restart deleted"

    def on_reply(self, reply: ipc.Reply) -> None:
        api_id = self.restarts.pop(reply.id, None)
        if api_id is not None:
            self.send(ipc.AdminReply(api_id, *((200, "restarted successfully") if reply.ok else
                                               (503, "restart failed"))))

    def tick(self, now_wall: float) -> None:
        """Each cycle: answer restarts the postgres worker lost, and run a scheduled restart when due."""
        for rid, api_id in list(self.restarts.items()):
            if rid not in self.link.pending:  # the worker restarted (or the request passed its deadline)
                del self.restarts[rid]
                self.send(ipc.AdminReply(api_id, 503, "restart failed: the postgres worker was replaced"))
        s = self.scheduled
        if s is None:
            return
        pg = self.link.pg
        if s.get("postmaster_start_time") and pg is not None and pg.postmaster_start_time \
                and pg.postmaster_start_time != s["postmaster_start_time"]:
            log.info("scheduled restart dropped: PostgreSQL has restarted since it was scheduled")
            self.scheduled = None
            return
        if not restarts.schedule_due(s, now_wall) or self.busy():
            return
        self.scheduled = None
        refusal = restarts.restart_refusal(s, pg, self.holds_lock(), self.busy())
        if refusal is not None:
            log.info("scheduled restart skipped: %s", refusal[1])
            return
        log.info("running the restart scheduled at %s", s["schedule"])
        self.start_restart(s)

    # -- reinitialize --------------------------------------------------------------------------

    def reinitialize(self, force: bool, from_leader: bool = False) -> tuple[int, str]:
        c = self.cluster()
        leader = c.leader.name if c is not None and c.leader is not None else None
        refusal = restarts.reinitialize_refusal(leader, self.holds_lock(), self.busy(), force)
        if refusal is not None:
            return refusal
        member = c.members.get(leader) if c is not None and leader else None
        if member is None or not member.conn_url:
            return 503, f"the leader {leader} publishes no connection address, can not reinitialize"
        log.warning("reinitializing this replica from %s on request: its data directory will be replaced", leader)
        self.link.request(ipc.Reinitialize, leader=member.name, leader_conn_url=member.conn_url, force=force,
                          from_leader=from_leader)
        return 200, "reinitialize started"
