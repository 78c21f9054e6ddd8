"""Election's side of the lease pipe (docs/design.md §4): leases while we may lead, a disarm once it is safe.

The watchdog worker pets its device only under the newest lease; the
datagrams carry a sequence number so it can drop a stale one.
"""

from __future__ import annotations

import socket

from hasup import ipc
from hasup.config import DynamicConfig


class WatchdogLeases:
    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.seq = 0
        self.valid_until = 0.0  # monotonic: etcd cannot expire our leader key before this
        self.leased = False  # leases were sent since the last disarm

    def grant(self, started: float, d: DynamicConfig, paused: bool) -> None:
        """A write of the leader key that started at `started` succeeded."""
        self.valid_until = started + d.ttl
        if paused:
            # Maintenance mode: the operator may stop PostgreSQL or hasup at will; a reset would surprise.
            if self.leased:
                self.disarm("cluster paused")
            return
        self.leased = True
        self.resend(d)

    def resend(self, d: DynamicConfig) -> None:
        """The lease in force, again (a restarted watchdog worker's device is armed and counting).

        Only while leased: a lease after the disarm (or from an election worker that never led) is no lease,
        and the software fence would take an old one for a lease that ran out and kill a replica."""
        if self.leased:
            self._send(ipc.Lease(self.valid_until, d.ttl, d.loop_wait, d.retry_timeout))

    def expire(self) -> None:
        """The key is gone or may be: nothing vouches for our lock any more."""
        self.valid_until = 0.0

    def disarm(self, reason: str) -> None:
        self._send(ipc.Disarm(reason))
        self.leased = False

    def disarm_if_safe(self, pg: ipc.PgState | None, holds_lock: bool) -> None:
        """Disarm only once PostgreSQL is confirmed not to be a running primary and we do not lead."""
        if self.leased and not holds_lock and pg is not None \
                and not (pg.role == "primary" and pg.state not in ("stopped", "crashed")):
            self.disarm(f"postgres is {pg.state} as {pg.role}")

    def _send(self, msg: ipc.Message) -> None:
        if self.sock is not None:
            self.seq += 1
            ipc.send_datagram(self.sock, msg, self.seq)
