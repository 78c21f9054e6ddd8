"""A latency hint for the api's request loop: a short scheduler time slice (Linux 6.12 and later).

With every core busy (pgbench on the primary, the load balancer's own processes), a health check
waits for the loop thread to get a CPU.  Linux's EEVDF scheduler lets a thread ask for a shorter
slice (sched_setattr's sched_runtime for SCHED_OTHER): its share of CPU stays what it was, but once
woken it is picked sooner and may preempt a thread with a longer slice.  No privilege is needed; on
an older kernel or another architecture nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}
_SCHED_OTHER = 0


def short_slice(nanoseconds: int) -> bool:
    """Ask for a time slice of nanoseconds for the calling thread (and threads it starts later); True if granted."""
    number = _SYS_SCHED_SETATTR.get(platform.machine())
    if number is None:
        return False
    try:
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        # struct sched_attr, first version (48 bytes): size, policy, flags, nice, priority, runtime, deadline,
        # period.  The nice value is passed unchanged: only the slice is asked for.
        attr = ctypes.create_string_buffer(struct.pack("=IIqiIQQQ", 48, _SCHED_OTHER, 0, nice, 0, nanoseconds, 0, 0),
                                           48)
        return int(ctypes.CDLL(None, use_errno=True).syscall(number, 0, attr, 0)) == 0
    except (OSError, AttributeError):
        return False
