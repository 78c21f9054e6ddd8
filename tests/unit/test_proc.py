"""hasup.proc: /proc parsing, the one postmaster.pid reader, and the one kill-and-confirm primitive.

The primitive runs against fake PostgreSQL trees (tests/unit/proctrees.py):
real processes that /proc shows as servers, below a subreaper that plays
the supervisor.  Its users' own tests: test_fence.py (the supervisor's
fence), test_control.py (Postmaster.kill_all), test_watchdog_reset.py
(the emulated reset, in the worker and the emulator).
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hasup import proc
from hasup.proc import (
    PID_LIMIT,
    PIDFILE_MAX,
    ProcStat,
    children_map,
    descendants,
    find_postmaster,
    is_dead,
    is_server_cmdline,
    is_server_exe,
    kill_and_confirm,
    parse_stat,
    read_postmaster_pid,
    read_stat,
)
from hasup.supervision import fence
from tests.harness import run_as, wait_for
from tests.unit.proctrees import (
    Sandbox,
    gone,
    live,
    live_descendants,
)

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


# -- postmaster.pid -------------------------------------------------------------------------------


def write(data_dir: Path, content: bytes) -> str:
    (data_dir / "postmaster.pid").write_bytes(content)
    return str(data_dir)


def test_the_pid_is_the_first_line_of_postmaster_pid(tmp_path: Path):
    real = b"4242\n/var/lib/postgresql/data\n1700000000\n5432\n/run/postgresql\n*\n  5432001  12\nready   \n"
    assert read_postmaster_pid(write(tmp_path, real)) == 4242
    assert read_postmaster_pid(write(tmp_path, b" 17 \n")) == 17
    assert read_postmaster_pid(write(tmp_path, b"17")) == 17  # the rest not written yet


@pytest.mark.parametrize("content", [
    b"", b"\n4242\n", b"abc\n", b"4242abc\n", b"0\n", b"-4242\n",  # -pid: a single-user backend's
    str(PID_LIMIT).encode() + b"\n", b"9" * (PIDFILE_MAX * 4) + b"\n", "４２\n".encode(), b"\xff\xfe\n",
])
def test_a_malformed_or_out_of_range_postmaster_pid_names_no_postmaster(tmp_path: Path, content: bytes):
    assert read_postmaster_pid(write(tmp_path, content)) is None


def test_a_missing_postmaster_pid_is_none_and_any_other_error_is_raised(tmp_path: Path):
    assert read_postmaster_pid(str(tmp_path)) is None
    assert read_postmaster_pid(str(tmp_path / "no-such-dir")) is None
    (tmp_path / "postmaster.pid").mkdir()
    with pytest.raises(IsADirectoryError):  # a kill must not take "cannot read it" for "no postmaster"
        read_postmaster_pid(str(tmp_path))


def test_find_postmaster_verifies_both_the_hint_and_the_file(sandbox: Sandbox, tmp_path: Path):
    pm = sandbox.fake({"role": "postmaster"})["postmaster"]
    plain = sandbox.fake({"role": "plain"}, postgres=False)["plain"]
    assert find_postmaster(pm, sandbox.data_dir) == (pm, None)
    assert find_postmaster(plain, sandbox.data_dir) == (None, None)
    sandbox.write_pidfile(pm)
    assert find_postmaster(plain, sandbox.data_dir) == (pm, None)
    assert find_postmaster(None, str(tmp_path)) == (None, None)
    sandbox.write_pidfile(plain)  # a reused pid: the file is stale
    assert find_postmaster(None, sandbox.data_dir) == (None, None)


# -- kill and confirm -----------------------------------------------------------------------------


def test_a_reused_pid_is_never_killed(sandbox: Sandbox, tmp_path: Path):
    # postmaster.pid names a process that is no postgres (the pid was reused), even in the data directory.
    plain = sandbox.fake({"role": "reused"}, postgres=False)["reused"]
    sandbox.write_pidfile(plain)
    result = kill_and_confirm(sandbox.data_dir, postmaster=plain, subreaper=sandbox.sup_pid)
    assert result.confirmed and result.killed == (), result
    # ... or another cluster's postmaster (a postgres, but at home in another directory).
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = sandbox.fake_outside({"role": "other-postmaster", "children": [{"role": "other-backend"}]}, str(other_dir))
    sandbox.write_pidfile(other)
    result = kill_and_confirm(sandbox.data_dir, postmaster=other, subreaper=sandbox.sup_pid)
    assert result.confirmed and result.killed == (), result
    assert live(plain) and live(other) and len(live_descendants(other)) == 1


def test_orphans_that_escaped_the_subreaper_are_found_by_their_directory(sandbox: Sandbox):
    tree = sandbox.fake({"role": "postmaster", "children": [{"role": "backend", "setsid": True, "stop": True}]})
    os.kill(tree["postmaster"], signal.SIGKILL)
    wait_for(lambda: read_stat(tree["backend"]).ppid == sandbox.sup_pid, 10,  # type: ignore[union-attr]
             "the orphan to be re-parented", interval=0.01)
    # Without the subreaper, the parent rule cannot match; the cwd + comm rule still does.
    result = kill_and_confirm(sandbox.data_dir)
    assert result.confirmed and result.killed == (tree["backend"],), result


def test_children_forked_while_we_kill_are_killed_too(sandbox: Sandbox):
    # A forker below the postmaster and an orphaned one: both fork every few ms while we kill.
    tree = sandbox.fake({"role": "postmaster", "children": [{"role": "forker", "forker": True}]})
    orphan = sandbox.fake({"role": "orphan-forker", "forker": True})
    wait_for(lambda: len(live_descendants(orphan["orphan-forker"])) >= 10, 10, "forks", interval=0.01)
    result = kill_and_confirm(sandbox.data_dir, postmaster=tree["postmaster"], subreaper=sandbox.sup_pid)
    assert result.confirmed, result.reason
    assert len(result.killed) > 20
    assert not live_descendants(sandbox.sup_pid), "something of the killed tree still runs"


def test_a_pid_whose_main_thread_exited_is_not_taken_for_a_zombie(sandbox: Sandbox):
    pid = sandbox.fake({"role": "half-dead", "leader_exit": True})["half-dead"]
    st = read_stat(pid)
    assert st is not None and st.state == "Z" and st.num_threads >= 2 and not is_dead(st)
    result = kill_and_confirm(sandbox.data_dir, subreaper=sandbox.sup_pid)
    assert result.confirmed and result.killed == (pid,), result
    assert is_dead(read_stat(pid))


def test_unconfirmed_when_processes_cannot_be_killed_or_verified(sandbox: Sandbox, fake_bin: tuple[str, str]):
    """As an unprivileged user against root's processes: doubts and EPERM end in an honest 'not confirmed'."""
    owner = run_as()
    if owner is None:
        pytest.skip("needs root, to start processes we may not signal")
    base = tempfile.mkdtemp(prefix="hasup-proc-")
    try:
        os.chmod(base, 0o755)
        data_dir = os.path.join(base, "data")
        os.mkdir(data_dir, 0o755)  # root's, like the root-owned "postmaster" below
        pm = sandbox.fake({"role": "postmaster"}, cwd=data_dir)["postmaster"]
        orphan = sandbox.fake({"role": "root-orphan"}, cwd=data_dir)["root-orphan"]
        code = ("import json, sys; from hasup.proc import kill_and_confirm; "
                "r = kill_and_confirm(sys.argv[2], postmaster=int(sys.argv[1]), subreaper=int(sys.argv[3]), "
                "timeout=0.3); "
                "print(json.dumps([r.confirmed, r.killed, r.survivors, r.reason]))")
        start = time.monotonic()
        out = subprocess.run([sys.executable, "-c", code, str(pm), data_dir, str(sandbox.sup_pid)], cwd="/",
                             user=owner[0], group=owner[1], extra_groups=[], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        elapsed = time.monotonic() - start
        confirmed, killed, survivors, reason = json.loads(out)
        assert not confirmed and killed == [] and set(survivors) == {pm, orphan}, reason
        assert "cannot verify pid" in reason and "not allowed to signal" in reason
        assert elapsed < 10  # mostly interpreter start; the kill itself stops at its timeout
        assert live(pm) and live(orphan)
    finally:
        shutil.rmtree(base)


def test_a_kernel_refusal_is_an_unconfirmed_result_not_an_exception(sandbox: Sandbox):
    pm = sandbox.fake({"role": "postmaster", "children": [{"role": "bgwriter"}]})["postmaster"]
    sandbox.write_pidfile(pm)
    # Out of file descriptors: not even /proc can be read.
    code = ("import json, resource, sys; from hasup.proc import kill_and_confirm; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3)); "
            "r = kill_and_confirm(sys.argv[1], subreaper=int(sys.argv[2]), timeout=0.3); "
            "print(json.dumps([r.confirmed, r.killed, r.reason]))")
    out = subprocess.run([sys.executable, "-c", code, sandbox.data_dir, str(sandbox.sup_pid)], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    confirmed, killed, reason = json.loads(out)
    assert not confirmed and killed == [] and "Too many open files" in reason, reason
    assert live(pm)


def test_whole_trees_are_killed_with_the_postgres_but_never_what_is_spared(sandbox: Sandbox):
    """A node reset: the supervisor's tree, its PostgreSQL among it, and nothing the caller spares."""
    tree = sandbox.fake({"role": "postmaster", "children": [{"role": "backend", "setsid": True, "ignore": True}]})
    sandbox.write_pidfile(tree["postmaster"])
    worker = sandbox.fake({"role": "worker", "children": [{"role": "helper"}]}, postgres=False)
    spared = sandbox.fake({"role": "spared"}, postgres=False)["spared"]
    root = read_stat(sandbox.sup_pid)
    assert root is not None
    try:
        result = kill_and_confirm(sandbox.data_dir, trees=[(sandbox.sup_pid, root.starttime)], spare={spared})
        assert result.confirmed, result.reason
        assert set(result.killed) == {*tree.values(), *worker.values(), sandbox.sup_pid}
        assert result.killed[-2:] == (tree["postmaster"], sandbox.sup_pid)  # the database first among the anchors
        assert all(gone(p) for p in result.killed) and live(spared)
        assert f"the process tree of {sandbox.sup_pid}" in result.reason
    finally:
        os.kill(spared, signal.SIGKILL)  # its parent is gone: the sandbox can no longer find it


def test_a_tree_whose_root_is_gone_or_spared_is_nothing_to_kill(sandbox: Sandbox):
    worker = sandbox.fake({"role": "worker"}, postgres=False)["worker"]
    root = read_stat(sandbox.sup_pid)
    assert root is not None
    for trees, spare in (([(sandbox.sup_pid, root.starttime + 1)], set()),  # the pid is someone else's now
                         ([(sandbox.sup_pid, root.starttime)], {sandbox.sup_pid})):  # as init always is
        result = kill_and_confirm(None, trees=trees, spare=spare)
        assert result.confirmed and result.killed == () and result.reason == (
            f"confirmed: nothing of the process tree of {sandbox.sup_pid} was running"), result
    assert live(sandbox.sup_pid) and live(worker)


def test_proc_never_blocks_on_the_database():
    source = Path(fence.__file__).read_text() + Path(proc.__file__).read_text()
    assert "subprocess" not in source and "psycopg" not in source


# -- one reader of postmaster.pid, one way to SIGKILL PostgreSQL -------------------------------------

HASUP = Path(proc.__file__).parent
# Files that send SIGKILL to processes that are no PostgreSQL; everything else kills through proc.
NOT_POSTGRES = {
    "hasup/supervisor.py": "its workers, on a missed heartbeat or a stuck shutdown",
    "hasup/supervision/shutdown.py": "workers still there when the shutdown's grace is over",
    "hasup/supervision/heartbeat.py": "a worker that ignored SIGABRT",
    "hasup/supervision/system.py": "the supervisor's seam: the workers' signals",
    "hasup/postgresql/callbacks.py": "callback scripts, by their process group",
    "hasup/postgresql/group_run.py": "restore commands (replica and bootstrap methods), by their process group",
    "hasup/postgresql/hooks.py": "pre_promote and before_stop scripts, by their process group",
}


def sources() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(HASUP.rglob("*.py")):
        yield str(path.relative_to(HASUP.parent)), ast.parse(path.read_text(), str(path))


def lines_of(func: object) -> range:
    body, first = inspect.getsourcelines(func)  # type: ignore[arg-type]
    return range(first, first + len(body))


def test_postmaster_pid_is_read_in_one_place_only():
    named = [(rel, node.lineno) for rel, tree in sources() for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and re.fullmatch(r"(?:.*/)?postmaster\.pid", node.value)]
    assert len(named) == 1, f"postmaster.pid named in code at {named}: read it with proc.read_postmaster_pid"
    rel, line = named[0]
    assert rel == "hasup/proc.py" and line in lines_of(read_postmaster_pid), named


def test_postgres_is_sigkilled_in_one_place_only():
    def sigkills(tree: ast.Module) -> list[int]:
        out = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "SIGKILL" or isinstance(node, ast.Name) \
                    and node.id == "SIGKILL":
                out.append(node.lineno)
            elif isinstance(node, ast.Call) and re.search(r"kill|signal|send", ast.unparse(node.func)) \
                    and any(isinstance(a, ast.Constant) and a.value == 9 for a in node.args):
                out.append(node.lineno)  # kill(pid, 9)
        return out

    found = {rel: lines for rel, tree in sources() if (lines := sigkills(tree))}
    in_proc = found.pop("hasup/proc.py", [])
    assert len(in_proc) == 1 and in_proc[0] in lines_of(proc._Kill.kill), in_proc
    strays = {rel: lines for rel, lines in found.items() if rel not in NOT_POSTGRES}
    assert not strays, (f"SIGKILL outside hasup/proc.py at {strays}: kill PostgreSQL with proc.kill_and_confirm, "
                        "or, if these kill something else, say what in NOT_POSTGRES")
