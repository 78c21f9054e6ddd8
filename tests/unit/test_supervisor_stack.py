"""A worker aborted by the supervisor leaves its Python stack in the log: a real fork, a real SIGABRT.

The child is set up by the worker runtime itself (hasup.worker.setup_worker), with the stack file the
real System makes; the parent does what the supervisor does when it reaps the worker (log_stack).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
from typing import Any

from hasup import ipc
from hasup.supervision.system import LinuxSystem
from hasup.supervisor import log_stack
from hasup.worker import WorkerContext, setup_worker
from tests.unit.test_supervisor import config

WAIT = 10.0  # seconds any step here may take on a loaded machine before the test fails


def stuck_in_its_loop(ready: int) -> None:
    os.write(ready, b"x")
    while True:
        signal.pause()  # a worker whose loop no longer turns, as a missed heartbeat finds it


def wait_readable(fd: int, what: str) -> None:
    readable, _, _ = select.select([fd], [], [], WAIT)
    assert readable, f"timed out after {WAIT}s waiting for {what}"


def test_a_sigabrt_leaves_the_workers_python_stack_in_the_log(tmp_path: Any, caplog: Any) -> None:
    caplog.set_level(logging.ERROR, "hasup.supervisor")
    system = LinuxSystem()
    stack = system.stack_file()
    assert stack is not None
    ours, theirs = ipc.channel_pair()
    ready_r, ready_w = os.pipe()

    def child() -> int:
        ctx = WorkerContext("api", config(tmp_path), ipc.Channel(theirs, "supervisor"), None, os.getppid(),
                            stack.fileno())
        setup_worker(ctx)
        stuck_in_its_loop(ready_w)
        return 0

    pid = system.fork(child, theirs)
    theirs.close()
    os.close(ready_w)
    pidfd = os.pidfd_open(pid)
    code = None
    try:
        wait_readable(ready_r, "the worker to be set up")
        os.kill(pid, signal.SIGABRT)
        wait_readable(pidfd, "the aborted worker to exit")  # a pidfd turns readable when the process ends
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
    finally:
        if code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for fd in (pidfd, ready_r):
            os.close(fd)
        ours.close()
    assert code == -signal.SIGABRT
    log_stack("api", stack, code)
    [record] = [r for r in caplog.records if "left its stack" in r.getMessage()]
    text = record.getMessage()
    assert text.startswith("api worker (SIGABRT) left its stack:\n")
    assert "Fatal Python error: Aborted" in text
    assert "in stuck_in_its_loop" in text and "test_supervisor_stack.py" in text  # the frame it hung in
    assert record.name == "hasup.supervisor"  # the supervisor's logger: the log writer puts it in the log


def test_a_worker_that_dies_quietly_leaves_nothing_to_log(caplog: Any) -> None:
    stack = LinuxSystem().stack_file()
    assert stack is not None
    log_stack("api", stack, 0)
    assert "left its stack" not in caplog.text
