"""Dropping Linux capabilities in workers that must not have them.

systemd's AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW gives them to every
process of the unit, PostgreSQL included, and through it to anything a
database superuser runs (COPY ... FROM PROGRAM).  Only the vip worker needs
them, so every other worker clears its ambient set (nothing it executes
inherits them) and its own permitted and effective sets.
"""

from __future__ import annotations

import ctypes
import os

PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def current() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) as 64-bit masks of this thread."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if _libc().capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    low, high = data[0], data[1]
    return (low.effective | high.effective << 32, low.permitted | high.permitted << 32,
            low.inheritable | high.inheritable << 32)


def drop_all() -> bool:
    """Clear the ambient, effective, permitted and inheritable sets; True when anything was dropped.

    Skipped for root: a process running as uid 0 without capabilities would fail in
    surprising ways, and hasup does not run as root (PostgreSQL refuses to).
    """
    if os.geteuid() == 0:
        return False
    libc = _libc()
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL on old kernels: nothing to clear
    try:
        if not any(current()):
            return False
    except OSError:
        return False
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()  # all zero
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    return True
