"""Fencing a hung PostgreSQL: SIGKILL every process of it and confirm through /proc that none is left.

The supervisor calls this from its one loop when election asks for a
fence (DESIGN.md §3).  Election deletes the leader key only when the
result is confirmed, so "confirmed" must never be said lightly: a
process we failed to find or to kill could still commit a transaction
that the new leader never sees.  Hence only /proc reads and signals
(nothing here can hang on the database), a hard time bound, and, when
in doubt, an unconfirmed result so that the watchdog resets the node.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from hasup.proc import (
    SERVER_NAMES,
    ProcStat,
    Sent,
    children_map,
    descendants,
    is_dead,
    is_server_process,
    postmaster_from_file,
    postmaster_verdict,
    read_link,
    read_stat,
    same_dir,
    send,
    snapshot,
)

POLL_INTERVAL = 0.005
STOP_WAIT_SHARE = 0.2  # of the timeout, at most, spent waiting for the postmaster to stop


@dataclass(frozen=True)
class FenceResult:
    confirmed: bool  # every process found is gone (exited, or a zombie: a zombie cannot commit)
    killed: tuple[int, ...]  # pids signalled with SIGKILL
    survivors: tuple[int, ...]  # pids still alive (or unverifiable) at the timeout
    reason: str  # one line for the log


# -- the fence ----------------------------------------------------------------------------------


class _Fence:
    def __init__(self, data_dir: str, supervisor_pid: int, worker_pids: set[int]) -> None:
        self.data_dir = data_dir
        self.supervisor_pid = supervisor_pid
        # Never ours to kill, whatever /proc seems to say.
        self.spared = set(worker_pids) | {supervisor_pid, os.getpid(), 1}
        self.tracked: dict[int, int] = {}  # pid -> starttime of every process we mean to see dead
        self.killed: list[int] = []
        self.denied: set[int] = set()

    def kill(self, pid: int, starttime: int) -> None:
        self.tracked[pid] = starttime
        outcome = send(pid, starttime, signal.SIGKILL)
        if outcome is Sent.SENT and pid not in self.killed:
            self.killed.append(pid)
        elif outcome is Sent.DENIED:
            self.denied.add(pid)

    def orphan_root(self, pid: int, st: ProcStat) -> bool:
        """A server process of ours that lost its postmaster.

        The supervisor is a child subreaper, so a backend whose postmaster
        died is re-parented to it; such a backend keeps its session and can
        still commit.  And wherever it went (a postmaster started outside our
        tree leaves its orphans to init), it still works in our data directory.
        """
        if st.ppid == self.supervisor_pid and is_server_process(pid):
            return True
        if st.comm not in SERVER_NAMES:
            return False
        try:
            cwd = read_link(pid, "cwd")
        except PermissionError:
            return False  # another user's: we could not signal it anyway
        return cwd is not None and same_dir(cwd, self.data_dir)

    def sweep(self) -> int:
        """Find every live process of ours not yet killed, and kill it; returns how many were new.

        Found by parent pid: backends call setsid(), so process groups and
        sessions miss them.  Whatever we track (the postmaster included) is a
        root too, so a child forked by a process on its way out is found.
        """
        procs = snapshot()
        roots = {pid for pid, st in procs.items()
                 if self.tracked.get(pid) == st.starttime
                 or (pid not in self.spared and not is_dead(st) and self.orphan_root(pid, st))}
        new = 0
        for pid in sorted((roots | descendants(children_map(procs), roots)) - self.spared):
            st = procs.get(pid)
            if st is None or is_dead(st) or self.tracked.get(pid) == st.starttime:
                continue
            self.kill(pid, st.starttime)
            new += 1
        return new

    def alive(self) -> dict[int, ProcStat]:
        """Tracked processes that still run; a pid now held by a newcomer counts as gone."""
        out = {}
        for pid, starttime in self.tracked.items():
            st = read_stat(pid)
            if st is not None and st.starttime == starttime and not is_dead(st):
                out[pid] = st
        return out


def find_postmaster(postmaster_pid: int | None, data_dir: str) -> tuple[int | None, int | None]:
    """(the postmaster of data_dir, a pid we could not verify); either may be None."""
    doubt = None
    for pid in (postmaster_pid, postmaster_from_file(data_dir)):
        if pid is None or pid <= 0:
            continue
        verdict = postmaster_verdict(pid, data_dir)
        if verdict:
            return pid, None
        if verdict is None:
            doubt = pid
    return None, doubt


def wait_stopped(pid: int, starttime: int, until: float) -> bool:
    """Wait for a SIGSTOP to land: kill() only queues it, and a process in a fork() call finishes the fork first."""
    while True:
        st = read_stat(pid)
        if st is None or st.starttime != starttime or st.state in ("T", "t") or is_dead(st):
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(POLL_INTERVAL)


def fence_postgres(postmaster_pid: int | None, data_dir: str, supervisor_pid: int, worker_pids: set[int],
                   timeout: float = 1.0) -> FenceResult:
    """SIGKILL the postmaster of data_dir and every process of it, and confirm through /proc they are gone.

    Never raises for processes that vanish meanwhile; returns within about
    `timeout` seconds (plus one /proc scan).
    """
    start = time.monotonic()
    fence = _Fence(data_dir, supervisor_pid, worker_pids)
    try:
        return _run(fence, postmaster_pid, start, timeout)
    except OSError as exc:
        # Vanished processes are handled where they are read; this is the kernel refusing
        # us something else (say, out of file descriptors), and then we can vouch for nothing.
        return FenceResult(False, tuple(fence.killed), tuple(sorted(fence.tracked)),
                           f"fence NOT confirmed: {exc}")


def _run(fence: _Fence, postmaster_pid: int | None, start: float, timeout: float) -> FenceResult:
    deadline = start + timeout
    data_dir = fence.data_dir
    # 1. A missing postmaster is no error: it may have died already, leaving only orphans.
    postmaster, doubt = find_postmaster(postmaster_pid, data_dir)
    pm_stat = read_stat(postmaster) if postmaster is not None else None
    not_stopped = False
    if postmaster is not None and pm_stat is not None:
        fence.tracked[postmaster] = pm_stat.starttime
        # 2. Stopped, the postmaster can neither fork backends nor restart after a crash
        # while we look; and its dead children stay zombies (it cannot reap them), so
        # their pids cannot pass to anyone else before we are done.
        outcome = send(postmaster, pm_stat.starttime, signal.SIGSTOP)
        if outcome is Sent.SENT:
            # A postmaster stuck in the kernel (state D, say a hung disk) stops only on its
            # way out: then do not wait long, and count on the rescans below.
            not_stopped = not wait_stopped(postmaster, pm_stat.starttime,
                                           min(deadline, start + timeout * STOP_WAIT_SHARE))
        elif outcome is Sent.DENIED:
            fence.denied.add(postmaster)
    # 3 and 4. Children first, the postmaster last: killed first, it would hand its
    # children to the subreaper while we enumerate (or to init, if it is not below us).
    # SIGKILL works on a stopped process, so no SIGCONT is needed.
    fence.sweep()
    if postmaster is not None and pm_stat is not None:
        fence.kill(postmaster, pm_stat.starttime)
    # 5. Poll until all are dead.  Each round scans again: a process may have forked
    # before our signal landed (or a killed one on its way out), and its child is
    # found only now.  Confirmed only when every tracked process was dead *before* a
    # scan that found nothing new: the dead cannot fork, so nothing can be missing.
    while True:
        alive = fence.alive()
        new = fence.sweep()
        if not alive and not new:
            return _result(fence, doubt is None, start, not_stopped, doubt, {})
        if time.monotonic() >= deadline:
            return _result(fence, False, start, not_stopped, doubt, fence.alive())
        time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))


def _result(fence: _Fence, confirmed: bool, start: float, not_stopped: bool, doubt: int | None,
            alive: dict[int, ProcStat]) -> FenceResult:
    elapsed_ms = (time.monotonic() - start) * 1000
    survivors = sorted(alive) + ([doubt] if doubt is not None and doubt not in alive else [])
    if confirmed:
        what = f"killed {len(fence.killed)} PostgreSQL processes" if fence.killed else "no PostgreSQL process found"
        reason = f"fence confirmed: {what} of {fence.data_dir} in {elapsed_ms:.0f} ms"
    else:
        states = ", ".join(f"{pid} ({st.state})" for pid, st in sorted(alive.items())[:10])
        parts = [f"{len(alive)} still alive: {states}" if alive else ""]
        if doubt is not None:
            parts.append(f"cannot verify pid {doubt} (permission denied reading /proc)")
        if fence.denied:
            parts.append(f"not allowed to signal {sorted(fence.denied)[:10]}")
        if not_stopped:
            parts.append("the postmaster did not stop")
        reason = f"fence NOT confirmed after {elapsed_ms:.0f} ms: " + "; ".join(p for p in parts if p)
    return FenceResult(confirmed, tuple(fence.killed), tuple(survivors), reason)
