"""hasup.postgresql.control against fake PostgreSQL trees: finding the postmaster, and killing it with a confirmation.

Both go through hasup.proc (the one postmaster.pid reader, the one
kill-and-confirm primitive); these tests hold Postmaster to that.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from hasup.postgresql.control import Binaries, Postmaster, postmaster_pid
from tests.harness import wait_for
from tests.unit.proctrees import Sandbox, gone, kill_tree, live, live_descendants


def postmaster(box: Sandbox) -> Postmaster:
    return Postmaster(Binaries(""), box.data_dir, "/nonexistent/postgresql.conf")


def test_the_postmaster_is_found_only_when_proc_vouches_for_the_pid_file(sandbox: Sandbox, tmp_path: Path):
    pm = sandbox.fake({"role": "postmaster"})["postmaster"]
    assert postmaster_pid(sandbox.data_dir) is None  # no postmaster.pid yet
    sandbox.write_pidfile(pm)
    assert postmaster_pid(sandbox.data_dir) == pm == postmaster(sandbox).pid()
    plain = sandbox.fake({"role": "reused"}, postgres=False)["reused"]
    sandbox.write_pidfile(plain)  # a stale file: the pid went to someone else
    assert postmaster_pid(sandbox.data_dir) is None
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = sandbox.fake({"role": "other-postmaster"}, cwd=str(other_dir))["other-postmaster"]
    sandbox.write_pidfile(other)  # a postgres, but another cluster's
    assert postmaster_pid(sandbox.data_dir) is None and postmaster(sandbox).pid() is None


def test_kill_all_kills_the_whole_tree_and_its_orphans_and_confirms(sandbox: Sandbox):
    tree = sandbox.fake({"role": "postmaster", "children": [
        {"role": "checkpointer", "ignore": True},
        {"role": "backend", "setsid": True, "stop": True, "children": [{"role": "backend-child", "ignore": True}]},
    ]})
    orphan = sandbox.fake({"role": "orphaned-backend", "setsid": True, "ignore": True})["orphaned-backend"]
    sandbox.write_pidfile(tree["postmaster"])
    pm = postmaster(sandbox)
    result = pm.kill_all(pm.pid())
    assert result.confirmed, result.reason
    assert set(result.killed) == {*tree.values(), orphan} and result.killed[-1] == tree["postmaster"]
    assert all(gone(p) for p in result.killed)
    assert result.reason.startswith("confirmed in ") and "PostgreSQL in " in result.reason


def test_kill_all_with_the_postmaster_gone_still_kills_its_orphans(sandbox: Sandbox):
    orphan = sandbox.fake({"role": "orphaned-backend", "ignore": True})["orphaned-backend"]
    result = postmaster(sandbox).kill_all(None)
    assert result.confirmed and result.killed == (orphan,), result


def test_kill_all_kills_our_own_child_before_it_entered_the_data_directory(sandbox: Sandbox, fake_bin: tuple[str, str]):
    # Just launched: postmaster.pid is not written and the cwd is still ours, so /proc cannot tell it
    # for the postmaster of the data directory; but it is our child, which is enough.
    exe, script = fake_bin
    spec = {"role": "starting-postmaster", "children": [{"role": "early-child"}]}
    pm = postmaster(sandbox)
    child = subprocess.Popen(["postgres: starting-postmaster", "-I", "-S", script, json.dumps(spec)], executable=exe,
                             cwd="/", stdin=subprocess.DEVNULL)
    pm._child = child  # what Postmaster.start leaves behind
    try:
        wait_for(lambda: live_descendants(child.pid), 10, "the fake postmaster's child", interval=0.01)
        early = live_descendants(child.pid)
        assert pm.pid() == child.pid
        result = pm.kill_all(pm.pid())
        assert result.confirmed and set(result.killed) == {child.pid, *early}, result
        assert pm._child is None and child.returncode is not None  # reaped: no zombie left
    finally:
        if child.returncode is None:
            kill_tree(child.pid)
            child.kill()
            child.wait(10)


def test_kill_all_leaves_other_processes_alone(sandbox: Sandbox, tmp_path: Path):
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = sandbox.fake({"role": "other-postmaster", "children": [{"role": "other-backend"}]}, cwd=str(other_dir))
    plain = sandbox.fake({"role": "plain"}, postgres=False)["plain"]
    result = postmaster(sandbox).kill_all(other["other-postmaster"])  # a wrong pid, say from a stale memory
    assert result.confirmed and result.killed == (), result
    assert all(live(p) for p in [*other.values(), plain])
