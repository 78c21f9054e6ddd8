"""Replica creation methods, custom bootstrap methods and recovery settings: the command lines built,
the config checks, the order methods run in, the process-group runner and the recovery settings written."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hasup.config.methods import (
    DEFAULT_METHOD_TIMEOUT,
    BootstrapMethod,
    ReplicaMethod,
    methods_to_try,
)
from hasup.postgresql import conf
from hasup.postgresql.bootstrap_methods import bootstrap_argv, restore_recovery, signal_files
from hasup.postgresql.group_run import GroupRunner, Outcome
from hasup.postgresql.replica_methods import ReplicaBuilder, method_argv
from hasup.postgresql.restore import strip_recovery_settings
from tests.unit.test_config import load, problems_of

# -- command lines ---------------------------------------------------------------------------


def test_a_method_gets_its_arguments_then_scope_role_datadir_connstring() -> None:
    m = ReplicaMethod("wal_g", "/usr/bin/restore --verbose", arguments=(("envdir", "/etc/wal-g"), ("jobs", "4")))
    assert method_argv(m, "main", "/pg/data", "host=h port=5432 user=replicator") == [
        "/usr/bin/restore", "--verbose", "--envdir=/etc/wal-g", "--jobs=4", "--scope=main", "--role=replica",
        "--datadir=/pg/data", "--connstring=host=h port=5432 user=replicator"]


def test_no_params_passes_only_the_sections_own_arguments_not_its_flags() -> None:
    m = ReplicaMethod("r", "restore", no_params=True, keep_data=True, arguments=(("x", "1"),),
                      given_flags=(("keep_data", "True"), ("no_params", "True")))
    assert method_argv(m, "main", "/d", "c") == ["restore", "--x=1"]


def test_without_no_params_the_given_flags_are_passed_as_patroni_does_and_hasup_settings_are_not() -> None:
    raw = {"command": "restore", "keep_data": True, "no_leader": "on", "hasup_timeout": 30, "scope": "other"}
    cfg, _ = load({"postgresql.create_replica_methods": ["r"], "postgresql.r": raw})
    m = cfg.postgresql.replica_methods["r"]
    assert (m.keep_data, m.no_leader, m.no_params, m.timeout) == (True, True, False, 30.0)
    # A section key of hasup's own argument names gives way to hasup's value, in its place.
    assert method_argv(m, "main", "/d", "") == [
        "restore", "--keep_data=True", "--no_leader=True", "--scope=main", "--role=replica", "--datadir=/d",
        "--connstring="]


def test_a_bootstrap_method_gets_scope_datadir_then_its_arguments_never_its_settings() -> None:
    cfg, _ = load({"bootstrap.method": "pitr", "bootstrap.pitr": {
        "command": "restore.sh --from '/b k'", "keep_existing_recovery_conf": False, "no_params": False,
        "recovery_conf": {"restore_command": "cp /a/%f %p"}, "scope": "x", "datadir": "y", "backup": "latest",
        "hasup_timeout": "600"}})
    method = cfg.bootstrap.method
    assert method is not None and method.timeout == 600.0
    assert bootstrap_argv(method, "main", "/d") == ["restore.sh", "--from", "/b k", "--scope=main", "--datadir=/d",
                                                    "--backup=latest"]
    assert bootstrap_argv(BootstrapMethod("m", "r", no_params=True, arguments=(("a", "b"),)), "s", "/d") == \
        ["r", "--a=b"]


def test_without_a_leader_only_no_leader_methods_run() -> None:
    methods = {"a": ReplicaMethod("a", "a"), "b": ReplicaMethod("b", "b", no_leader=True)}
    assert methods_to_try(("basebackup", "a", "b"), methods, have_source=True) == ["basebackup", "a", "b"]
    assert methods_to_try(("basebackup", "a", "b"), methods, have_source=False) == ["b"]
    assert methods_to_try(("basebackup",), {}, have_source=False) == []


# -- configuration ---------------------------------------------------------------------------


def test_defaults_basebackup_no_recovery_conf_initdb() -> None:
    cfg, warnings = load()
    assert cfg.postgresql.create_replica_methods == ("basebackup",)
    assert cfg.postgresql.replica_methods == {} and cfg.postgresql.recovery_conf == {}
    assert cfg.bootstrap.method is None and warnings == []


def test_a_method_without_a_section_runs_its_name_with_the_default_timeout() -> None:
    cfg, warnings = load({"postgresql.create_replica_method": ["wal_e", "basebackup"]})
    assert cfg.postgresql.create_replica_methods == ("wal_e", "basebackup")
    assert cfg.postgresql.replica_methods["wal_e"].command == "wal_e"
    assert cfg.postgresql.replica_methods["wal_e"].timeout == DEFAULT_METHOD_TIMEOUT and warnings == []


@pytest.mark.parametrize(("changes", "expected"), [
    ({"postgresql.create_replica_methods": []},
     "postgresql.create_replica_methods: expected a non-empty list of method names, got []"),
    ({"postgresql.create_replica_methods": ["a", "a"]},
     "postgresql.create_replica_methods: method 'a' listed twice, got ['a', 'a']"),
    ({"postgresql.create_replica_methods": ["a b"]},
     "postgresql.create_replica_methods: 'a b' is not a method name (letters, digits, '_' and '-'), got ['a b']"),
    ({"postgresql.create_replica_methods": ["parameters"]},
     "postgresql.create_replica_methods: 'parameters' is a key of the postgresql section, not a method name"),
    ({"postgresql.create_replica_methods": ["r"], "postgresql.r": {"command": "x", "hasup_timeout": 0}},
     "postgresql.r.hasup_timeout: must be at least 1, got 0"),
    ({"postgresql.create_replica_methods": ["r"], "postgresql.r": {"command": "x", "hasup_timeout": 10**9}},
     "postgresql.r.hasup_timeout: must be at most 2.592e+06, got 1000000000"),
    ({"postgresql.create_replica_methods": ["r"], "postgresql.r": {"command": "x", "opts": [1]}},
     "postgresql.r.opts: expected a string, a number or a boolean, got [1]"),
    ({"postgresql.create_replica_methods": ["r"], "postgresql.r": {"command": "'unclosed"}},
     "postgresql.r.command: expected a command line (No closing quotation), got \"'unclosed\""),
    ({"postgresql.create_replica_methods": ["r"], "postgresql.r": {"command": "x", "keep_data": "maybe"}},
     "postgresql.r.keep_data: expected a boolean (on/off, true/false, yes/no, 1/0), got 'maybe'"),
    ({"postgresql.create_replica_methods": ["r"], "postgresql.r": "x"}, "postgresql.r: expected a mapping, got 'x'"),
    ({"postgresql.recovery_conf": {"recovery_min_apply_delay": "soon"}},
     "postgresql.recovery_conf.recovery_min_apply_delay: expected a duration such as 5min or 300000 "
     "(milliseconds), got 'soon'"),
    ({"postgresql.recovery_conf": {"restore_command": ["cp"]}},
     "postgresql.recovery_conf.restore_command: expected a string, got ['cp']"),
    ({"bootstrap.method": "pitr", "bootstrap.pitr": {"command": "x",
                                                      "recovery_conf": {"recovery_target_action": "stop"}}},
     "bootstrap.pitr.recovery_conf.recovery_target_action: expected one of pause, promote, shutdown, got 'stop'"),
    ({"bootstrap.method": "pitr", "bootstrap.pitr": {"keep_existing_recovery_conf": True}},
     "bootstrap.pitr.command: required"),
    ({"bootstrap.method": "pitr"}, "bootstrap.method: 'pitr' needs a section bootstrap.pitr with its command"),
    ({"bootstrap.method": "users"}, "bootstrap.method: 'users' is a key of the bootstrap section, not a method name"),
])
def test_bad_method_settings_are_one_line_each_naming_the_key(changes: dict[str, Any], expected: str) -> None:
    assert problems_of(changes) == [expected]


def test_recovery_conf_for_replicas_keeps_archive_settings_and_warns_about_the_rest() -> None:
    cfg, warnings = load({"postgresql.recovery_conf": {
        "restore_command": "cp /arch/%f %p", "archive_cleanup_command": "pg_archivecleanup /arch %r",
        "recovery_min_apply_delay": "5min", "recovery_target_time": "2026-01-01", "primary_conninfo": "host=x",
        "trigger_file": "/t", "hot_standby": "on"}})
    assert cfg.postgresql.recovery_conf == {"restore_command": "cp /arch/%f %p",
                                            "archive_cleanup_command": "pg_archivecleanup /arch %r",
                                            "recovery_min_apply_delay": "5min"}
    assert "postgresql.recovery_conf.primary_conninfo: set by hasup, ignored" in warnings
    assert any(w.startswith("postgresql.recovery_conf.recovery_target_time: a replica follows") for w in warnings)
    assert "postgresql.recovery_conf.hot_standby: not a recovery parameter of PostgreSQL 12 or later, ignored" \
        in warnings
    assert any(w.startswith("postgresql.recovery_conf.trigger_file: not used") for w in warnings)


def test_a_bootstrap_recovery_conf_keeps_its_targets_and_translates_pause_at_recovery_target() -> None:
    cfg, _ = load({"bootstrap.method": "pitr", "bootstrap.pitr": {"command": "x", "recovery_conf": {
        "restore_command": "cp /a/%f %p", "recovery_target_time": "2026-01-01 00:00:00+00",
        "recovery_target_inclusive": "false", "pause_at_recovery_target": False}}})
    method = cfg.bootstrap.method
    assert method is not None and method.recovery_conf == {
        "restore_command": "cp /a/%f %p", "recovery_target_time": "2026-01-01 00:00:00+00",
        "recovery_target_inclusive": False, "recovery_target_action": "promote"}


# -- recovery settings -----------------------------------------------------------------------


def test_a_replica_streams_fetches_from_the_archive_and_blanks_every_target() -> None:
    cfg, _ = load({"postgresql.recovery_conf": {"restore_command": "cp /arch/%f %p"}})
    params = conf.recovery_parameters(cfg, "postgres://10.0.0.2:5432/postgres", "node1")
    assert params["restore_command"] == "cp /arch/%f %p" and params["recovery_target_timeline"] == "latest"
    assert params["primary_slot_name"] == "node1" and "host=10.0.0.2" in params["primary_conninfo"]
    assert all(params[t] == "" for t in ("recovery_target", "recovery_target_time", "recovery_target_lsn",
                                         "recovery_target_name", "recovery_target_xid"))
    # The standby-cluster case: another archive given by the caller replaces recovery_conf.
    other = conf.recovery_parameters(cfg, None, None, {"restore_command": "fetch %f %p", "recovery_target": "x"})
    assert other["restore_command"] == "fetch %f %p" and other["recovery_target"] == ""
    assert "primary_conninfo" not in other
    text = conf.render_postgresql_conf(cfg, {}, params)
    assert "restore_command = 'cp /arch/%f %p'\n" in text and "recovery_target_time = ''\n" in text


def test_the_first_start_after_a_restore_turns_hot_standby_off_only_when_it_ends_in_a_promotion() -> None:
    target = {"restore_command": "cp", "recovery_target_time": "t"}
    promote = restore_recovery(BootstrapMethod("m", "x", recovery_conf={**target, "recovery_target_action": "promote"}))
    assert promote.hot_standby_off and promote.settings["recovery_target_time"] == "t"
    assert signal_files(promote) == {"recovery.signal": True, "standby.signal": False}
    pause = restore_recovery(BootstrapMethod("m", "x", recovery_conf=target))
    assert not pause.hot_standby_off
    kept = restore_recovery(BootstrapMethod("m", "x", keep_existing_recovery_conf=True))
    assert kept.hot_standby_off and kept.keep_existing and signal_files(kept) == {}
    plain = restore_recovery(BootstrapMethod("m", "x"))
    assert not plain.hot_standby_off and signal_files(plain) == {"recovery.signal": False, "standby.signal": False}


def test_recovery_settings_a_backup_left_in_postgresql_auto_conf_are_removed(tmp_path: Path) -> None:
    auto = tmp_path / "postgresql.auto.conf"
    auto.write_text("# Do not edit\nwork_mem = '8MB'\nrestore_command = 'pgbackrest get %f %p'\n"
                    "Recovery_Target_Time='2026'\n# restore_command = 'kept comment'\n")
    assert strip_recovery_settings(str(auto)) == ["restore_command", "Recovery_Target_Time"]
    assert auto.read_text() == "# Do not edit\nwork_mem = '8MB'\n# restore_command = 'kept comment'\n"
    assert strip_recovery_settings(str(tmp_path / "missing")) == []


# -- running the methods ---------------------------------------------------------------------


class FakeRunner:
    def __init__(self, results: dict[str, Outcome]) -> None:
        self.results = results
        self.ran: list[list[str]] = []

    def run(self, cmd: list[str], timeout: float, env: Any, label: str) -> Outcome:
        self.ran.append(cmd)
        return self.results[cmd[0]]


def builder(runner: FakeRunner, events: list[str], basebackup: str | None = "refused") -> ReplicaBuilder:
    state = {"empty": False}

    def clean() -> None:
        events.append("clean")
        state["empty"] = True

    def pg_basebackup() -> str | None:  # cleans before and after, as lifecycle's does
        events.append("basebackup")
        state["empty"] = basebackup is not None
        return basebackup
    return ReplicaBuilder(scope="s", data_dir="/d", runner=runner,  # type: ignore[arg-type]
                          basebackup=pg_basebackup, empty=lambda: state["empty"], clean=clean,
                          cancelled=lambda: False, env=dict)


def test_methods_run_in_order_until_one_succeeds_a_failure_cleans_unless_keep_data() -> None:
    runner = FakeRunner({"fails": Outcome(3, tail="no backup"), "keeps": Outcome(1), "works": Outcome(0)})
    methods = {"a": ReplicaMethod("a", "fails"), "k": ReplicaMethod("k", "keeps", keep_data=True),
               "w": ReplicaMethod("w", "works"), "never": ReplicaMethod("never", "never")}
    events: list[str] = []
    attempts = builder(runner, events).build(("k", "basebackup", "a", "w", "never"), methods, "host=x", "n2")
    assert [(a.method, a.ok) for a in attempts] == [("k", False), ("basebackup", False), ("a", False), ("w", True)]
    assert attempts[2].message == "a exited 3: no backup"
    # keep_data: neither cleaned before nor after; then basebackup (which cleans itself); then 'a' fails
    # on an empty directory, so nothing is left to clean for 'w'.
    assert events == ["basebackup"]
    assert [cmd[0] for cmd in runner.ran] == ["keeps", "fails", "works"]


def test_a_method_cleans_what_an_earlier_one_left_before_it_runs() -> None:
    runner = FakeRunner({"works": Outcome(0)})
    events: list[str] = []
    attempts = builder(runner, events).build(("w",), {"w": ReplicaMethod("w", "works")}, "host=x", "n2")
    assert attempts[-1].ok and events == ["clean"]


# -- the process-group runner ----------------------------------------------------------------

HANG = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(os.getpid(), child.pid, flush=True)
time.sleep(600)
"""


