"""The request loop's scheduler hint (hasup/api/sched.py): granted where the kernel knows it, harmless elsewhere."""

from __future__ import annotations

import os
import threading

from hasup.api import sched


def slice_of_thread() -> int | None:
    """se.slice of the calling thread, from /proc (None where the kernel does not show it)."""
    with open("/proc/thread-self/sched") as f:
        for line in f:
            if line.startswith("se.slice"):
                return int(line.split(":")[1])
    return None


def test_a_thread_gets_the_slice_it_asks_for_and_keeps_its_nice_value() -> None:
    result: dict[str, object] = {}

    def ask() -> None:  # in a thread of its own: pytest's main thread keeps its slice
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        before = slice_of_thread()
        result["granted"] = sched.short_slice(300_000)
        result["before"], result["after"] = before, slice_of_thread()
        result["nice"] = (nice, os.getpriority(os.PRIO_PROCESS, 0))

    t = threading.Thread(target=ask)
    t.start()
    t.join(10)
    nice_before, nice_after = result["nice"]  # type: ignore[misc]
    assert nice_after == nice_before
    if result["granted"]:
        assert result["after"] == 300_000, result
    else:  # an older kernel refuses the field: nothing may have changed
        assert result["after"] == result["before"], result
