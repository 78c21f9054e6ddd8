"""Lifecycle paths that need no PostgreSQL: primary_stop_timeout and discarding a data directory."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from hasup.config import DynamicConfig
from hasup.postgresql.lifecycle import ActionFailed, Lifecycle
from hasup.proc import KillResult
from tests.unit.test_api_worker import make_config


class FakePostmaster:
    def __init__(self, stops: bool) -> None:
        self.stops = stops
        self.calls: list[tuple[str, float]] = []
        self.killed: list[int] = []
        self.running = True
        self.survives_kill = False  # stuck in the kernel, say

    def stop(self, mode: str, budget: float) -> bool:
        self.calls.append((mode, budget))
        if self.stops:
            self.running = False
        return self.stops

    def pid(self) -> int | None:
        return 4242 if self.running else None

    def kill_all(self, pid: int | None) -> KillResult:
        assert pid is not None
        self.killed.append(pid)
        if self.survives_kill:
            return KillResult(False, (pid,), (pid,), f"NOT confirmed after 5000 ms: 1 still alive: {pid} (D)")
        self.running = False
        return KillResult(True, (pid,), (), "confirmed in 1 ms: killed 1 processes (PostgreSQL in /data)")

    def wait_gone(self, pid: int, timeout: float) -> bool:
        return not self.running


def lifecycle(tmp_path: Path, dynamic: DynamicConfig, postmaster: FakePostmaster) -> Lifecycle:
    cfg = make_config(1)
    cfg = replace(cfg, postgresql=replace(cfg.postgresql, data_dir=str(tmp_path), config_dir=str(tmp_path)))
    return Lifecycle(cfg, dynamic, postmaster, lambda _state: None)  # type: ignore[arg-type]


def test_a_hanging_primary_stop_in_synchronous_mode_ends_with_sigkill_after_primary_stop_timeout(tmp_path):
    pm = FakePostmaster(stops=False)
    lc = lifecycle(tmp_path, DynamicConfig(synchronous_mode=True, primary_stop_timeout=5), pm)
    assert lc.stop("fast") == {"stopped": True}
    assert pm.calls == [("fast", 5.0)] and pm.killed == [4242]  # no detour through an immediate stop


def test_a_kill_that_cannot_be_confirmed_fails_the_stop_and_says_why(tmp_path):
    pm = FakePostmaster(stops=False)
    pm.survives_kill = True
    lc = lifecycle(tmp_path, DynamicConfig(synchronous_mode=True, primary_stop_timeout=5), pm)
    with pytest.raises(ActionFailed, match=r"could not be stopped: kill NOT confirmed .* 4242 \(D\)"):
        lc.stop("fast")
    assert pm.killed == [4242]


def test_without_synchronous_mode_primary_stop_timeout_does_not_apply(tmp_path):
    pm = FakePostmaster(stops=False)
    lc = lifecycle(tmp_path, DynamicConfig(primary_stop_timeout=5), pm)
    lc.stop("fast")
    assert pm.calls[0] == ("fast", 60.0) and pm.calls[1][0] == "immediate"


def test_discarding_the_data_directory_empties_it_and_never_touches_a_running_server(tmp_path):
    (tmp_path / "PG_VERSION").write_text("15\n")
    (tmp_path / "base").mkdir()
    running = lifecycle(tmp_path, DynamicConfig(), FakePostmaster(stops=True))
    with pytest.raises(ActionFailed, match="is running"):
        running.discard_data("pg_rewind failed")
    assert (tmp_path / "PG_VERSION").exists()
    stopped_pm = FakePostmaster(stops=True)
    stopped_pm.running = False
    with pytest.raises(ActionFailed, match="data directory removed"):
        lifecycle(tmp_path, DynamicConfig(), stopped_pm).discard_data("pg_rewind failed")
    assert os.listdir(tmp_path) == []
