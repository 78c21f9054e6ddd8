"""How a request thread in a gunicorn worker reaches election: through the api master.

Only the master may write on the supervisor pipe (a second writer would
interleave frames), and gunicorn may replace its worker at any time, so
the master listens on an abstract-namespace SOCK_SEQPACKET socket made
before gunicorn forks.  Each operator call is one connection: one
AdminRequest datagram in, one AdminReply datagram out.  Abstract sockets
have no file permissions, so the master accepts only peers of its own uid.
"""

from __future__ import annotations

import logging
import os
import secrets
import selectors
import socket
import struct
import time
from typing import Any

from hasup import ipc

log = logging.getLogger(__name__)

_PEERCRED = struct.Struct("3i")  # pid, uid, gid
BACKLOG = 16
GRACE = 5.0  # keep a request this long past its deadline: a late reply still beats "outcome unknown"


class RelayClient:
    """One blocking call per connection; safe to use from any thread of any gunicorn worker."""

    def __init__(self, address: str) -> None:
        self.address = address

    def call(self, action: str, params: dict[str, Any], timeout: float) -> tuple[int, str]:
        request = ipc.AdminRequest(0, time.monotonic() + timeout, action, params)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                sock.settimeout(timeout)
                sock.connect(self.address)
                sock.send(ipc.encode(request, 0, time.monotonic()))
                data = sock.recv(ipc.MAX_FRAME)
        except TimeoutError:
            return 503, f"{action}: no answer within {timeout:.0f} seconds, the outcome is unknown"
        except OSError as exc:
            return 503, f"{action}: the api cannot reach the election worker ({exc.strerror or exc})"
        if not data:
            return 503, f"{action}: the election worker went away, the outcome is unknown"
        try:
            reply = ipc.decode(data).message
        except ipc.ProtocolError:
            return 503, f"{action}: unreadable answer from the api master"
        if not isinstance(reply, ipc.AdminReply):
            return 503, f"{action}: unexpected answer {type(reply).__name__}"
        return reply.code, reply.message


class RelayServer:
    """The master's side: accepts calls, numbers them, and hands each reply to its caller."""

    def __init__(self) -> None:
        self.address = f"\0hasup-api-{os.getpid()}-{secrets.token_hex(8)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.set_inheritable(False)
        self.sock.bind(self.address)
        self.sock.listen(BACKLOG)
        self.sock.setblocking(False)
        self.selector: selectors.BaseSelector | None = None
        self.waiting: dict[int, tuple[socket.socket, float]] = {}  # id -> (caller, deadline)
        self.next_id = 1

    def attach(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        selector.register(self.sock, selectors.EVENT_READ, self)

    def close(self) -> None:
        for conn, _ in self.waiting.values():
            self._drop(conn)
        self.waiting.clear()
        self.sock.close()

    def handle(self, fileobj: Any) -> list[ipc.AdminRequest]:
        """Readable: a new caller, a caller's request, or a caller that gave up."""
        if fileobj is self.sock:
            self._accept()
            return []
        conn: socket.socket = fileobj
        try:
            data = conn.recv(ipc.MAX_FRAME)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        pending = next((rid for rid, (c, _) in self.waiting.items() if c is conn), None)
        if not data or pending is not None:
            # EOF (the caller timed out or went away), or a second datagram we never asked for.
            if pending is not None:
                del self.waiting[pending]
            self._drop(conn)
            return []
        try:
            msg = ipc.decode(data).message
        except ipc.ProtocolError:
            msg = None
        if not isinstance(msg, ipc.AdminRequest):
            log.warning("api relay: ignoring a malformed request")
            self._drop(conn)
            return []
        rid, self.next_id = self.next_id, self.next_id + 1
        self.waiting[rid] = (conn, msg.deadline)
        return [ipc.AdminRequest(rid, msg.deadline, msg.action, dict(msg.params))]

    def answer(self, reply: ipc.AdminReply) -> None:
        entry = self.waiting.pop(reply.id, None)
        if entry is None:
            return  # the caller gave up already
        conn = entry[0]
        try:
            conn.send(ipc.encode(reply, 0, time.monotonic()))
        except OSError:
            pass
        self._drop(conn)

    def expire(self, now: float) -> None:
        for rid, (conn, deadline) in list(self.waiting.items()):
            if now > deadline + GRACE:
                del self.waiting[rid]
                self._drop(conn)

    def next_expiry(self) -> float | None:
        """When expire() next has something to drop (monotonic), None while nothing waits."""
        return min((deadline + GRACE for _conn, deadline in self.waiting.values()), default=None)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("api relay: accept failed: %s", exc)
                return
            _pid, uid, _gid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                               _PEERCRED.size))
            if uid != os.getuid():
                log.warning("api relay: refused a connection from uid %d", uid)
                conn.close()
                continue
            conn.setblocking(False)
            if self.selector is not None:
                self.selector.register(conn, selectors.EVENT_READ, self)

    def _drop(self, conn: socket.socket) -> None:
        if self.selector is not None:
            try:
                self.selector.unregister(conn)
            except (KeyError, ValueError):
                pass
        conn.close()
