"""The callback runner with real processes: arguments, environment, timeout kills, one at a time."""

from __future__ import annotations

import logging
import os
import shlex
import time
from pathlib import Path

import pytest

from hasup.postgresql.callbacks import CallbackRunner, callback_env
from tests.harness import alive, reap_zombies, wait_for

RECORD = """#!/bin/sh
# Appends one line per call: each argument in brackets, then what the environment let through.
{ printf '[%s]' "$@"; printf '|%s\\n' "$PGPASSWORD$PATRONI_SUPERUSER_PASSWORD$HASUP_X${KEEP:-}"; } >> "$RECORDS"
"""
# Starts a child in its group, says both pids, then outlives any test timeout.
SLEEPER = """#!/bin/sh
sleep 300 &
echo "$$ $!" > "$PIDS"
wait
"""


def script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def drive(runner: CallbackRunner, until, timeout: float, what: str):
    """Turn the runner the way the worker's loop does until `until()` holds."""
    def step():
        runner.poll()
        return until()
    return wait_for(step, timeout, what, interval=0.02)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "RECORDS": str(tmp_path / "records"), "PIDS": str(tmp_path / "pids"),
            "KEEP": "kept", "PGPASSWORD": "pw-1", "PATRONI_SUPERUSER_PASSWORD": "pw-2", "HASUP_X": "pw-3"}


@pytest.fixture
def runner(env: dict[str, str]):
    r = CallbackRunner(environ=env)
    yield r
    r.kill_all()
    drive(r, lambda: not r.busy(), 10, "killed callbacks to be reaped")
    reap_zombies()


def records(tmp_path: Path) -> list[str]:
    path = tmp_path / "records"
    return path.read_text().splitlines() if path.exists() else []


def sleeper_pids(tmp_path: Path) -> list[int]:
    text = (tmp_path / "pids").read_text() if (tmp_path / "pids").exists() else ""
    return [int(p) for p in text.split()] if len(text.split()) == 2 else []


def test_a_callback_gets_its_arguments_and_no_secrets(tmp_path: Path, runner: CallbackRunner) -> None:
    record = script(tmp_path, "record.sh", RECORD)
    # Split shell-style: the quoted word stays one argument, before action, role and scope.
    pid = runner.fire(f"{shlex.quote(record)} 'two words'", "on_role_change", "primary", "batman", timeout=10)
    assert pid is not None
    drive(runner, lambda: not runner.busy(), 10, "the callback to finish")
    assert records(tmp_path) == ["[two words][on_role_change][primary][batman]|kept"]


def test_the_environment_loses_every_variable_that_may_hold_a_secret() -> None:
    env = callback_env({"PATH": "/bin", "PGPASSWORD": "a", "PATRONI_RESTAPI_PASSWORD": "b", "HASUP_NAME": "c",
                        "NOTIFY_SOCKET": "/run/x", "PGPASSFILE": "/p", "LANG": "C"})
    assert env == {"PATH": "/bin", "PGPASSFILE": "/p", "LANG": "C"}


