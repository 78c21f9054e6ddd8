"""pre_promote and before_stop: run and waited for, bounded, killable, with their output kept short;
a vetoed promotion never reaches pg_ctl, and every stop but an urgent one waits for before_stop first."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from hasup import ipc
from hasup.config import DynamicConfig
from hasup.election.postgres_link import PostgresLink
from hasup.postgresql import hooks
from hasup.postgresql.hooks import OUTPUT_KEPT, run_hook
from hasup.postgresql.lifecycle import ActionFailed
from tests.harness import alive, wait_for
from tests.unit.test_lifecycle import FakePostmaster, lifecycle


def test_a_hook_that_succeeds_or_fails_says_so_with_the_end_of_its_output():
    assert run_hook("pre_promote", "true", 5).ok
    failed = run_hook("pre_promote", "sh -c 'echo first; echo last >&2; exit 3'", 5)
    assert (failed.ok, failed.code, failed.reason) == (False, 3, "exited with status 3")
    assert failed.output == "first\nlast"
    signalled = run_hook("before_stop", "sh -c 'kill -TERM $$'", 5)
    assert (signalled.ok, signalled.code) == (False, -15)
    missing = run_hook("pre_promote", "/nonexistent/script", 5)
    assert not missing.ok and missing.code is None and "could not be started" in missing.reason


def test_a_chatty_hook_keeps_only_the_tail_of_its_output():
    result = run_hook("before_stop", "sh -c 'head -c 1000000 /dev/zero | tr \"\\0\" x; echo; echo END'", 10)
    assert result.ok and len(result.output) <= OUTPUT_KEPT and result.output.endswith("END")


def test_a_hung_hook_is_killed_with_its_group_at_its_timeout(tmp_path):
    pids = tmp_path / "pids"
    started = time.monotonic()
    result = run_hook("pre_promote", f"sh -c 'sleep 60 & echo $$ $! > {pids}; wait'", 0.5)
    took = time.monotonic() - started
    assert not result.ok and result.code is None and "still running after 0.5 s" in result.reason
    assert 0.5 <= took < 5, took
    leader, child = (int(p) for p in pids.read_text().split())
    wait_for(lambda: not alive(leader) and not alive(child), 5, "the hook and its child to be gone")


def test_a_background_child_holding_the_output_open_does_not_hold_the_caller(tmp_path):
    started = time.monotonic()
    child = tmp_path / "child"
    result = run_hook("before_stop", f"sh -c 'sleep 30 & echo $! > {child}; echo done'", 20)
    took = time.monotonic() - started
    os.kill(int(child.read_text()), signal.SIGKILL)  # what the script left running is its own business
    assert result.ok and result.output == "done" and took < 5


def test_a_cancelled_action_kills_its_hook():
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    result = run_hook("before_stop", "sleep 60", 30, cancel)
    assert not result.ok and "cancelled" in result.reason and time.monotonic() - started < 5


def test_secrets_in_the_environment_never_reach_a_hook(tmp_path):
    out = tmp_path / "env"
    env = {"PATH": os.environ["PATH"], "PGPASSWORD": "s3cret", "PATRONI_X": "y", "HASUP_Y": "z", "KEEP": "1"}
    assert run_hook("pre_promote", f"sh -c 'env > {out}'", 5, environ=env).ok
    seen = out.read_text()
    assert "KEEP=1" in seen and "s3cret" not in seen and "PATRONI_X" not in seen and "HASUP_Y" not in seen


# -- in the lifecycle --------------------------------------------------------------------------------


def hooked(tmp_path: Path, pm: FakePostmaster, **hooks_set: str):
    lc = lifecycle(tmp_path, DynamicConfig(), pm)
    lc.cfg = replace(lc.cfg, postgresql=replace(lc.cfg.postgresql, callback_timeout=5.0, **hooks_set))
    return lc


def test_a_failing_pre_promote_refuses_the_promotion_before_pg_ctl(tmp_path, monkeypatch):
    ran: list[list[str]] = []
    monkeypatch.setattr("hasup.postgresql.lifecycle.run", lambda cmd, *a, **kw: ran.append(list(cmd)) or "")
    lc = hooked(tmp_path, FakePostmaster(stops=True), pre_promote="sh -c 'exit 1'")
    with pytest.raises(ActionFailed) as failed:
        lc.promote()
    assert failed.value.result == {"refused_by": "pre_promote"} and "exited with status 1" in str(failed.value)
    assert ran == []  # pg_ctl promote never ran


def test_before_stop_runs_before_each_stop_but_an_urgent_one(tmp_path, monkeypatch):
    log = tmp_path / "order"
    pm = FakePostmaster(stops=True)
    stop = pm.stop

    def recorded_stop(mode: str, budget: float) -> bool:
        with open(log, "a") as f:
            f.write(f"stop {mode}\n")
        return stop(mode, budget)
    pm.stop = recorded_stop  # type: ignore[method-assign]
    lc = hooked(tmp_path, pm, before_stop=f"sh -c 'echo hook >> {log}; exit 7'")
    for mode, urgent in (("fast", False), ("immediate", False), ("immediate", True)):
        pm.running = True  # a server to stop each time
        # An immediate stop that is not urgent is reinitialize's; an urgent one a primary whose lease may be gone.
        assert lc.stop(mode, before_stop=not urgent) == {"stopped": True}
    assert log.read_text().splitlines() == ["hook", "stop fast", "hook", "stop immediate", "stop immediate"]


def test_before_stop_is_skipped_when_nothing_runs(tmp_path):
    pm = FakePostmaster(stops=True)
    pm.running = False
    lc = hooked(tmp_path, pm, before_stop=f"touch {tmp_path / 'ran'}")
    assert lc.stop("fast") == {"stopped": True}
    assert not (tmp_path / "ran").exists()


def test_the_hooks_keep_their_runner_small():
    # One job: run a script and wait, bounded.  Not a second callback runner.
    assert len(Path(hooks.__file__).read_text().splitlines()) < 160


def test_election_gives_a_request_the_time_its_hooks_may_take():
    sent: list[ipc.Message] = []
    plain, hooked = PostgresLink(sent.append, 60.0), PostgresLink(sent.append, 60.0, hook_time=45.0)
    plain.request(ipc.Promote)
    hooked.request(ipc.Promote)
    first, second = (m for m in sent if isinstance(m, ipc.Promote))
    assert 44.0 < second.deadline - first.deadline < 46.0
