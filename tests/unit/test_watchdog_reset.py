"""The emulated reset, by the watchdog worker and by the emulated device, against fake node trees.

Both kill through hasup.proc.kill_and_confirm and now say whether every
process is gone.  A node here is the subreaper stand-in of
tests/unit/proctrees.py (the supervisor) with fake PostgreSQL and worker
processes below it; the reset takes the stand-in too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hasup.proc import read_stat
from hasup.watchdog.emulator import Emulator, start_time
from hasup.workers.watchdog import reset_processes
from tests.harness import wait_for
from tests.unit.proctrees import Sandbox, gone, live

# The watchdog worker's reset_node, run where the worker runs: a child of the supervisor.  Its last
# word goes to stderr (the supervisor and its log writer are gone by then): here, a file.
WORKER = r"""
import os, sys, types
from hasup.workers.watchdog import WatchdogWorker
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.dup2(fd, 2)
pg = types.SimpleNamespace(data_dir=sys.argv[1])
ctx = types.SimpleNamespace(config=types.SimpleNamespace(postgresql=pg), supervisor_pid=os.getppid())
WatchdogWorker.reset_node(types.SimpleNamespace(ctx=ctx), "test: the lease ends, resetting")
"""

NODE = {"role": "postmaster", "children": [
    {"role": "checkpointer", "ignore": True},
    {"role": "backend", "setsid": True, "stop": True, "children": [{"role": "backend-child", "ignore": True}]},
]}


def node(box: Sandbox) -> list[int]:
    """A PostgreSQL with postmaster.pid and a worker that is no postgres, below the supervisor stand-in."""
    tree = box.fake(NODE)
    box.write_pidfile(tree["postmaster"])
    worker = box.fake({"role": "election-worker", "children": [{"role": "helper"}]}, postgres=False)
    return [*tree.values(), *worker.values()]


def test_the_worker_resets_the_whole_node_and_confirms_it(sandbox: Sandbox, tmp_path: Path):
    pids = node(sandbox)
    stray = sandbox.fake_outside({"role": "stray-backend", "ignore": True}, sandbox.data_dir)  # outside the tree
    last_word = tmp_path / "stderr"
    runner = sandbox.spawn([sys.executable, "-c", WORKER, sandbox.data_dir, str(last_word)], sys.executable)
    lines = wait_for(lambda: [ln for ln in last_word.read_text().splitlines() if "node reset" in ln], 20,
                     "the reset's last word")
    assert lines[0].startswith("hasup watchdog: node reset, kill confirmed in "), lines
    assert "test: the lease ends, resetting" in last_word.read_text()  # logged before the kills
    wait_for(lambda: gone(runner), 10, "the worker to exit after the reset", interval=0.01)
    assert all(gone(p) for p in [*pids, stray, sandbox.sup_pid])


def test_an_orphaned_worker_resets_postgresql_only(sandbox: Sandbox):
    # Not the supervisor's child (as this test is not): the supervisor's tree is no longer ours to find.
    tree = sandbox.fake(NODE)
    sandbox.write_pidfile(tree["postmaster"])
    worker = sandbox.fake({"role": "election-worker"}, postgres=False)["election-worker"]
    result = reset_processes(sandbox.data_dir, sandbox.sup_pid)
    assert result.confirmed and set(result.killed) == set(tree.values()), result
    assert live(sandbox.sup_pid) and live(worker)


def emulator(tmp_path: Path) -> Emulator:
    return Emulator(str(tmp_path / "wd.sock"), str(tmp_path / "wd.jsonl"), 60)


def fired(tmp_path: Path) -> list[dict[str, object]]:
    events = [json.loads(line) for line in (tmp_path / "wd.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == "fired"]


def test_the_emulated_device_resets_its_clients_node_and_records_the_confirmation(sandbox: Sandbox, tmp_path: Path):
    pids = node(sandbox)
    emu = emulator(tmp_path)
    emu.node_root, emu.node_root_started = sandbox.sup_pid, start_time(sandbox.sup_pid)
    emu.deadline = 0.0
    emu.fire()
    [event] = fired(tmp_path)
    assert event["confirmed"] is True, event
    assert set(event["killed"]) == {*pids, sandbox.sup_pid}  # type: ignore[call-overload]
    assert all(gone(p) for p in [*pids, sandbox.sup_pid])
    assert emu.deadline is None
    # The node is dead now: firing again finds nothing to kill, and says so.
    emu.fire()
    assert fired(tmp_path)[-1]["killed"] == [] and fired(tmp_path)[-1]["confirmed"] is True


def test_the_emulated_device_never_resets_a_stranger_that_took_the_roots_pid(sandbox: Sandbox, tmp_path: Path):
    pids = node(sandbox)
    root = read_stat(sandbox.sup_pid)
    assert root is not None
    emu = emulator(tmp_path)
    emu.node_root, emu.node_root_started = sandbox.sup_pid, root.starttime - 1  # the client's node died long ago
    emu.fire()
    assert fired(tmp_path)[-1]["killed"] == []
    assert all(live(p) for p in [*pids, sandbox.sup_pid])
    assert read_stat(sandbox.sup_pid).state != "T"  # type: ignore[union-attr]  # not even stopped
