"""Driver for the emulated watchdog device (`watchdog.driver: testing`, `watchdog.device` = its socket).

It speaks the emulator's line protocol and behaves like the Linux driver
towards the Petter: opening arms, set_timeout pets and reports the timeout
in force, disarm is the magic close.
"""

from __future__ import annotations

import socket

from hasup.watchdog.petter import DeviceError

IO_TIMEOUT = 1.0  # a request to the emulator is a local syscall-like exchange


class EmulatedWatchdog:
    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self._buf = b""

    def _request(self, line: str) -> int:
        if self.sock is None:
            raise DeviceError(f"{self.path} is not open")
        try:
            self.sock.sendall((line + "\n").encode())
            while b"\n" not in self._buf:
                chunk = self.sock.recv(256)
                if not chunk:
                    raise DeviceError(f"{self.path}: the emulated device went away")
                self._buf += chunk
        except OSError as exc:
            raise DeviceError(f"{self.path}: {exc}") from exc
        answer, self._buf = self._buf.split(b"\n", 1)
        word, _, rest = answer.decode().partition(" ")
        if word != "OK":
            raise DeviceError(f"{self.path}: {rest or answer.decode()}")
        return int(rest)

    def open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(IO_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise DeviceError(f"cannot open watchdog device {self.path}: {exc.strerror or exc}") from exc
        self.sock = sock

    def set_timeout(self, seconds: int) -> int:
        return self._request(f"SETTIMEOUT {seconds}")

    def keepalive(self) -> None:
        self._request("KEEPALIVE")

    def disarm(self) -> None:
        try:
            self._request("V")
        finally:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