def _pids(outcome: Outcome) -> list[int]:
    return [int(p) for p in outcome.tail.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_command_over_its_timeout_is_killed_with_everything_it_started() -> None:
    runner = GroupRunner(lambda: False)
    started = time.monotonic()
    outcome = runner.run([sys.executable, "-c", HANG], 1.5, dict(os.environ), "hang")
    assert outcome.timed_out and not outcome.ok and time.monotonic() - started < 15
    pids = _pids(outcome)
    assert len(pids) == 2 and not any(_alive(p) for p in pids)
    assert outcome.describe("m").startswith("m timed out and was killed")


def test_a_cancel_from_another_thread_ends_the_command_at_once_and_no_new_one_starts() -> None:
    cancel = threading.Event()
    runner = GroupRunner(cancel.is_set)
    result: list[Outcome] = []
    thread = threading.Thread(target=lambda: result.append(runner.run([sys.executable, "-c", HANG], 600, None, "h")))
    thread.start()
    deadline = time.monotonic() + 10
    while runner._proc is None and time.monotonic() < deadline:
        time.sleep(0.01)
    cancel.set()
    runner.kill()
    thread.join(15)
    assert not thread.is_alive() and result[0].cancelled and not result[0].ok
    assert runner.run(["true"], 5, None, "t").cancelled


def test_a_command_that_succeeds_reports_its_status_and_output() -> None:
    outcome = GroupRunner(lambda: False).run(["sh", "-c", "echo one; echo two; exit 0"], 10, None, "ok")
    assert outcome.ok and outcome.tail == "one | two"
    failed = GroupRunner(lambda: False).run(["sh", "-c", "echo bad >&2; exit 4"], 10, None, "bad")
    assert failed.code == 4 and failed.describe("m") == "m exited 4: bad"
    missing = GroupRunner(lambda: False).run(["/nonexistent/restore"], 10, None, "missing")
    assert missing.code is None and "could not start" in missing.describe("m")


def test_a_replica_not_streaming_with_a_restore_command_is_in_archive_recovery() -> None:
    from hasup.postgresql.probe import ProbeResult
    from hasup.workers.postgres import replication_state

    def probe(in_recovery: bool, streaming: bool) -> ProbeResult:
        return ProbeResult(in_recovery, 1, None, None, None, None, None, None, None, 150000, "1", streaming, (),
                           False)
    assert replication_state(probe(True, True), archive_recovery=True) == "streaming"
    assert replication_state(probe(True, False), archive_recovery=True) == "in archive recovery"
    assert replication_state(probe(True, False), archive_recovery=False) is None
    assert replication_state(probe(False, False), archive_recovery=True) is None
