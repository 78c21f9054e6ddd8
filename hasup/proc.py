"""Processes through /proc, signals that cannot hit a stranger, and the one way a PostgreSQL is killed.

Reading postmaster.pid (read_postmaster_pid) and killing a PostgreSQL tree
with a confirmation (kill_and_confirm) live here and nowhere else: the
supervisor's fence, the postgres worker's last-resort stop and the
watchdog's emulated reset all use them.  Only /proc reads and signals,
nothing that can block on a hung database, so every caller can bound its
time.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

SERVER_NAMES = frozenset({"postgres", "postmaster"})


class ProcStat(NamedTuple):
    comm: str
    state: str
    ppid: int
    num_threads: int
    starttime: int  # clock ticks after boot: with the pid, names one process for good


# -- pure helpers -------------------------------------------------------------------------------


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/<pid>/stat; ValueError when it does not look like one.

    The command name sits in parentheses and may itself hold spaces and
    parentheses (any process can name itself so), so the fields are read
    from the last ')'.
    """
    head, sep, tail = text.rpartition(")")
    _, open_paren, comm = head.partition("(")
    fields = tail.split()
    if not sep or not open_paren or len(fields) < 20:
        raise ValueError(f"not a /proc stat line: {text[:80]!r}")
    return ProcStat(comm, fields[0], int(fields[1]), int(fields[17]), int(fields[19]))


def is_dead(st: ProcStat | None) -> bool:
    """Vanished, or a zombie that runs no code any more.

    State Z alone is not enough: when a thread-group leader exits on its
    own the pid shows Z while its other threads still run, and then
    num_threads says so.
    """
    return st is None or st.state in ("X", "x") or (st.state == "Z" and st.num_threads <= 1)


def is_server_exe(exe: str) -> bool:
    # A package upgrade replaces the binary under a running server; the link then ends in " (deleted)".
    return os.path.basename(exe.removesuffix(" (deleted)")) in SERVER_NAMES


def is_server_cmdline(cmdline: bytes) -> bool:
    """A postgres server process by its command line: the postmaster's argv, or a child's ps title."""
    argv0 = cmdline.split(b"\0", 1)[0].decode(errors="replace")
    return argv0.startswith("postgres:") or os.path.basename(argv0) in SERVER_NAMES


