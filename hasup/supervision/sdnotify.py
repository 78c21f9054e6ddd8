"""Talking to systemd for a Type=notify unit: one datagram per state to $NOTIFY_SOCKET.

The supervisor alone talks to systemd (the unit has NotifyAccess=main), so
`Notifier.from_environment` takes NOTIFY_SOCKET, WATCHDOG_USEC and
WATCHDOG_PID out of os.environ before any worker is forked: PostgreSQL,
built with systemd support, would otherwise report READY=1 as the unit's.

Sending never blocks (MSG_DONTWAIT): a systemd that cannot keep up loses a
status line, never the supervisor's loop.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("hasup.supervision.sdnotify")

EXTEND_EVERY = 10.0  # seconds between EXTEND_TIMEOUT_USEC while a start or stop is in progress
EXTEND_BY = 30.0  # each one gives systemd this long before it may time us out


def socket_address(value: str) -> str | bytes:
    """$NOTIFY_SOCKET as an AF_UNIX address: '@name' is the abstract socket '\\0name'."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends sd_notify messages; does nothing when not run by systemd (no NOTIFY_SOCKET)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None  # pet twice per period
        self.sock: socket.socket | None = None
        self.failed = False
        self.status = ""
        if address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.set_inheritable(False)

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str]) -> Notifier:
        """Take systemd's variables out of environ (children must not inherit them)."""
        address = environ.pop("NOTIFY_SOCKET", None) or None
        usec = environ.pop("WATCHDOG_USEC", None)
        pid = environ.pop("WATCHDOG_PID", None)
        watchdog: int | None = None
        try:
            # The watchdog is ours only when systemd names our pid (or no pid at all).
            if usec and (not pid or int(pid) == os.getpid()):
                watchdog = int(usec) or None
        except ValueError:
            watchdog = None
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def fileno(self) -> int | None:
        return self.sock.fileno() if self.sock is not None else None

    def send(self, *fields: str) -> bool:
        """Send 'KEY=value' fields in one datagram; False when not sent."""
        if self.sock is None or self.address is None:
            return False
        try:
            self.sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, socket_address(self.address))
            return True
        except OSError as exc:
            if not self.failed:  # once: a missing socket would otherwise fill the log
                self.failed = True
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
            return False

    def ready(self, status: str) -> bool:
        self.status = status
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def set_status(self, status: str) -> bool:
        if status == self.status:
            return False
        self.status = status
        return self.send(f"STATUS={status}")

    def extend_timeout(self, seconds: float = EXTEND_BY) -> bool:
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def stopping(self, status: str = "stopping") -> bool:
        self.status = status
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def describe(role: str | None, state: str | None, leader: str | None, me: str, paused: bool) -> str:
    """The one-line STATUS= systemctl shows: role and state, and who leads."""
    if role is None:
        text = "waiting for PostgreSQL"
    else:
        text = f"{role}, {state or 'unknown'}"
    if leader is None:
        text += "; no leader"
    elif leader == me:
        text += "; holds the leader lock"
    else:
        text += f"; leader {leader}"
    return text + ("; paused" if paused else "")
