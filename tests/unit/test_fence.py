"""The supervisor's fence (hasup.supervision.fence) against fake PostgreSQL trees, and a real PostgreSQL when installed.

The fence is hasup.proc.kill_and_confirm told what the supervisor knows
(its workers, and that it is the subreaper orphans land on); the
primitive's general behaviour is tested in test_proc.py, on the same fake
trees (tests/unit/proctrees.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hasup.proc import kill_and_confirm, read_stat
from hasup.supervision.fence import fence_postgres
from tests.harness import PG_BIN, run_as, wait_for
from tests.unit.proctrees import Sandbox, gone, kill_tree, live, live_descendants

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
    assert result.reason == f"fence confirmed: nothing of PostgreSQL in {sandbox.data_dir} was running"
    sandbox.write_pidfile(2**22 + 17)
    assert fence_postgres(None, sandbox.data_dir, sandbox.sup_pid, set()).confirmed


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


def test_a_server_process_orphaned_to_the_supervisor_is_fenced_wherever_it_works(sandbox: Sandbox, tmp_path: Path):
    # A backend that has left the data directory (say, a tablespace's): only its parent, the subreaper, says it is ours.
    elsewhere = tmp_path / "tablespace"
    elsewhere.mkdir()
    tree = sandbox.fake({"role": "postmaster", "children": [{"role": "backend", "setsid": True, "stop": True}]},
                        cwd=str(elsewhere))
    os.kill(tree["postmaster"], signal.SIGKILL)
    wait_for(lambda: read_stat(tree["backend"]).ppid == sandbox.sup_pid, 10,  # type: ignore[union-attr]
             "the orphan to be re-parented", interval=0.01)
    assert kill_and_confirm(sandbox.data_dir).killed == ()  # the primitive alone cannot tell
    result = fence_postgres(None, sandbox.data_dir, sandbox.sup_pid, set())
    assert result.confirmed and result.killed == (tree["backend"],), result


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