def test_a_callback_past_its_timeout_is_killed_with_its_children(tmp_path: Path, runner: CallbackRunner,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    sleeper = script(tmp_path, "sleeper.sh", SLEEPER)
    began = time.monotonic()
    runner.fire(sleeper, "on_start", "replica", "batman", timeout=1.0)
    assert time.monotonic() - began < 0.5  # fire() starts it and returns: nothing waits for it
    leader, child = wait_for(lambda: sleeper_pids(tmp_path), 10, "the sleeper's pids")
    assert runner.next_deadline() <= began + 1.0 + 0.5
    with caplog.at_level(logging.WARNING, "hasup.postgresql.callbacks"):
        drive(runner, lambda: not runner.busy(), 10, "the sleeper to be killed and reaped")
    took = time.monotonic() - began
    assert 1.0 <= took < 3.0, took
    reap_zombies()  # the orphaned child was re-parented to us (tests run as a subreaper)
    wait_for(lambda: not alive(leader) and not alive(child), 5, "the sleeper and its child to be gone")
    assert "callback on_start replica" in caplog.text and "killed its process group" in caplog.text


def test_a_new_callback_kills_the_one_still_running(tmp_path: Path, runner: CallbackRunner) -> None:
    sleeper = script(tmp_path, "sleeper.sh", SLEEPER)
    record = script(tmp_path, "record.sh", RECORD)
    runner.fire(sleeper, "on_stop", "primary", "batman", timeout=60)
    leader, child = wait_for(lambda: sleeper_pids(tmp_path), 10, "the sleeper's pids")
    runner.fire(record, "on_role_change", "replica", "batman", timeout=60)
    drive(runner, lambda: not runner.busy(), 10, "the sleeper to be killed and the recorder to finish")
    reap_zombies()
    wait_for(lambda: not alive(leader) and not alive(child), 5, "the sleeper and its child to be gone")
    assert records(tmp_path) == ["[on_role_change][replica][batman]|kept"]


def test_on_reload_has_a_lane_of_its_own(tmp_path: Path, runner: CallbackRunner) -> None:
    sleeper = script(tmp_path, "sleeper.sh", SLEEPER)
    record = script(tmp_path, "record.sh", RECORD)
    runner.fire(sleeper, "on_reload", "replica", "batman", timeout=60)
    leader, _ = wait_for(lambda: sleeper_pids(tmp_path), 10, "the sleeper's pids")
    runner.fire(record, "on_restart", "replica", "batman", timeout=60)
    drive(runner, lambda: records(tmp_path) and "main" not in runner.lanes, 10, "the recorder to finish")
    assert alive(leader) and runner.lanes["reload"].action == "on_reload"


def test_exit_status_is_logged(tmp_path: Path, runner: CallbackRunner, caplog: pytest.LogCaptureFixture) -> None:
    failing = script(tmp_path, "fail.sh", "#!/bin/sh\nexit 3\n")
    with caplog.at_level(logging.INFO, "hasup.postgresql.callbacks"):
        runner.fire(failing, "on_start", "primary", "batman", timeout=10)
        drive(runner, lambda: not runner.busy(), 10, "the callback to exit")
    assert "callback on_start primary" in caplog.text and "exited with status 3" in caplog.text


def test_a_command_that_cannot_start_is_logged_not_raised(tmp_path: Path, runner: CallbackRunner,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "hasup.postgresql.callbacks"):
        assert runner.fire(str(tmp_path / "missing.sh"), "on_start", "primary", "batman", timeout=10) is None
    assert "could not be started" in caplog.text and not runner.busy()


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


def test_deadlines_and_reaping_pace_with_a_fake_clock() -> None:
    now = [100.0]
    procs: list[FakeProcess] = []
    kills: list[tuple[int, int]] = []

    def spawn(argv: list[str], env: dict[str, str]) -> FakeProcess:
        procs.append(FakeProcess(1000 + len(procs)))
        return procs[-1]

    r = CallbackRunner(spawn=spawn, killpg=lambda pid, sig: kills.append((pid, sig)), clock=lambda: now[0],
                       environ={})
    assert r.next_deadline() == float("inf")
    r.fire("/bin/cb", "on_start", "primary", "s", timeout=5)
    assert r.next_deadline() == 105.0
    now[0] = 104.9
    r.poll()
    assert kills == []
    now[0] = 105.0
    r.poll()
    assert kills == [(1000, 9)] and r.dying  # killed at its deadline, reaped soon after
    assert r.next_deadline() == pytest.approx(105.05)
    now[0] = 108.0  # still not reaped (stuck in the kernel): no more fast turns for it
    assert r.next_deadline() == float("inf")
    procs[0].code = -9
    r.poll()
    assert not r.busy()
