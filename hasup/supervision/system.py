"""The supervisor's only way to the operating system: fork, signals, waitpid, the clock and /proc.

Everything the supervisor's loop does to processes goes through a `System`,
so its policy (restarts, heartbeats, shutdown order, routing) runs in unit
tests against a fake that records what was asked and answers as a test
says, the way the watchdog's Petter takes its clock and device.  The real
one, `LinuxSystem`, is thin on purpose: each method is one call or a few,
with nothing to decide.

Pipes are not part of it: socketpairs work the same in a test, and the
supervisor's selector needs the real sockets.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Protocol

from hasup.proc import ProcStat, Sent, read_stat, send
from hasup.supervision.fence import FenceResult, fence_postgres, find_postmaster
from hasup.timing import FENCE_TIMEOUT

STACK_LIMIT = 256 * 1024  # bytes of a dumped stack the supervisor reads back: every thread, deep, fits


class StackFile(Protocol):
    """Where a worker's faulthandler writes its stack when a fatal signal (SIGABRT, SIGSEGV) ends it.

    A file, not a pipe: faulthandler writes from inside the signal handler, and a write to a
    full pipe nobody reads would hang the dying worker instead of letting it die."""

    def fileno(self) -> int: ...

    def read(self) -> str:
        """What the worker wrote (at most STACK_LIMIT bytes), once it is gone."""

    def close(self) -> None: ...


class System(Protocol):
    def monotonic(self) -> float: ...

    def fork(self, child: Callable[[], int], worker_end: socket.socket) -> int:
        """Run child() in a new process that exits with its result; the new pid.

        worker_end is the pipe end the child keeps; the parent closes its copy once fork returns."""

    def kill(self, pid: int, sig: int) -> bool:
        """Signal pid; False when it is gone already (never raises for that)."""

    def signal_process(self, pid: int, sig: int) -> bool:
        """Signal pid only while it is still the process /proc shows under that pid; True when sent."""

    def reap(self) -> list[tuple[int, int]]:
        """(pid, exit code) of every child that ended, without waiting; a signal's death is -signum."""

    def stat(self, pid: int) -> ProcStat | None:
        """/proc/<pid>/stat; None when the process is gone."""

    def find_postmaster(self, hint: int | None, data_dir: str) -> int | None:
        """The running postmaster of data_dir (hint first, then postmaster.pid), verified through /proc."""

    def fence(self, postmaster_pid: int | None, data_dir: str, spare: set[int]) -> FenceResult:
        """SIGKILL every process of data_dir's PostgreSQL and confirm through /proc that none is left;
        the pids in spare (our workers) are never touched."""

    def stack_file(self) -> StackFile | None:
        """A new StackFile for a worker about to start; None when none can be made (it then dumps to stderr)."""


class MemStackFile:
    """An anonymous in-memory file (memfd): nothing on disk, gone when the last descriptor closes."""

    def __init__(self) -> None:
        # Close-on-exec: PostgreSQL and hooks, which the workers exec, must not hold it.
        self.fd = os.memfd_create("hasup-stack", os.MFD_CLOEXEC)

    def fileno(self) -> int:
        return self.fd

    def read(self) -> str:
        try:
            data = os.pread(self.fd, STACK_LIMIT + 1, 0)
        except OSError:
            return ""
        text = data[:STACK_LIMIT].decode(errors="replace")
        return text + (f"\n[... cut at {STACK_LIMIT} bytes]" if len(data) > STACK_LIMIT else "")

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class LinuxSystem:
    """The real thing."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def monotonic(self) -> float:
        return time.monotonic()

    def fork(self, child: Callable[[], int], worker_end: socket.socket) -> int:
        gc.freeze()  # what we allocated since the last fork: shared, and never traversed by the child's GC
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = child()
            finally:
                os._exit(code)  # never back into the supervisor's frames
        return pid

    def kill(self, pid: int, sig: int) -> bool:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    def signal_process(self, pid: int, sig: int) -> bool:
        st = read_stat(pid)
        return st is not None and send(pid, st.starttime, sig) is Sent.SENT

    def reap(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return out
            if pid == 0:
                return out
            out.append((pid, os.waitstatus_to_exitcode(status)))

    def stat(self, pid: int) -> ProcStat | None:
        return read_stat(pid)

    def find_postmaster(self, hint: int | None, data_dir: str) -> int | None:
        pid, _doubt = find_postmaster(hint, data_dir)
        return pid

    def fence(self, postmaster_pid: int | None, data_dir: str, spare: set[int]) -> FenceResult:
        return fence_postgres(postmaster_pid, data_dir, self.pid, spare, timeout=FENCE_TIMEOUT)

    def stack_file(self) -> StackFile | None:
        try:
            return MemStackFile()
        except OSError:  # out of descriptors, say: the worker still runs, its stack goes to stderr
            return None


def describe_exit(code: int) -> str:
    """An exit code as reap() gives it, for the log: 'exit 1', 'SIGKILL'."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"
