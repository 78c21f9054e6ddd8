"""hasup.supervision.fence against real processes: fake PostgreSQL trees, and a real PostgreSQL when installed.

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
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hasup import proc
from hasup.proc import (
    ProcStat,
    children_map,
    descendants,
    is_dead,
    is_server_cmdline,
    is_server_exe,
    parse_stat,
    read_stat,
    snapshot,
)
from hasup.supervision import fence
from hasup.supervision.fence import fence_postgres
from tests.harness import PG_BIN, run_as, wait_for

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


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("fakebin")
    shutil.copy(PYTHON, d / "postgres")  # a server's exe and comm, with Python inside
    (d / "fake.py").write_text(FAKE)
    os.chmod(d, 0o755)
    return str(d / "postgres"), str(d / "fake.py")


@pytest.fixture
def sandbox(tmp_path: Path, fake_bin: tuple[str, str]) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path, *fake_bin)
    try:
        yield box
    finally:
        box.close()


def gone(pid: int) -> bool:
    """Exited, or a zombie (the supervisor stand-in reaps only at the end)."""
    return is_dead(read_stat(pid))


# -- pure helpers ---------------------------------------------------------------------------------

STAT_TAIL = "S 41 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 10 18446744073709551615"


def test_parse_stat_reads_from_the_last_parenthesis():
    assert parse_stat(f"123 (postgres) {STAT_TAIL}\n") == ProcStat("postgres", "S", 41, 3, 987654)
    tricky = "a) Z 1 2 3 (b)) x"
    st = parse_stat(f"7 ({tricky}) {STAT_TAIL}")
    assert (st.comm, st.state, st.ppid, st.num_threads, st.starttime) == (tricky, "S", 41, 3, 987654)


@pytest.mark.parametrize("text", ["", "123 postgres S 1", "123 (postgres) S 1 2", "123 (x) S notanumber " + "0 " * 20])
def test_parse_stat_refuses_garbage(text: str):
    with pytest.raises(ValueError):
        parse_stat(text)


def test_parse_stat_of_real_processes():
    me = read_stat(os.getpid())
    assert me is not None and me.ppid == os.getppid() and me.state in "RS" and me.num_threads >= 1
    assert read_stat(2**22 + 17) is None  # beyond any pid_max


def test_a_zombie_is_dead_unless_other_threads_still_run():
    def st(state: str, threads: int) -> ProcStat:
        return ProcStat("postgres", state, 1, threads, 5)

    assert is_dead(None) and is_dead(st("Z", 1)) and is_dead(st("X", 0))
    assert not is_dead(st("Z", 2)) and not is_dead(st("T", 1)) and not is_dead(st("D", 1))


def test_server_recognition_by_exe_and_cmdline():
    assert is_server_exe("/usr/lib/postgresql/15/bin/postgres")
    assert is_server_exe("/usr/lib/postgresql/15/bin/postgres (deleted)")  # upgraded under a running server
    assert not is_server_exe("/usr/bin/python3.11") and not is_server_exe("/usr/bin/postgres-exporter")
    assert is_server_cmdline(b"postgres: main: checkpointer \0\0")
    assert is_server_cmdline(b"/usr/lib/postgresql/15/bin/postgres\0-D\0/data\0")
    assert not is_server_cmdline(b"hasup: postgres main/node1\0") and not is_server_cmdline(b"")
    assert not is_server_cmdline(b"python3\0-c\0postgres: x\0")


def test_descendants_walk_the_whole_tree():
    procs = {10: ProcStat("p", "S", 1, 1, 0), 11: ProcStat("p", "S", 10, 1, 0), 12: ProcStat("p", "S", 11, 1, 0),
             13: ProcStat("p", "S", 10, 1, 0), 20: ProcStat("p", "S", 1, 1, 0)}
    kids = children_map(procs)
    assert descendants(kids, [10]) == {11, 12, 13}
    assert descendants(kids, [12, 20]) == set()


# -- fake trees -----------------------------------------------------------------------------------


def test_fences_a_postmaster_and_its_whole_tree(sandbox: Sandbox):
    spec = {"role": "postmaster", "children": [
        {"role": "checkpointer", "ignore": True},
        {"role": "backend-a", "setsid": True, "ignore": True},
        {"role": "backend-stopped", "setsid": True, "stop": True},
        {"role": "archiver", "children": [{"role": "archive-cmd", "setsid": True, "ignore": True}]},
    ]}
    tree = sandbox.fake(spec)
    plain = sandbox.fake({"role": "plain"}, postgres=False)["plain"]  # a supervisor child that is no postgres
    start = time.monotonic()
    result = fence_postgres(tree["postmaster"], sandbox.data_dir, sandbox.sup_pid, set())
    elapsed = time.monotonic() - start
    assert result.confirmed, result.reason
    assert set(result.killed) == set(tree.values()) and result.survivors == ()
    assert result.killed[-1] == tree["postmaster"]  # children first
    assert all(gone(pid) for pid in tree.values())
    assert live(plain)
    assert elapsed < 1.0 and "fence confirmed" in result.reason
    print(f"\nfence of {len(tree)} processes took {elapsed * 1000:.1f} ms: {result.reason}")


def test_postmaster_found_through_postmaster_pid(sandbox: Sandbox):
    tree = sandbox.fake({"role": "postmaster", "children": [{"role": "walwriter"}]})
    sandbox.write_pidfile(tree["postmaster"])
    result = fence_postgres(None, sandbox.data_dir, sandbox.sup_pid, set())
    assert result.confirmed and set(result.killed) == set(tree.values()), result
    # A stale pid given by the caller does not stop the search either.
    tree = sandbox.fake({"role": "postmaster2"})
    sandbox.write_pidfile(tree["postmaster2"])
    result = fence_postgres(2**22 + 17, sandbox.data_dir, sandbox.sup_pid, set())
    assert result.confirmed and result.killed == (tree["postmaster2"],), result


def test_nothing_to_fence_is_confirmed_at_once(sandbox: Sandbox):
    result = fence_postgres(2**22 + 17, sandbox.data_dir, sandbox.sup_pid, set())
    assert result.confirmed and result.killed == () and result.survivors == ()
    assert "no PostgreSQL process found" in result.reason
    sandbox.write_pidfile(2**22 + 17)
    assert fence_postgres(None, sandbox.data_dir, sandbox.sup_pid, set()).confirmed


def test_a_reused_pid_is_never_killed(sandbox: Sandbox, tmp_path: Path):
    # postmaster.pid names a process that is no postgres (the pid was reused), even in the data directory.
    plain = sandbox.fake({"role": "reused"}, postgres=False)["reused"]
    sandbox.write_pidfile(plain)
    result = fence_postgres(plain, sandbox.data_dir, sandbox.sup_pid, set())
    assert result.confirmed and result.killed == (), result
    # ... or another cluster's postmaster (a postgres, but at home in another directory).
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = sandbox.fake_outside({"role": "other-postmaster", "children": [{"role": "other-backend"}]}, str(other_dir))
    sandbox.write_pidfile(other)
    result = fence_postgres(other, sandbox.data_dir, sandbox.sup_pid, set())
    assert result.confirmed and result.killed == (), result
    assert live(plain) and live(other) and len(live_descendants(other)) == 1


def test_orphans_of_a_dead_postmaster_are_found_under_the_subreaper(sandbox: Sandbox):
    # The postgres worker looks like a server to /proc (same exe) but is one of the workers: spared.
    spec = {"role": "worker", "title": "hasup: postgres fake/node1", "children": [
        {"role": "postmaster", "children": [
            {"role": "backend-stopped", "setsid": True, "stop": True},
            {"role": "backend-deaf", "setsid": True, "ignore": True,
             "children": [{"role": "backend-child", "ignore": True}]},
        ]},
    ]}
    tree = sandbox.fake(spec)
    plain = sandbox.fake({"role": "plain"}, postgres=False)["plain"]
    pm = tree["postmaster"]
    sandbox.write_pidfile(pm)
    os.kill(pm, signal.SIGKILL)  # the crash; the worker does not reap it: it stays a zombie
    orphans = [tree["backend-stopped"], tree["backend-deaf"]]
    wait_for(lambda: all(read_stat(p).ppid == sandbox.sup_pid for p in orphans),  # type: ignore[union-attr]
             10, "orphans to be re-parented to the subreaper", interval=0.01)
    result = fence_postgres(pm, sandbox.data_dir, sandbox.sup_pid, {tree["worker"]})
    assert result.confirmed, result.reason
    assert set(result.killed) == {*orphans, tree["backend-child"]}
    assert all(gone(p) for p in result.killed)
    assert live(tree["worker"]) and live(plain)


def test_orphans_that_escaped_the_subreaper_are_found_by_their_directory(sandbox: Sandbox):
    tree = sandbox.fake({"role": "postmaster", "children": [{"role": "backend", "setsid": True, "stop": True}]})
    os.kill(tree["postmaster"], signal.SIGKILL)
    wait_for(lambda: read_stat(tree["backend"]).ppid == sandbox.sup_pid, 10,  # type: ignore[union-attr]
             "the orphan to be re-parented", interval=0.01)
    # Told of another supervisor, the parent rule cannot match; the cwd + comm rule still does.
    result = fence_postgres(None, sandbox.data_dir, 2**22 + 17, set())
    assert result.confirmed and result.killed == (tree["backend"],), result


def test_children_forked_while_we_fence_are_killed_too(sandbox: Sandbox):
    # A forker below the postmaster and an orphaned one: both fork every few ms during the fence.
    tree = sandbox.fake({"role": "postmaster", "children": [{"role": "forker", "forker": True}]})
    orphan = sandbox.fake({"role": "orphan-forker", "forker": True})
    wait_for(lambda: len(live_descendants(orphan["orphan-forker"])) >= 10, 10, "forks", interval=0.01)
    result = fence_postgres(tree["postmaster"], sandbox.data_dir, sandbox.sup_pid, set())
    assert result.confirmed, result.reason
    assert len(result.killed) > 20
    assert not live_descendants(sandbox.sup_pid), "something of the fenced tree still runs"


def test_a_pid_whose_main_thread_exited_is_not_taken_for_a_zombie(sandbox: Sandbox):
    pid = sandbox.fake({"role": "half-dead", "leader_exit": True})["half-dead"]
    st = read_stat(pid)
    assert st is not None and st.state == "Z" and st.num_threads >= 2 and not is_dead(st)
    result = fence_postgres(None, sandbox.data_dir, sandbox.sup_pid, set())
    assert result.confirmed and result.killed == (pid,), result
    assert is_dead(read_stat(pid))


def test_unconfirmed_when_processes_cannot_be_killed_or_verified(sandbox: Sandbox, fake_bin: tuple[str, str]):
    """As an unprivileged user against root's processes: doubts and EPERM end in an honest 'not confirmed'."""
    owner = run_as()
    if owner is None:
        pytest.skip("needs root, to start processes the fence may not signal")
    base = tempfile.mkdtemp(prefix="hasup-fence-")
    try:
        os.chmod(base, 0o755)
        data_dir = os.path.join(base, "data")
        os.mkdir(data_dir, 0o755)  # root's, like the root-owned "postmaster" below
        pm = sandbox.fake({"role": "postmaster"}, cwd=data_dir)["postmaster"]
        orphan = sandbox.fake({"role": "root-orphan"}, cwd=data_dir)["root-orphan"]
        code = ("import json, sys; from hasup.supervision.fence import fence_postgres; "
                "r = fence_postgres(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), set(), timeout=0.3); "
                "print(json.dumps([r.confirmed, r.killed, r.survivors, r.reason]))")
        start = time.monotonic()
        out = subprocess.run([sys.executable, "-c", code, str(pm), data_dir, str(sandbox.sup_pid)], cwd="/",
                             user=owner[0], group=owner[1], extra_groups=[], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        elapsed = time.monotonic() - start
        confirmed, killed, survivors, reason = json.loads(out)
        assert not confirmed and killed == [] and set(survivors) == {pm, orphan}, reason
        assert "cannot verify pid" in reason and "not allowed to signal" in reason
        assert elapsed < 10  # mostly interpreter start; the fence itself stops at its timeout
        assert live(pm) and live(orphan)
    finally:
        shutil.rmtree(base)


def test_a_kernel_refusal_is_an_unconfirmed_result_not_an_exception(sandbox: Sandbox):
    pm = sandbox.fake({"role": "postmaster", "children": [{"role": "bgwriter"}]})["postmaster"]
    sandbox.write_pidfile(pm)
    # Out of file descriptors: not even /proc can be read.
    code = ("import json, resource, sys; from hasup.supervision.fence import fence_postgres; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3)); "
            "r = fence_postgres(None, sys.argv[1], int(sys.argv[2]), set(), timeout=0.3); "
            "print(json.dumps([r.confirmed, r.killed, r.reason]))")
    out = subprocess.run([sys.executable, "-c", code, sandbox.data_dir, str(sandbox.sup_pid)], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    confirmed, killed, reason = json.loads(out)
    assert not confirmed and killed == [] and "Too many open files" in reason, reason
    assert live(pm)


def test_fence_module_uses_no_subprocess():
    source = Path(fence.__file__).read_text() + Path(proc.__file__).read_text()
    assert "subprocess" not in source and "psycopg" not in source


# -- a real PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_data() -> Iterator[tuple[str, tuple[int, int] | None]]:
    if not os.path.isdir(PG_BIN):
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not installed in {PG_BIN}")
        pytest.skip(f"PostgreSQL is not installed in {PG_BIN} (run `make test`)")
    owner = run_as()
    base = tempfile.mkdtemp(prefix="hasup-fence-pg-")
    os.chmod(base, 0o755)
    data_dir = os.path.join(base, "data")
    os.mkdir(data_dir, 0o700)
    if owner:
        os.chown(base, *owner)
        os.chown(data_dir, *owner)
    kw: dict[str, Any] = {"user": owner[0], "group": owner[1], "extra_groups": []} if owner else {}
    subprocess.run([os.path.join(PG_BIN, "initdb"), "-D", data_dir, "-U", "postgres", "--auth=trust", "-N",
                    "-E", "UTF8", "--locale=C"], cwd=base, capture_output=True, check=True, timeout=120, **kw)
    try:
        yield data_dir, owner
    finally:
        shutil.rmtree(base, ignore_errors=True)


def start_postgres(box: Sandbox, data_dir: str, owner: tuple[int, int] | None) -> int:
    opts = ["-c", "listen_addresses=", "-c", f"unix_socket_directories={data_dir}", "-c", "fsync=off",
            "-c", "shared_buffers=16MB", "-c", "max_connections=10", "-c", "cluster_name=fencetest"]
    extra: dict[str, Any] = {"user": owner[0], "group": owner[1]} if owner else {}
    postgres = os.path.join(PG_BIN, "postgres")
    env = {"PATH": "/usr/bin:/bin", "LANG": "C"}
    pid = box.spawn([postgres, "-D", data_dir, *opts], postgres, cwd="/", env=env, **extra)

    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(FileNotFoundError):
            with open(os.path.join(data_dir, "postmaster.pid")) as f:
                lines = f.read().splitlines()
            if len(lines) >= 8 and lines[0] == str(pid) and lines[7].strip() == "ready":
                return pid
        assert not gone(pid), "PostgreSQL exited at start"
        assert time.monotonic() < deadline, "PostgreSQL did not start in 60 s"
        time.sleep(0.02)


def connect(data_dir: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(host=data_dir, user="postgres", dbname="postgres", connect_timeout=10)
    conn.autocommit = True
    return conn


def backend_pid(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("select pg_backend_pid()")
        return int(cur.fetchone()[0])


@pytest.fixture
def pg_box(sandbox: Sandbox, pg_data: tuple[str, tuple[int, int] | None]) -> Iterator[tuple[Sandbox, str, Any]]:
    data_dir, owner = pg_data
    conns: list[Any] = []
    try:
        yield sandbox, data_dir, (owner, conns)
    finally:
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()
        # Left killed, the cluster would leak its shared memory: a clean start and stop removes it.  The
        # zombies go first: PostgreSQL takes a zombie postmaster for a live one and refuses to start.
        kill_tree(sandbox.sup_pid)
        sandbox.reap()
        pm = start_postgres(sandbox, data_dir, owner)
        os.kill(pm, signal.SIGINT)
        wait_for(lambda: gone(pm), 60, "PostgreSQL to stop", interval=0.02)


def test_real_postgres_is_fenced_with_every_backend(pg_box: tuple[Sandbox, str, Any]):
    box, data_dir, (owner, conns) = pg_box
    pm = start_postgres(box, data_dir, owner)
    conns += [connect(data_dir) for _ in range(3)]
    backends = [backend_pid(c) for c in conns]
    with conns[0].cursor() as cur:
        cur.execute("begin; create table t(x int)")  # a transaction in flight
    os.kill(backends[1], signal.SIGSTOP)  # a hung backend
    before = live_descendants(pm)
    assert set(backends) <= before and all(read_stat(p).comm == "postgres" for p in before)  # type: ignore[union-attr]
    start = time.monotonic()
    result = fence_postgres(None, data_dir, box.sup_pid, set())
    elapsed = time.monotonic() - start
    assert result.confirmed, result.reason
    assert before | {pm} <= set(result.killed) and result.killed[-1] == pm
    assert gone(pm) and not live_descendants(box.sup_pid)
    print(f"\nfence of a real PostgreSQL ({len(result.killed)} processes) took {elapsed * 1000:.1f} ms")
    assert elapsed < 1.0


def test_real_orphaned_backend_is_fenced(pg_box: tuple[Sandbox, str, Any]):
    box, data_dir, (owner, conns) = pg_box
    pm = start_postgres(box, data_dir, owner)
    conns += [connect(data_dir), connect(data_dir)]
    stuck, idle = (backend_pid(c) for c in conns)
    os.kill(stuck, signal.SIGSTOP)
    os.kill(pm, signal.SIGKILL)
    # The idle backend notices its postmaster's death and leaves; the stopped one cannot, and lands on us.
    wait_for(lambda: gone(idle) and read_stat(stuck).ppid == box.sup_pid, 20,  # type: ignore[union-attr]
             "the stopped backend to be orphaned", interval=0.01)
    result = fence_postgres(pm, data_dir, box.sup_pid, set())
    assert result.confirmed and stuck in result.killed and pm not in result.killed, result
    assert not live_descendants(box.sup_pid)
