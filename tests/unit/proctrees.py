"""Fake PostgreSQL process trees under a stand-in supervisor, for the tests of hasup.proc and its users.

The fakes run a copy of the Python interpreter named `postgres`, so /proc
shows them as a server would appear (exe and comm `postgres`, cwd the data
directory, ps titles `postgres: <role>`); nothing in /proc is mocked.  A
small subreaper process plays the supervisor, so orphans are re-parented
to it exactly as in hasup, and the test runner's own state is untouched.
Every process is started under that helper (or by the test itself) and
killed by PID at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hasup.proc import children_map, descendants, is_dead, read_stat, snapshot
from tests.harness import wait_for

PYTHON = os.path.realpath(sys.executable)

# The supervisor stand-in: a child subreaper that starts what it is told and reaps only when told to go.
SUPERVISOR = r"""
import ctypes, json, os, subprocess, sys
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("prctl failed")
procs = []
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd == "reap":  # what has died below us, orphans included, as hasup's supervisor does in its loop
        reaped = 0
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
            reaped += 1
        print(reaped, flush=True)
        continue
    user = cmd.get("user")
    procs.append(subprocess.Popen(cmd["argv"], executable=cmd["executable"], cwd=cmd["cwd"], env=cmd.get("env"),
                                  stdin=subprocess.DEVNULL, user=user, group=cmd.get("group"),
                                  extra_groups=[] if user is not None else None))
    print(procs[-1].pid, flush=True)
while True:  # stdin closed: the test has killed everything below us; reap it all, orphans included
    try:
        os.wait()
    except ChildProcessError:
        break
"""

# One fake process; spec: role, title, children, setsid, ignore (SIGTERM & co), stop (itself), forker, leader_exit.
FAKE = r"""
import ctypes, json, os, signal, subprocess, sys, threading, time
spec = json.loads(sys.argv[1])
if spec.get("ignore"):
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, signal.SIG_IGN)
if spec.get("setsid"):
    os.setsid()  # as every PostgreSQL backend does
exe = os.readlink("/proc/self/exe")
kids = [subprocess.Popen([c.get("title") or "postgres: " + c["role"], "-I", "-S", __file__, json.dumps(c)],
                         executable=exe, stdin=subprocess.DEVNULL) for c in spec.get("children", [])]
if spec.get("stop"):
    os.kill(os.getpid(), signal.SIGSTOP)
if spec.get("leader_exit"):
    # The main thread leaves, another one keeps running: /proc shows the pid as Z meanwhile.
    threading.Thread(target=lambda: [signal.pause() for _ in iter(int, 1)]).start()
    ctypes.CDLL(None).pthread_exit(None)
if spec.get("forker"):
    # Forks all the time (keeping the newest 20 alive), like a busy postmaster might.
    alive = []
    while True:
        pid = os.fork()
        if pid == 0:
            while True:
                signal.pause()
        alive.append(pid)
        if len(alive) > 20:
            old = alive.pop(0)
            os.kill(old, signal.SIGKILL)
            os.waitpid(old, 0)
        time.sleep(0.002)
while True:
    signal.pause()
