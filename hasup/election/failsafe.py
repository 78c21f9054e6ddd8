"""failsafe_mode: a leader cut off from etcd keeps leading only if every member says so.

Described for operators in docs/operations.md, "HA policy settings".

The leader keeps the `failsafe` key listing every member.  When etcd cannot
be read, it POSTs /failsafe to each of them; a member that is not leading
answers `200 Accepted` and, for ttl seconds, treats the sender as the
leader even if etcd comes back without a leader key (no leader race).
Only when every member confirms does the leader keep its role, and then,
since no member will take over before the ping plus ttl, it may extend its
watchdog lease that far.  Otherwise it demotes, as without failsafe.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable

from hasup import ipc
from hasup.config import Config
from hasup.dcs.model import Cluster
from hasup.peers import client_context, failsafe_confirmed

log = logging.getLogger("hasup.election")


class Failsafe:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.members: dict[str, str] = {}  # the failsafe key as last read
        self.pinged_by: tuple[str, float] | None = None  # (leader name, until) from its last ping
        self.confirmed_until = 0.0  # monotonic: every member confirmed our leading until then

    def remember(self, cluster: Cluster) -> None:
        self.members = {str(k): str(v) for k, v in (cluster.failsafe or {}).items()}

    def confirm(self, call: Callable[..., bool], pg: ipc.PgState | None, enabled: bool) -> bool:
        """etcd is unreachable: may our running primary keep leading?  Ask every other listed member;
        `call` runs the blocking fan-out off the loop (Offloader.call)."""
        if not enabled or pg is None or pg.role != "primary" or pg.state != "running":
            return False
        me = self.cfg.name
        if me not in self.members:
            log.warning("failsafe: I am not listed in the failsafe key, so I cannot keep leading")
            return False
        others = {n: url for n, url in self.members.items() if n != me}
        body = {"name": me, "conn_url": self.cfg.postgresql.conn_url, "api_url": self.cfg.restapi.api_url}
        ok = bool(call(failsafe_confirmed, others, body, self._auth(), client_context(self.cfg.restapi)))
        if not ok:
            log.warning("failsafe: not every member confirmed; demoting")
        return ok

    def active_until(self) -> float:
        """Monotonic time failsafe mode holds until, on this node: as the confirmed leader, or as a member
        its leader pinged; in the past when it does not hold."""
        pinged = self.pinged_by[1] if self.pinged_by is not None else 0.0
        return max(self.confirmed_until, pinged)

    def on_ping(self, leader: str, pg: ipc.PgState | None, ttl: float) -> tuple[int, str]:
        """Another node, cut off from etcd, asks whether it may keep leading."""
        if pg is not None and pg.role == "primary" and pg.state == "running":
            return 500, "Running as a leader"
        self.pinged_by = (leader, time.monotonic() + ttl)
        return 200, "Accepted"

    def answer(self, msg: ipc.Message, pg: ipc.PgState | None, enabled: bool, ttl: float) -> ipc.AdminReply | None:
        """The reply to POST /failsafe relayed by the api worker; None for any other message."""
        if not (isinstance(msg, ipc.AdminRequest) and msg.action == "failsafe"):
            return None
        code, text = self.on_ping(str(msg.params.get("name") or ""), pg, ttl) if enabled else \
            (502, "Failsafe mode is not enabled")
        return ipc.AdminReply(msg.id, code, text)

    def leader(self, cluster: Cluster | None) -> str | None:
        """The leader that pinged us within ttl, if any: it still leads, whatever etcd says meanwhile.

        The promise protects a running primary.  Once etcd answers again and that leader's own member
        key says its PostgreSQL is not one (fenced, stopped, demoted), nobody is left to protect."""
        if self.pinged_by is None or time.monotonic() >= self.pinged_by[1]:
            return None
        name = self.pinged_by[0]
        member = cluster.members.get(name) if cluster is not None else None
        if member is not None and not (member.state == "running" and member.data.get("role") == "primary"):
            log.info("failsafe: %s reports PostgreSQL %s as %s: it no longer needs our promise", name,
                     member.state, member.data.get("role"))
            self.pinged_by = None
            return None
        return name

    def _auth(self) -> str | None:
        r = self.cfg.restapi
        if not r.username or not r.password:
            return None
        return "Basic " + base64.b64encode(f"{r.username}:{r.password}".encode()).decode()
