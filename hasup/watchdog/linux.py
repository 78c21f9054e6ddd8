"""The Linux watchdog driver: /dev/watchdog through ioctl, with the OS calls injected.

Every failure becomes a DeviceError whose message says what the device
would not do, so `mode: required` can refuse to lead with a reason and
`automatic` can warn once and run unarmed.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hasup.watchdog.petter import DeviceError

# linux/ioctl.h on x86, arm and most others: dir << 30 | size << 16 | type << 8 | nr.
_IOC_READ, _IOC_WRITE = 2, 1
_W = ord("W")


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_W << 8) | nr


WATCHDOG_INFO = struct.Struct("=II32s")  # options, firmware_version, identity
WDIOC_GETSUPPORT = _ioc(_IOC_READ, 0, WATCHDOG_INFO.size)
WDIOC_KEEPALIVE = _ioc(_IOC_READ, 5, 4)
WDIOC_SETTIMEOUT = _ioc(_IOC_READ | _IOC_WRITE, 6, 4)
WDIOC_GETTIMEOUT = _ioc(_IOC_READ, 7, 4)
WDIOF_SETTIMEOUT = 0x0080
WDIOF_MAGICCLOSE = 0x0100
WDIOF_KEEPALIVEPING = 0x8000
MAX_TIMEOUT = 65534


@dataclass(frozen=True)
class Support:
    options: int
    firmware_version: int
    identity: str

    @property
    def can_set_timeout(self) -> bool:
        return bool(self.options & WDIOF_SETTIMEOUT)

    @property
    def magic_close(self) -> bool:
        return bool(self.options & WDIOF_MAGICCLOSE)


@dataclass
class OsCalls:
    """The system calls the driver makes; tests pass recording fakes."""

    open: Callable[[str, int], int] = os.open
    write: Callable[[int, bytes], int] = os.write
    close: Callable[[int], None] = os.close
    ioctl: Callable[[int, int, Any, bool], Any] = fcntl.ioctl


class LinuxWatchdog:
    def __init__(self, path: str = "/dev/watchdog", calls: OsCalls | None = None) -> None:
        self.path = path
        self.calls = calls or OsCalls()
        self.fd: int | None = None
        self.support: Support | None = None

    def _fd(self) -> int:
        if self.fd is None:
            raise DeviceError(f"{self.path} is not open")
        return self.fd

    def _ioctl_int(self, request: int, value: int, name: str) -> int:
        buf = array.array("i", [value])
        try:
            self.calls.ioctl(self._fd(), request, buf, True)
        except OSError as exc:
            raise DeviceError(f"{self.path}: {name} failed: {os.strerror(exc.errno or errno.EIO)}") from exc
        return int(buf[0])

    def open(self) -> None:
        """Open the device (this arms it) and learn what it supports."""
        try:
            self.fd = self.calls.open(self.path, os.O_WRONLY)
        except OSError as exc:
            raise DeviceError(f"cannot open watchdog device {self.path}: "
                              f"{os.strerror(exc.errno or errno.EIO)}") from exc
        buf = bytearray(WATCHDOG_INFO.size)
        try:
            self.calls.ioctl(self.fd, WDIOC_GETSUPPORT, buf, True)
        except OSError as exc:
            raise DeviceError(f"{self.path}: WDIOC_GETSUPPORT failed: "
                              f"{os.strerror(exc.errno or errno.EIO)}") from exc
        options, firmware, identity = WATCHDOG_INFO.unpack(bytes(buf))
        self.support = Support(options, firmware, identity.split(b"\0", 1)[0].decode(errors="replace"))

    def set_timeout(self, seconds: int) -> int:
        """Set the timeout (a pet) and return what the device actually applied."""
        if self.support is None or not self.support.can_set_timeout:
            raise DeviceError(f"{self.path} cannot set its timeout (WDIOF_SETTIMEOUT unsupported)")
        if not 1 <= seconds <= MAX_TIMEOUT:
            raise DeviceError(f"watchdog timeout {seconds}s is outside 1..{MAX_TIMEOUT}")
        self._ioctl_int(WDIOC_SETTIMEOUT, seconds, "WDIOC_SETTIMEOUT")
        # Drivers round or clamp; only the read-back value says when the device fires.
        return self.get_timeout()

    def get_timeout(self) -> int:
        return self._ioctl_int(WDIOC_GETTIMEOUT, 0, "WDIOC_GETTIMEOUT")

    def keepalive(self) -> None:
        self._ioctl_int(WDIOC_KEEPALIVE, 0, "WDIOC_KEEPALIVE")

    def disarm(self) -> None:
        """Magic close: the only way hasup ever stops the timer, after PostgreSQL stopped."""
        fd = self._fd()
        if self.support is None or not self.support.magic_close:
            raise DeviceError(f"{self.path} does not support the magic close: it cannot be disarmed")
        try:
            self.calls.write(fd, b"V")
        except OSError as exc:
            raise DeviceError(f"{self.path}: magic close failed: {os.strerror(exc.errno or errno.EIO)}") from exc
        finally:
            self.calls.close(fd)
            self.fd = None
