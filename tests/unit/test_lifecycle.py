"""Lifecycle paths that need no PostgreSQL: primary_stop_timeout and discarding a data directory."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hasup.config import DynamicConfig
from hasup.config.standby import REMOTE
from hasup.postgresql.lifecycle import ActionFailed, Lifecycle
from hasup.postgresql.probe import LeaderTimelines
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


def test_cancel_current_kills_a_hanging_replica_method_and_its_helpers_and_no_method_follows(tmp_path):
    import threading
    import time

    from hasup.config.methods import ReplicaMethod
    from hasup.postgresql.state import PgStatus

    pm = FakePostmaster(stops=True)
    pm.running = False
    data = tmp_path / "data"
    pids = tmp_path / "pids"
    hang = tmp_path / "hang.sh"
    hang.write_text(f"#!/bin/sh\nsleep 600 &\necho $$ $! > {pids}\nwait\n")
    hang.chmod(0o755)
    after = tmp_path / "after-ran"
    lc = lifecycle(tmp_path, DynamicConfig(), pm)
    pg = replace(lc.cfg.postgresql, data_dir=str(data), pgpass=str(tmp_path / "pgpass"),
                 create_replica_methods=("hang", "after"),
                 replica_methods={"hang": ReplicaMethod("hang", str(hang), no_leader=True),
                                  "after": ReplicaMethod("after", f"touch {after}", no_leader=True)})
    lc.cfg = replace(lc.cfg, postgresql=pg)
    states: list[PgStatus] = []
    lc.on_state = states.append
    errors: list[str] = []

    def create() -> None:
        try:
            lc.create_replica(None, None)
        except ActionFailed as exc:
            errors.append(str(exc))
    thread = threading.Thread(target=create)
    thread.start()
    deadline = time.monotonic() + 10
    while not pids.exists() or not pids.read_text().strip():
        assert time.monotonic() < deadline, "the hang method never started"
        time.sleep(0.02)
    started = time.monotonic()
    lc.cancel_current()
    thread.join(15)
    assert not thread.is_alive() and errors == ["cancelled"] and time.monotonic() - started < 10
    for pid in (int(p) for p in pids.read_text().split()):
        if os.path.exists(f"/proc/{pid}"):  # a zombie at most, waiting for its parent
            assert open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    assert not after.exists() and states == [PgStatus.CREATING_REPLICA]


def test_reinitialize_empties_the_data_directory_and_from_leader_runs_only_basebackup(tmp_path):
    from hasup.config.methods import ReplicaMethod

    pm = FakePostmaster(stops=True)
    pm.running = False
    data = tmp_path / "data"
    data.mkdir()
    (data / "old").write_text("x")
    ran = tmp_path / "method-ran"
    lc = lifecycle(tmp_path, DynamicConfig(), pm)
    lc.cfg = replace(lc.cfg, postgresql=replace(
        lc.cfg.postgresql, data_dir=str(data), pgpass=str(tmp_path / "pgpass"),
        create_replica_methods=("custom", "basebackup"),
        replica_methods={"custom": ReplicaMethod("custom", f"touch {ran}", keep_data=True)}))
    seen: list[list[str]] = []
    lc._basebackup = lambda leader, url: seen.append(os.listdir(data)) or "refused"  # type: ignore[method-assign]
    with pytest.raises(ActionFailed, match="creating replica from n2 failed: basebackup: refused"):
        lc.reinitialize("n2", "postgres://10.0.0.2:5432/postgres", from_leader=True)
    assert seen == [[]] and not ran.exists()


def test_a_failed_custom_bootstrap_keeps_its_data_directory_as_failed_and_says_so(tmp_path):
    from hasup.config.methods import BootstrapMethod
    from hasup.postgresql.state import PgStatus

    pm = FakePostmaster(stops=True)
    pm.running = False
    data = tmp_path / "data"
    script = tmp_path / "restore.sh"
    script.write_text('#!/bin/sh\nfor a; do case "$a" in --datadir=*) D="${a#--datadir=}";; esac; done\n'
                      'echo partial > "$D/PG_VERSION"\necho "no such backup" >&2\nexit 3\n')
    script.chmod(0o755)
    lc = lifecycle(tmp_path, DynamicConfig(), pm)
    method = BootstrapMethod("pitr", str(script))
    lc.cfg = replace(lc.cfg, postgresql=replace(lc.cfg.postgresql, data_dir=str(data),
                                                pgpass=str(tmp_path / "pgpass")),
                     bootstrap=replace(lc.cfg.bootstrap, method=method))
    states: list[PgStatus] = []
    lc.on_state = states.append
    with pytest.raises(ActionFailed, match="custom bootstrap failed: pitr exited 3: no such backup"):
        lc.bootstrap()
    assert not data.exists() and (tmp_path / "data.failed" / "PG_VERSION").read_text() == "partial\n"
    assert states == [PgStatus.CUSTOM_BOOTSTRAP, PgStatus.CUSTOM_BOOTSTRAP_FAILED]


def test_a_new_standby_cluster_is_built_by_its_own_methods_and_without_a_host_only_by_no_leader_ones(tmp_path):
    from hasup.config.methods import ReplicaMethod

    pm = FakePostmaster(stops=True)
    pm.running = False
    data = tmp_path / "data"
    lc = lifecycle(tmp_path, DynamicConfig(standby_cluster={"host": "10.9.0.1", "port": 5433,
                                                            "create_replica_methods": ["wal_g", "nosuch"]}), pm)
    lc.cfg = replace(lc.cfg, postgresql=replace(
        lc.cfg.postgresql, data_dir=str(data), pgpass=str(tmp_path / "pgpass"),
        replica_methods={"wal_g": ReplicaMethod("wal_g", "false", no_leader=True)}))
    calls: list[tuple[object, object, object]] = []
    lc.create_replica = lambda leader, url, methods=None: calls.append((leader, url, methods)) or {}  # type: ignore
    lc.bootstrap()
    # The method this node has no section for is skipped; the remote is where a basebackup would come from.
    assert calls == [("/standby_cluster", "postgres://10.9.0.1:5433/postgres", ("wal_g",))]
    lc.dynamic = DynamicConfig(standby_cluster={"restore_command": "cp /a/%f %p",
                                                "create_replica_methods": ["wal_g"]})
    lc.bootstrap()
    assert calls[-1] == ("/standby_cluster", None, ("wal_g",))
    # Neither a host nor a method that can work without one: nothing to build the standby from.
    lc.dynamic = DynamicConfig(standby_cluster={"restore_command": "cp /a/%f %p"})
    with pytest.raises(ActionFailed, match="no host or port to clone from"):
        lc.bootstrap()


class RewindSpy:
    """Lifecycle.run standing in for pg_rewind: records the command lines, answers as pg_rewind does."""

    def __init__(self, output: str = "pg_rewind: Done!\n") -> None:
        self.output = output
        self.commands: list[list[str]] = []

    def __call__(self, cmd: list[str], timeout: float | None, env: dict[str, str] | None = None) -> str:
        self.commands.append(cmd)
        return self.output


@pytest.fixture
def rejoining(tmp_path, monkeypatch):
    """A stopped old primary on timeline 1, its pg_rewind recorded; the leader answers `answers["leader"]`."""
    from hasup.postgresql import lifecycle as lifecycle_module
    answers: dict[str, Any] = {}

    def leader_timelines(dsn: str, timeout: float = 5.0) -> LeaderTimelines:
        answers["dsn"] = dsn
        if isinstance(answers["leader"], Exception):
            raise answers["leader"]
        return answers["leader"]
    monkeypatch.setattr(lifecycle_module, "controldata", lambda bins, data_dir: {"Latest checkpoint's TimeLineID": "1"})
    monkeypatch.setattr(lifecycle_module, "leader_timelines", leader_timelines)
    lc = lifecycle(tmp_path, DynamicConfig(use_pg_rewind=True), FakePostmaster(stops=True))
    lc.cfg = replace(lc.cfg, postgresql=replace(lc.cfg.postgresql, pgpass=str(tmp_path / "pgpass")))
    spy = RewindSpy()
    lc.run = spy  # type: ignore[method-assign]
    return lc, spy, answers


def test_an_old_primary_asks_the_leader_its_timeline_when_etcd_still_shows_ours_and_rewinds(rejoining):
    """Found by the mixed chaos run: Patroni's new leader shows its new timeline in etcd a loop or more
    after promoting; an old hasup leader that rejoined in between started on its diverged history and
    streamed nothing until the stuck-replica rule rewound it 30 s later."""
    lc, spy, answers = rejoining
    answers["leader"] = LeaderTimelines(running=2, checkpointed=2)
    lc.maybe_rewind("node2", "postgres://10.0.0.2:5432/postgres", 1)
    assert [c[0].endswith("pg_rewind") for c in spy.commands] == [True]
    source = spy.commands[0][-1].removeprefix("--source-server=")
    assert "host=10.0.0.2 port=5432" in source and answers["dsn"].startswith(source + " passfile=")  # the same user


def test_no_rewind_when_the_leader_runs_on_our_timeline_or_cannot_be_asked(rejoining):
    lc, spy, answers = rejoining
    answers["leader"] = LeaderTimelines(running=1, checkpointed=1)
    lc.maybe_rewind("node2", "postgres://10.0.0.2:5432/postgres", 1)
    answers["leader"] = LeaderTimelines(running=None, checkpointed=1)  # a standby leader: etcd's word stands
    lc.maybe_rewind("node2", "postgres://10.0.0.2:5432/postgres", None)
    answers["leader"] = OSError("could not connect to server: timed out")
    lc.maybe_rewind("node2", "postgres://10.0.0.2:5432/postgres", 1)
    assert spy.commands == []
    answers["leader"] = LeaderTimelines(running=5, checkpointed=5)
    answers.pop("dsn")
    lc.maybe_rewind(REMOTE, "postgres://10.0.0.9:5432/postgres", None)  # a standby leader's remote primary
    assert spy.commands == [] and "dsn" not in answers  # not asked, as before: another cluster's history
    answers["leader"] = OSError("could not connect to server: timed out")
    lc.maybe_rewind("node2", "postgres://10.0.0.2:5432/postgres", 2)  # etcd knows: rewinds though it cannot ask
    assert len(spy.commands) == 1


def test_no_pg_rewind_against_a_leader_whose_pg_control_still_shows_its_old_timeline(rejoining):
    """Found by a chaos run of this fix: asked right after its promotion, a Patroni leader wrote on timeline 4
    while its pg_control (all pg_rewind reads) still said 1; pg_rewind rewound to the wrong point and left
    a data directory that could not start again ("requested timeline 4 does not contain minimum recovery
    point ... on timeline 1"), for good."""
    lc, spy, answers = rejoining
    answers["leader"] = LeaderTimelines(running=2, checkpointed=1)
    with pytest.raises(ActionFailed, match="waiting for a checkpoint on node2 before rewind: it writes on "
                                           "timeline 2, its pg_control still shows 1"):
        lc.maybe_rewind("node2", "postgres://10.0.0.2:5432/postgres", 2)
    assert spy.commands == []
    # A leader that cannot be asked: pg_rewind's own "same timeline" still stops a rejoin on the old history.
    answers["leader"] = OSError("timed out")
    spy.output = "pg_rewind: source and target cluster are on the same timeline\npg_rewind: no rewind required\n"
    with pytest.raises(ActionFailed, match="waiting for a checkpoint on node2"):
        lc.maybe_rewind("node2", "postgres://10.0.0.2:5432/postgres", 2)