def children_map(procs: dict[int, ProcStat]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for pid, st in procs.items():
        out.setdefault(st.ppid, []).append(pid)
    return out


def descendants(children: dict[int, list[int]], roots: Iterable[int]) -> set[int]:
    """Every process below the roots (not the roots themselves)."""
    out: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in out:
                out.add(child)
                stack.append(child)
    return out


# -- /proc reads --------------------------------------------------------------------------------
# Any of these may race with the process exiting: a vanished process reads as None/False, never raises.


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_stat(f.read())
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


def snapshot() -> dict[int, ProcStat]:
    procs = {}
    with os.scandir("/proc") as it:
        for entry in it:
            if entry.name.isdigit():
                st = read_stat(int(entry.name))
                if st is not None:
                    procs[int(entry.name)] = st
    return procs


def _entries(pid: int) -> Iterator[str]:
    """The process's /proc entry, then (looked up only if needed) those of its threads but the leader.

    When the thread-group leader has exited but other threads live on, the
    pid's own exe, cwd and cmdline read as empty; a live thread's entry
    under task/ still has them.
    """
    yield f"/proc/{pid}"
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return
    yield from (f"/proc/{pid}/task/{t}" for t in tids if t != str(pid))


def read_link(pid: int, what: str) -> str | None:
    """None when gone (or a zombie, or a kernel thread); PermissionError propagates."""
    for d in _entries(pid):
        try:
            return os.readlink(f"{d}/{what}")
        except (FileNotFoundError, ProcessLookupError):
            continue
    return None


def _cmdline(pid: int) -> bytes:
    for d in _entries(pid):
        try:
            with open(f"{d}/cmdline", "rb") as f:
                data = f.read(4096)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if data:
            return data
    return b""


def is_server_process(pid: int) -> bool:
    """A PostgreSQL server process, by its executable or, when that is hidden from us, its command line."""
    try:
        exe = read_link(pid, "exe")
        if exe is not None and is_server_exe(exe):
            return True
    except PermissionError:
        pass
    return is_server_cmdline(_cmdline(pid))


def same_dir(link: str, data_dir: str) -> bool:
    """A /proc cwd link names data_dir (also after the directory was removed under the process)."""
    path = link.removesuffix(" (deleted)")
    if path == os.path.realpath(data_dir):
        return True
    try:
        return path == link and os.path.samefile(path, data_dir)
    except OSError:
        return False


def _uid(path: str) -> int | None:
    try:
        return os.stat(path).st_uid
    except OSError:
        return None


def postmaster_verdict(pid: int, data_dir: str) -> bool | None:
    """Is this live pid the postmaster of data_dir?  None when /proc will not tell us.

    A pid from postmaster.pid (or from a worker's memory) may meanwhile
    name another process: after a crash pids are reused, and pid_max is
    often only 32768.  The postmaster's working directory is its data
    directory (it chdirs there at start), which a reused pid will not share.
    """
    if is_dead(read_stat(pid)):
        return False
    try:
        exe, cwd = read_link(pid, "exe"), read_link(pid, "cwd")
    except PermissionError:
        # These links are hidden across users.  PostgreSQL runs only as its data
        # directory's owner, so another user's process is not ours; but one of that
        # same user we cannot read is a doubt, and a doubt must not be confirmed away.
        # (With the data directory gone, the best guess for its owner is our own user.)
        owner = _uid(data_dir)
        return None if _uid(f"/proc/{pid}") == (os.geteuid() if owner is None else owner) else False
    return exe is not None and cwd is not None and is_server_exe(exe) and same_dir(cwd, data_dir)


# -- postmaster.pid: the one reader ----------------------------------------------------------------

PIDFILE_MAX = 4096  # PostgreSQL writes eight short lines; more is not its lock file
PID_LIMIT = 1 << 22  # the kernel's PID_MAX_LIMIT: no pid is larger


def read_postmaster_pid(data_dir: str) -> int | None:
    """The pid on the first line of data_dir/postmaster.pid, not yet verified; None without a usable one.

    Only a missing, half-written or malformed file means "no postmaster";
    any other error (permissions, no file descriptors left) propagates, so
    that a kill cannot take it for "nothing to kill".
    """
    try:
        with open(os.path.join(data_dir, "postmaster.pid"), "rb") as f:
            pid = int(f.read(PIDFILE_MAX).split(b"\n", 1)[0].decode("ascii"))
    except (FileNotFoundError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    # A single-user backend writes its pid negated: no postmaster then (it is still found by its directory).
    return pid if 0 < pid < PID_LIMIT else None


def find_postmaster(postmaster_pid: int | None, data_dir: str) -> tuple[int | None, int | None]:
    """(the postmaster of data_dir, a pid we could not verify); either may be None.

    The caller's pid (from its memory, say) is tried first, then the one
    in postmaster.pid; each must pass postmaster_verdict.
    """
    doubt = None
    for pid in (postmaster_pid, read_postmaster_pid(data_dir)):
        if pid is None or pid <= 0:
            continue
        verdict = postmaster_verdict(pid, data_dir)
        if verdict:
            return pid, None
        if verdict is None:
            doubt = pid
    return None, doubt


# -- signals ------------------------------------------------------------------------------------


class Sent(Enum):
    SENT = "sent"
    GONE = "gone"
    DENIED = "denied"


def send(pid: int, starttime: int, sig: int) -> Sent:
    """Signal the process (pid, starttime), and no other one that has taken its pid since.

    Through a pidfd the check and the signal name the same process: once
    the pidfd is open, the pid cannot pass to a newcomer between our
    check of starttime and the signal.  Where pidfds are missing (old
    kernel, seccomp) a plain kill leaves a window of microseconds.
    """
    fd = -1
    try:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return Sent.GONE
        except (OSError, AttributeError):
            fd = -1
        st = read_stat(pid)
        if st is None or st.starttime != starttime:
            return Sent.GONE
        if fd >= 0:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
        return Sent.SENT
    except ProcessLookupError:
        return Sent.GONE
    except PermissionError:
        return Sent.DENIED
    finally:
        if fd >= 0:
            os.close(fd)


# -- kill and confirm: the one way a PostgreSQL is killed -------------------------------------------

POLL_INTERVAL = 0.005  # the first rescans come fast: SIGKILLed processes are usually gone within a few ms
POLL_MAX = 0.05  # later ones back off: a process stuck in the kernel may take seconds, and a scan costs CPU
STOP_WAIT_SHARE = 0.2  # of the timeout, at most, spent waiting for the SIGSTOPs to land


def wait_stopped(pid: int, starttime: int, until: float) -> bool:
    """Wait for a SIGSTOP to land: kill() only queues it, and a process in a fork() call finishes the fork first."""
    while True:
        st = read_stat(pid)
        if st is None or st.starttime != starttime or st.state in ("T", "t") or is_dead(st):
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(POLL_INTERVAL)


@dataclass(frozen=True)
class KillResult:
    confirmed: bool  # every process found is gone (exited, or a zombie: a zombie cannot commit)
    killed: tuple[int, ...]  # pids signalled with SIGKILL, in that order
    survivors: tuple[int, ...]  # pids still alive (or unverifiable) at the timeout
    reason: str  # one line for the log


class _Kill:
    def __init__(self, data_dir: str | None, subreaper: int | None, spare: Iterable[int]) -> None:
        self.data_dir = data_dir
        self.subreaper = subreaper
        # Never ours to kill, whatever /proc seems to say.
        self.spared = set(spare) | {os.getpid(), 1}
        self.anchors: dict[int, int] = {}  # pid -> starttime: stopped first, killed last (postmaster, tree roots)
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
        if self.data_dir is None:
            return False
        if self.subreaper is not None and st.ppid == self.subreaper and is_server_process(pid):
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
        sessions miss them.  Whatever we track (anchors included) is a root
        too, so a child forked by a process on its way out is found.
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

    def what(self, trees: list[tuple[int, int]]) -> str:
        parts = [f"PostgreSQL in {self.data_dir}"] if self.data_dir is not None else []
        parts += [f"the process tree of {pid}" for pid, _ in trees]
        return " and ".join(parts) or "nothing"


def kill_and_confirm(data_dir: str | None, *, postmaster: int | None = None, subreaper: int | None = None,
                     trees: Iterable[tuple[int, int]] = (), spare: Iterable[int] = (),
                     timeout: float = 1.0) -> KillResult:
    """SIGKILL a PostgreSQL (and, for a node reset, whole process trees) and confirm through /proc that none is left.

    Killed: with data_dir, its postmaster (`postmaster` or the pid in
    postmaster.pid, either verified against /proc), every descendant of it,
    and every server process that lost its postmaster: one working in
    data_dir, or, given the `subreaper` that orphans land on, one below
    that.  Each (pid, starttime) of `trees` with all its descendants.
    Never the caller, init or a pid in `spare`.

    The fence, a stop that must not fail and a reset all count on the
    answer: election deletes the leader key only on a confirmed fence, so
    "confirmed" is never said lightly.  A process we failed to find or to
    kill could still commit a transaction that the new leader never sees.
    Hence only /proc reads and signals (nothing here can hang on the
    database), signals that cannot hit a process that took a dead one's
    pid, a zombie counted as dead (it runs no code), and, in any doubt, an
    unconfirmed result.  Never raises for processes that vanish meanwhile;
    returns within about `timeout` seconds (plus one /proc scan).
    """
    start = time.monotonic()
    kill = _Kill(data_dir, subreaper, spare)
    try:
        return _run(kill, postmaster, list(trees), start, timeout)
    except OSError as exc:
        # Vanished processes are handled where they are read; this is the kernel refusing
        # us something else (say, out of file descriptors), and then we can vouch for nothing.
        return KillResult(False, tuple(kill.killed), tuple(sorted(kill.tracked)), f"NOT confirmed: {exc}")


def _run(kill: _Kill, postmaster: int | None, trees: list[tuple[int, int]], start: float,
         timeout: float) -> KillResult:
    deadline = start + timeout
    doubt = None
    # 1. A missing postmaster is no error: it may have died already, leaving only orphans.
    if kill.data_dir is not None:
        pm, doubt = find_postmaster(postmaster, kill.data_dir)
        st = read_stat(pm) if pm is not None else None
        if pm is not None and st is not None and pm not in kill.spared:
            kill.anchors[pm] = st.starttime
    for pid, starttime in trees:
        st = read_stat(pid)
        # A root that is gone (its pid perhaps someone else's by now) has no tree left to kill.
        if pid not in kill.spared and st is not None and st.starttime == starttime and not is_dead(st):
            kill.anchors.setdefault(pid, starttime)
    kill.tracked.update(kill.anchors)
    # 2. Stopped, an anchor can neither fork nor (a postmaster) restart after a crash while we
    # look; and its dead children stay zombies (it cannot reap them), so their pids cannot pass
    # to anyone else before we are done.
    stopping = []
    for pid, starttime in kill.anchors.items():
        outcome = send(pid, starttime, signal.SIGSTOP)
        if outcome is Sent.SENT:
            stopping.append((pid, starttime))
        elif outcome is Sent.DENIED:
            kill.denied.add(pid)
    # One stuck in the kernel (state D, say on a hung disk) stops only on its way out: then do
    # not wait long, and count on the rescans below.
    stop_until = min(deadline, start + timeout * STOP_WAIT_SHARE)
    not_stopped = [pid for pid, starttime in stopping if not wait_stopped(pid, starttime, stop_until)]
    # 3 and 4. Children first, anchors last (the postmaster first among them): killed first, an
    # anchor would hand its children to the subreaper while we enumerate (or to init, if it is not
    # below us).  SIGKILL works on a stopped process, so no SIGCONT is needed.
    kill.sweep()
    for pid, starttime in kill.anchors.items():
        kill.kill(pid, starttime)
    # 5. Poll until all are dead.  Each round scans again: a process may have forked before our
    # signal landed (or a killed one on its way out), and its child is found only now.  Confirmed
    # only when every tracked process was dead *before* a scan that found nothing new: the dead
    # cannot fork, so nothing can be missing.
    interval = POLL_INTERVAL
    while True:
        alive = kill.alive()
        new = kill.sweep()
        if not alive and not new:
            return _result(kill, trees, doubt is None, start, not_stopped, doubt, {})
        if time.monotonic() >= deadline:
            return _result(kill, trees, False, start, not_stopped, doubt, kill.alive())
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 2, POLL_MAX)


def _result(kill: _Kill, trees: list[tuple[int, int]], confirmed: bool, start: float, not_stopped: list[int],
            doubt: int | None, alive: dict[int, ProcStat]) -> KillResult:
    elapsed_ms = (time.monotonic() - start) * 1000
    survivors = sorted(alive) + ([doubt] if doubt is not None and doubt not in alive else [])
    if confirmed and kill.killed:
        reason = f"confirmed in {elapsed_ms:.0f} ms: killed {len(kill.killed)} processes ({kill.what(trees)})"
    elif confirmed:
        reason = f"confirmed: nothing of {kill.what(trees)} was running"
    else:
        states = ", ".join(f"{pid} ({st.state})" for pid, st in sorted(alive.items())[:10])
        parts = [f"{len(alive)} still alive: {states}" if alive else ""]
        if doubt is not None:
            parts.append(f"cannot verify pid {doubt} (permission denied reading /proc)")
        if kill.denied:
            parts.append(f"not allowed to signal {sorted(kill.denied)[:10]}")
        if not_stopped:
            parts.append(f"did not stop: {not_stopped[:10]}")
        reason = f"NOT confirmed after {elapsed_ms:.0f} ms: " + "; ".join(p for p in parts if p)
    return KillResult(confirmed, tuple(kill.killed), tuple(survivors), reason)
