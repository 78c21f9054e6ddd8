"""Processes through /proc and signals that cannot hit a stranger: what fencing and killing are built on.

Only /proc reads and signals here, nothing that can block on a hung
database, so every caller can bound its time.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Iterator
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


def postmaster_from_file(data_dir: str) -> int | None:
    # Only a missing or half-written file means "no postmaster"; any other error
    # (permissions, no file descriptors left) propagates and leaves the fence unconfirmed.
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as f:
            pid = int(f.readline().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid > 0 else None  # a single-user backend writes its pid negated


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