"""


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def live(pid: int) -> bool:
    return not is_dead(read_stat(pid))


def live_descendants(root: int) -> set[int]:
    procs = snapshot()
    return {p for p in descendants(children_map(procs), [root]) if not is_dead(procs[p])}


def kill_tree(root: int) -> None:
    """SIGKILL everything below root, by pid, until nothing lives there (a forker may add more meanwhile)."""
    deadline = time.monotonic() + 10
    while (pids := live_descendants(root)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    assert not live_descendants(root), "could not clean up the fake processes"


class Sandbox:
    """A data directory, a subreaper playing the supervisor, and the fake processes below it."""

    def __init__(self, base: Path, fake_bin: str, fake_py: str) -> None:
        self.data_dir = str(base / "data")
        os.mkdir(self.data_dir)
        self.fake_bin, self.fake_py = fake_bin, fake_py
        self.direct: list[subprocess.Popen[bytes]] = []
        self.sup = subprocess.Popen([PYTHON, "-I", "-S", "-c", SUPERVISOR], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)

    @property
    def sup_pid(self) -> int:
        return self.sup.pid

    def _ask(self, cmd: Any) -> int:
        assert self.sup.stdin is not None and self.sup.stdout is not None
        self.sup.stdin.write(json.dumps(cmd) + "\n")
        self.sup.stdin.flush()
        return int(self.sup.stdout.readline())

    def spawn(self, argv: list[str], executable: str, cwd: str | None = None, **extra: Any) -> int:
        return self._ask({"argv": argv, "executable": executable, "cwd": cwd or self.data_dir, **extra})

    def reap(self) -> int:
        return self._ask("reap")

    def fake(self, spec: dict[str, Any], postgres: bool = True, cwd: str | None = None) -> dict[str, int]:
        """Start a fake tree under the supervisor; returns role -> pid once all run (and the stopped ones stopped)."""
        exe = self.fake_bin if postgres else PYTHON
        title = spec.get("title") or ("postgres: " if postgres else "python: ") + spec["role"]
        root = self.spawn([title, "-I", "-S", self.fake_py, json.dumps(spec)], exe, cwd)
        return self.wait_tree(root, spec)

    def fake_outside(self, spec: dict[str, Any], cwd: str) -> int:
        """A fake postgres started by the test itself, not under the supervisor."""
        p = subprocess.Popen(["postgres: " + spec["role"], "-I", "-S", self.fake_py, json.dumps(spec)],
                             executable=self.fake_bin, cwd=cwd, stdin=subprocess.DEVNULL)
        self.direct.append(p)
        self.wait_tree(p.pid, spec)
        return p.pid

    @staticmethod
    def wait_tree(root: int, spec: dict[str, Any]) -> dict[str, int]:
        def walk(s: dict[str, Any]) -> Iterator[dict[str, Any]]:
            yield s
            for c in s.get("children", []):
                yield from walk(c)

        wanted = {s["role"]: s for s in walk(spec)}

        def ready() -> dict[str, int] | None:
            found = {spec["role"]: root}
            for pid in live_descendants(root):
                argv0 = cmdline(pid).split(b"\0", 1)[0].decode()
                role = argv0.split(": ", 1)[-1]
                if role in wanted and wanted[role].get("title") is None:
                    found.setdefault(role, pid)
                for s in wanted.values():
                    if s.get("title") == argv0:
                        found.setdefault(s["role"], pid)
            if set(found) != set(wanted):
                return None
            for role, pid in found.items():
                st = read_stat(pid)
                if st is None or (wanted[role].get("stop") and st.state != "T"):
                    return None
                if wanted[role].get("leader_exit") and st.state != "Z":
                    return None
            return found

        return wait_for(ready, 20, f"fake tree {spec['role']} to start", interval=0.01)

    def write_pidfile(self, pid: int) -> None:
        with open(os.path.join(self.data_dir, "postmaster.pid"), "w") as f:
            f.write(f"{pid}\n{self.data_dir}\n")

    def close(self) -> None:
        kill_tree(self.sup_pid)
        for p in self.direct:
            kill_tree(p.pid)
            p.kill()
            p.wait(10)
        assert self.sup.stdin is not None
        self.sup.stdin.close()
        self.sup.wait(10)
        assert self.sup.stdout is not None
        self.sup.stdout.close()


def install_fake_bin(directory: Path) -> tuple[str, str]:
    """A server's exe and comm with Python inside, and the fake's script: (bin, script)."""
    shutil.copy(PYTHON, directory / "postgres")
    (directory / "fake.py").write_text(FAKE)
    os.chmod(directory, 0o755)
    return str(directory / "postgres"), str(directory / "fake.py")


@contextlib.contextmanager
def open_sandbox(base: Path, fake_bin: tuple[str, str]) -> Iterator[Sandbox]:
    box = Sandbox(base, *fake_bin)
    try:
        yield box
    finally:
        box.close()


def gone(pid: int) -> bool:
    """Exited, or a zombie (the supervisor stand-in reaps only at the end)."""
    return is_dead(read_stat(pid))
