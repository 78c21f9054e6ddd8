"""Every ioctl path of the Linux watchdog driver, against a recording fake."""

from __future__ import annotations

import errno
import os

import pytest

from hasup.watchdog import linux
from hasup.watchdog.linux import LinuxWatchdog, OsCalls
from hasup.watchdog.petter import DeviceError


class FakeKernel:
    """Behaves like a watchdog driver; records each call."""

    def __init__(self, options: int = linux.WDIOF_SETTIMEOUT | linux.WDIOF_MAGICCLOSE, clamp: int | None = None,
                 fail: dict[str, int] | None = None) -> None:
        self.options = options
        self.clamp = clamp  # a device that only does this timeout, whatever is asked
        self.fail = fail or {}
        self.timeout = 60
        self.calls: list[tuple] = []
        self.closed = False
        self.written: list[bytes] = []

    def open(self, path: str, flags: int) -> int:
        self.calls.append(("open", path, flags))
        if "open" in self.fail:
            raise OSError(self.fail["open"], os.strerror(self.fail["open"]))
        return 42

    def write(self, fd: int, data: bytes) -> int:
        self.calls.append(("write", fd, data))
        self.written.append(data)
        return len(data)

    def close(self, fd: int) -> None:
        self.calls.append(("close", fd))
        self.closed = True

    def ioctl(self, fd: int, request: int, buf, mutate: bool):
        name = {linux.WDIOC_GETSUPPORT: "GETSUPPORT", linux.WDIOC_SETTIMEOUT: "SETTIMEOUT",
                linux.WDIOC_GETTIMEOUT: "GETTIMEOUT", linux.WDIOC_KEEPALIVE: "KEEPALIVE"}[request]
        self.calls.append(("ioctl", fd, name, list(buf) if name != "GETSUPPORT" else None))
        if name in self.fail:
            raise OSError(self.fail[name], os.strerror(self.fail[name]))
        if name == "GETSUPPORT":
            buf[:] = linux.WATCHDOG_INFO.pack(self.options, 7, b"Fake Watchdog")
        elif name == "SETTIMEOUT":
            self.timeout = self.clamp or buf[0]
        elif name == "GETTIMEOUT":
            buf[0] = self.timeout
        return 0


def driver(kernel: FakeKernel) -> LinuxWatchdog:
    return LinuxWatchdog("/dev/watchdog", OsCalls(open=kernel.open, write=kernel.write, close=kernel.close,
                                                 ioctl=kernel.ioctl))


def test_ioctl_numbers_match_the_kernel_on_x86_64():
    assert (linux.WDIOC_GETSUPPORT, linux.WDIOC_KEEPALIVE, linux.WDIOC_SETTIMEOUT, linux.WDIOC_GETTIMEOUT) == \
        (0x80285700, 0x80045705, 0xC0045706, 0x80045707)


def test_open_set_timeout_pet_and_magic_close():
    k = FakeKernel()
    d = driver(k)
    d.open()
    assert d.support is not None and d.support.identity == "Fake Watchdog" and d.support.magic_close
    assert d.set_timeout(4) == 4
    d.keepalive()
    d.disarm()
    assert [c[0] if c[0] != "ioctl" else c[2] for c in k.calls] == \
        ["open", "GETSUPPORT", "SETTIMEOUT", "GETTIMEOUT", "KEEPALIVE", "write", "close"]
    assert k.calls[0] == ("open", "/dev/watchdog", os.O_WRONLY)
    assert k.written == [b"V"] and k.closed and d.fd is None


def test_a_device_that_refuses_the_requested_timeout_reports_the_real_one():
    k = FakeKernel(clamp=30)
    d = driver(k)
    d.open()
    assert d.set_timeout(4) == 30  # the caller (Petter) must not trust 4 s


@pytest.mark.parametrize("fail,step,message", [
    ({"open": errno.EACCES}, "open", "cannot open watchdog device /dev/watchdog: Permission denied"),
    ({"open": errno.ENOENT}, "open", "No such file or directory"),
    ({"GETSUPPORT": errno.ENOTTY}, "open", "WDIOC_GETSUPPORT failed"),
    ({"SETTIMEOUT": errno.EINVAL}, "set_timeout", "WDIOC_SETTIMEOUT failed: Invalid argument"),
    ({"GETTIMEOUT": errno.EIO}, "set_timeout", "WDIOC_GETTIMEOUT failed"),
    ({"KEEPALIVE": errno.EIO}, "keepalive", "WDIOC_KEEPALIVE failed"),
])
def test_every_failure_is_a_clear_device_error(fail, step, message):
    d = driver(FakeKernel(fail=fail))
    steps = {"open": d.open, "set_timeout": lambda: d.set_timeout(4), "keepalive": d.keepalive}
    for name, call in steps.items():
        if name == step:
            with pytest.raises(DeviceError, match=message):
                call()
            return
        call()  # the steps before the failing one succeed
    pytest.fail(f"unknown step {step}")


def test_without_settimeout_support_the_timeout_cannot_be_set():
    d = driver(FakeKernel(options=linux.WDIOF_MAGICCLOSE))
    d.open()
    with pytest.raises(DeviceError, match="cannot set its timeout"):
        d.set_timeout(4)


def test_without_magic_close_it_cannot_be_disarmed():
    k = FakeKernel(options=linux.WDIOF_SETTIMEOUT)
    d = driver(k)
    d.open()
    with pytest.raises(DeviceError, match="magic close"):
        d.disarm()
    assert b"V" not in k.written  # and nothing pretended to disarm it


@pytest.mark.parametrize("seconds", [0, -1, 65535])
def test_timeouts_out_of_range_are_refused_before_any_ioctl(seconds):
    k = FakeKernel()
    d = driver(k)
    d.open()
    before = len(k.calls)
    with pytest.raises(DeviceError, match="outside"):
        d.set_timeout(seconds)
    assert len(k.calls) == before


def test_calls_on_a_closed_device_fail_clearly():
    with pytest.raises(DeviceError, match="not open"):
        driver(FakeKernel()).keepalive()
