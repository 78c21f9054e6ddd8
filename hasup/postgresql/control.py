"""Running PostgreSQL's programs: initdb, pg_basebackup, pg_rewind, pg_controldata, the postmaster.

The postmaster is started in a session of its own so it outlives a
restart of the postgres worker; any later worker re-attaches through
postmaster.pid (read by hasup.proc, as everywhere).  Stops signal the
postmaster directly and wait on /proc, so they work whoever its parent
is; the last resort, killing it, is hasup.proc.kill_and_confirm.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hasup.proc import KillResult, find_postmaster, is_dead, kill_and_confirm, read_stat

log = logging.getLogger(__name__)

STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
# A stop's last resort runs in the postgres worker's action thread, not a loop: it may wait for a
# process stuck in the kernel (a hung disk) longer than the supervisor's fence would.
KILL_TIMEOUT = 5.0


class CommandFailed(Exception):
    pass


@dataclass
class Binaries:
    bin_dir: str

    def path(self, name: str) -> str:
        if self.bin_dir:
            return os.path.join(self.bin_dir, name)
        found = shutil.which(name)
        return found or name


def run(cmd: Sequence[str], timeout: float | None, env: dict[str, str] | None = None,
        track: Callable[[subprocess.Popen[str] | None], None] | None = None) -> str:
    """Run a command, return its output; raise CommandFailed with its last lines on failure.

    track(proc) is called once it runs and track(None) when it is done, so a
    caller can terminate a long command (a basebackup) on shutdown.
    """
    name = os.path.basename(cmd[0])
    try:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise CommandFailed(f"{cmd[0]}: {exc}") from exc
    if track:
        track(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise CommandFailed(f"{name} timed out after {timeout}s") from exc
    finally:
        if track:
            track(None)
    if proc.returncode != 0:
        tail = " | ".join(out.strip().splitlines()[-5:])
        raise CommandFailed(f"{name} exited {proc.returncode}: {tail}")
    return out


def controldata(bins: Binaries, data_dir: str) -> dict[str, str]:
    """pg_controldata as a dict; {} when the data directory has none."""
    if not os.path.exists(os.path.join(data_dir, "global", "pg_control")):
        return {}
    env = dict(os.environ, LANG="C", LC_ALL="C")
    try:
        out = run([bins.path("pg_controldata"), "-D", data_dir], timeout=30, env=env)
    except CommandFailed as exc:
        log.warning("pg_controldata failed: %s", exc)
        return {}
    result = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            result[key.strip()] = value.strip()
    return result


def data_dir_empty(data_dir: str) -> bool:
    try:
        return not any(os.scandir(data_dir))
    except FileNotFoundError:
        return True


def pid_alive(pid: int) -> bool:
    """The process exists and still runs code (not a zombie)."""
    return not is_dead(read_stat(pid))


def postmaster_pid(data_dir: str) -> int | None:
    """The running postmaster of data_dir, from postmaster.pid and verified through /proc.

    A stale file may name an unrelated process after a crash or a reboot;
    proc.postmaster_verdict tells them apart.  A pid it cannot vouch either
    way for (same user, /proc hidden) is returned too: every caller asks
    "is PostgreSQL still running?", and a doubt must not answer "no".
    """
    pid, doubt = find_postmaster(None, data_dir)
    return pid if pid is not None else doubt


class Postmaster:
    """Start, stop and find the postmaster of one data directory."""

    def __init__(self, bins: Binaries, data_dir: str, config_file: str) -> None:
        self.bins = bins
        self.data_dir = data_dir
        self.config_file = config_file
        self._child: subprocess.Popen[bytes] | None = None
        # The last postmaster /proc vouched for, by pid and start time: while that very process lives on,
        # it is still the postmaster of data_dir, and the once-a-second look needs no more than its stat.
        self._known: tuple[int, int] | None = None

    def pid(self) -> int | None:
        self.reap()
        known = self._known
        if known is not None:
            st = read_stat(known[0])
            if st is not None and not is_dead(st) and st.starttime == known[1]:
                return known[0]
            self._known = None
        pid, doubt = find_postmaster(None, self.data_dir)
        if pid is not None:
            st = read_stat(pid)
            if st is not None:
                self._known = (pid, st.starttime)
        else:
            pid = doubt
        if pid is None and self._child is not None:
            # Our own child before it wrote postmaster.pid (or after someone removed it).
            return self._child.pid
        return pid

    def reap(self) -> None:
        if self._child is not None and self._child.poll() is not None:
            self._child = None

    def start(self, options: Sequence[str]) -> int:
        """Launch the postmaster; returns its pid (readiness is checked by the caller's probe)."""
        cmd = [self.bins.path("postgres"), "-D", self.data_dir, f"--config-file={self.config_file}", *options]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HASUP_", "PATRONI_", "NOTIFY_SOCKET"))}
        self._child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        return self._child.pid

    def exited_early(self) -> int | None:
        """Exit status of the postmaster we launched, if it has already died."""
        if self._child is None:
            return None
        return self._child.poll()

    def stop(self, mode: str, timeout: float) -> bool:
        """Signal a stop and wait for the postmaster to be gone; True when it is."""
        pid = self.pid()
        if pid is None:
            return True
        try:
            os.kill(pid, STOP_SIGNALS[mode])
        except ProcessLookupError:
            return True
        return self.wait_gone(pid, timeout)

    def wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.reap()
            if not pid_alive(pid):
                return True
            time.sleep(0.05)
        return False

    def kill_all(self, pid: int | None, timeout: float = KILL_TIMEOUT) -> KillResult:
        """SIGKILL the postmaster and every process of it (an orphaned backend could still commit), and confirm.

        `pid` is the postmaster we know of; postmaster.pid and orphans working
        in the data directory are searched all the same.  A postmaster we
        launched is killed as our child too: until it has moved into the data
        directory, /proc cannot tell it for the postmaster of it.
        """
        trees = []
        if self._child is not None and self._child.poll() is None:
            st = read_stat(self._child.pid)  # an unreaped child: its pid cannot have passed to anyone else
            if st is not None:
                trees.append((self._child.pid, st.starttime))
        result = kill_and_confirm(self.data_dir, postmaster=pid, trees=trees, timeout=timeout)
        self.reap()  # our own child, if it was: no zombie left behind
        return result
