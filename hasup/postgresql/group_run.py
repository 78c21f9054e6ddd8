"""Running a user's restore command in a process group of its own, killable as a whole.

A backup tool is often a shell script that starts others (a downloader, a decompressor); killing
only the script would leave them writing into the data directory.  So each command starts a new
session (its own process group), and a timeout, a shutdown or a cancel signals the whole group:
SIGTERM, then SIGKILL after a grace period, confirmed by asking the kernel whether anyone is left.
A process that starts a session of its own escapes this, as it escapes any supervisor.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

TERM_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a group
KILL_WAIT = 5.0  # seconds to wait for the kernel to confirm a SIGKILLed group gone
OUTPUT_LINE = 1000  # characters of one output line kept for the log
TAIL_LINES = 5  # output lines quoted in a failure's message
POLL = 0.2  # seconds between looks at the cancel flag while a command runs


@dataclass(frozen=True)
class Outcome:
    code: int | None  # exit status; None when it was killed (timeout, cancel) or could not start
    timed_out: bool = False
    cancelled: bool = False
    tail: str = ""  # its last output lines, for the message
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.code == 0

    def describe(self, name: str) -> str:
        if self.timed_out:
            what = "timed out and was killed"
        elif self.cancelled:
            what = "was cancelled"
        elif self.code is None:
            what = "could not start"
        else:
            what = f"exited {self.code}"
        return f"{name} {what}" + (f": {self.tail}" if self.tail else "")


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs code.  A zombie runs none and only its parent can
    clear it (under a subreaper that may take a while), so it does not count."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return True  # cannot tell: say alive, the caller waits and escalates
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


class GroupRunner:
    """Runs one command at a time.  kill() (from any thread) ends the running one; while cancelled()
    says so, no command starts.  The caller sets its cancel flag before calling kill(): then a command
    either starts before kill() looks (and is killed) or sees the flag (and never starts)."""

    def __init__(self, cancelled: Callable[[], bool], alive: Callable[[int], bool] = group_alive) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._cancelled = cancelled
        self._alive = alive

    def kill(self) -> None:
        """SIGTERM the running command's group now; its run() (on the action's thread) sees the cancel
        and finishes the job, SIGKILL included.  Never blocks: the caller is a worker's main loop."""
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except OSError:
                pass

    def run(self, cmd: Sequence[str], timeout: float, env: dict[str, str] | None, label: str) -> Outcome:
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        with self._lock:
            if self._cancelled():
                return Outcome(None, cancelled=True)
            try:
                proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, text=True, errors="replace",
                                        start_new_session=True)
            except OSError as exc:
                return Outcome(None, tail=f"{cmd[0]}: {exc}")
            self._proc = proc
        reader = threading.Thread(target=_relay, args=(proc, label, tail), name=f"{label} output", daemon=True)
        reader.start()
        timed_out = False
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and not self._cancelled():
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    log.error("%s still running after %.0fs: killing its process group %d", label, timeout,
                              proc.pid)
                    break
                try:
                    proc.wait(min(left, POLL))
                except subprocess.TimeoutExpired:
                    pass
        finally:
            # Whatever it started and left behind (or all of it, after a timeout) goes too: nothing
            # may keep writing into the data directory once hasup moves on.
            terminate_group(proc, self._alive)
            with self._lock:
                self._proc = None
            cancelled = self._cancelled()
        # The pipe closes when the last process holding it exits; one that escaped the group may
        # keep it open, so the reader is not waited for unboundedly.
        reader.join(TERM_GRACE)
        text = " | ".join(line for line in tail)
        if timed_out or (cancelled and proc.returncode != 0):
            return Outcome(None, timed_out=timed_out, cancelled=not timed_out, tail=text, pid=proc.pid)
        return Outcome(proc.returncode, tail=text, pid=proc.pid)


def _relay(proc: subprocess.Popen[str], label: str, tail: collections.deque[str]) -> None:
    """Log the command's output line by line (a restore's progress belongs in hasup's log)."""
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            text = line.rstrip()[:OUTPUT_LINE]
            tail.append(text)
            log.info("%s: %s", label, text)
    except (OSError, ValueError):
        pass


def terminate_group(proc: subprocess.Popen[str], alive: Callable[[int], bool] = group_alive) -> bool:
    """SIGTERM the process group led by proc, SIGKILL it after TERM_GRACE; True once none is left."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, KILL_WAIT)):
        proc.poll()  # reap the leader, or its zombie would count as a member
        if not alive(pgid):
            return True
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            log.error("not allowed to signal process group %d", pgid)
            return False
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            if not alive(pgid):
                return True
            time.sleep(0.05)
    log.error("process group %d survived SIGKILL for %.0fs", pgid, KILL_WAIT)
    return False
