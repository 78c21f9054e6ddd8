"""Which callbacks the postgres worker's events call for, with which role (docs/operations.md, "Callbacks")."""

from __future__ import annotations

from typing import Any

import pytest

from hasup import ipc
from hasup.config import build_config
from hasup.postgresql.callback_events import Announcer, Before, Event
from hasup.postgresql.callbacks import Callbacks

UP_PRIMARY = {"in_recovery": False}
UP_REPLICA = {"in_recovery": True}


def before(kind: str, answering: str | None = None, running: bool | None = None, **kw: Any) -> Before:
    return Before(kind, answering, answering is not None if running is None else running, **kw)


def finish(a: Announcer, b: Before, ok: bool = True, result: dict[str, Any] | None = None,
           following: str | None = None, running: bool = True) -> list[Event]:
    a.began(b)
    return a.finished(b.kind, ok, result or {}, following, running)


def announcer(role: str | None) -> Announcer:
    """An announcer that has seen PostgreSQL running in `role`."""
    a = Announcer()
    if role is not None:
        assert a.observed("", True, True, role) == [Event("on_start", role)]
    return a


@pytest.mark.parametrize(("role", "b", "ok", "result", "running", "expected"), [
    # Starts: on_start once PostgreSQL is up, never during bootstrap or cloning.
    (None, before("Bootstrap"), True, UP_PRIMARY, True, [Event("on_start", "primary")]),
    (None, before("CreateReplica"), True, UP_REPLICA, True, [Event("on_start", "replica")]),
    (None, before("Start", as_primary=True), True, UP_PRIMARY, True, [Event("on_start", "primary")]),
    (None, before("Start", as_primary=False), True, UP_REPLICA, True, [Event("on_start", "replica")]),
    (None, before("Bootstrap"), False, {}, False, []),
    ("replica", before("Reinitialize", "replica"), True, UP_REPLICA, True, [Event("on_start", "replica")]),
    # A leader's PostgreSQL that would not start again: demoted.
    ("primary", before("Start", as_primary=True), False, {}, False, [Event("on_role_change", "demoted")]),
    ("replica", before("Start", as_primary=False), False, {}, False, []),
    # on_stop after a stop that signalled PostgreSQL, with the role it had.
    ("replica", before("Stop", "replica"), True, {"stopped": True}, False, [Event("on_stop", "replica")]),
    ("primary", before("Stop", "primary"), True, {"stopped": True}, False, [Event("on_stop", "primary")]),
    (None, before("Stop", None, running=False), True, {"stopped": True}, False, []),
    ("primary", before("Stop", "primary"), False, {}, True, []),
    # on_restart with the role PostgreSQL came back in.
    ("primary", before("Restart", "primary"), True, UP_PRIMARY, True, [Event("on_restart", "primary")]),
    ("replica", before("Restart", "replica"), True, UP_REPLICA, True, [Event("on_restart", "replica")]),
    ("replica", before("Restart", "replica"), False, {}, False, []),
    # Promotion: Patroni's `promoted` is passed as primary.
    ("replica", before("Promote", "replica"), True, UP_PRIMARY, True, [Event("on_role_change", "primary")]),
    ("replica", before("Promote", "replica"), False, {}, True, []),
    # A switchover's demotion stops the primary (on_stop); rejoining is the role change.
    ("primary", before("Demote", "primary"), True, {"checkpoint_lsn": 1}, False, [Event("on_stop", "primary")]),
    # A primary without the lock rejoins as a replica: role change, not a start.
    ("primary", before("Follow", "primary"), True, UP_REPLICA, True, [Event("on_role_change", "replica")]),
    ("primary", before("Follow", "primary"), False, {}, False, [Event("on_role_change", "demoted")]),
    # A replica started to follow: on_start; one re-pointed with a reload: on_reload.
    (None, before("Follow", None, running=False), True, UP_REPLICA, True, [Event("on_start", "replica")]),
    ("replica", before("Follow", "replica", following="n1"), True, {"reloaded": True}, True,
     [Event("on_reload", "replica")]),
])
def test_action_outcomes(role: str | None, b: Before, ok: bool, result: dict[str, Any], running: bool,
                         expected: list[Event]) -> None:
    a = announcer(role)
    following = "n2" if b.kind == "Follow" else None
    assert finish(a, b, ok, result, following, running) == expected


def test_a_follow_that_changed_nothing_calls_nothing() -> None:
    a = announcer("replica")
    assert finish(a, before("Follow", "replica", following="n1"), True, {"reloaded": True}, "n1") == []


def test_switchover_on_the_old_primary_is_stop_then_role_change() -> None:
    a = announcer("primary")
    assert finish(a, before("Demote", "primary"), result={"checkpoint_lsn": 1}, running=False) == \
        [Event("on_stop", "primary")]
    assert a.observed("", False, False, "primary") == []
    assert finish(a, before("Follow", None, running=False), result=UP_REPLICA, following="n2") == \
        [Event("on_role_change", "replica")]
    assert a.observed("", True, True, "replica") == []  # already announced


def test_promotion_is_announced_as_soon_as_postgresql_leaves_recovery_and_only_once() -> None:
    a = announcer("replica")
    a.began(before("Promote", "replica"))
    assert a.observed("promote", True, True, "replica") == []
    assert a.observed("promote", True, True, "primary") == [Event("on_role_change", "primary")]
    assert a.observed("promote", True, True, "primary") == []
    assert a.finished("Promote", True, UP_PRIMARY, None, True) == []


def test_postgresql_found_running_gets_on_start_once() -> None:
    a = Announcer()
    assert a.observed("", False, True, "primary") == []  # not answering yet
    assert a.observed("", True, True, "primary") == [Event("on_start", "primary")]
    assert a.observed("", True, True, "primary") == []


def test_nothing_is_announced_while_an_action_runs() -> None:
    a = Announcer()
    a.began(before("Bootstrap"))
    assert a.observed("bootstrap", True, True, "primary") == []
    assert a.finished("Bootstrap", True, UP_PRIMARY, None, True) == [Event("on_start", "primary")]
    assert a.observed("", True, True, "primary") == []


def test_a_crash_then_a_start_is_on_start_again() -> None:
    a = announcer("primary")
    assert a.observed("", False, False, "primary") == []  # crashed: no on_stop, hasup did not stop it
    assert finish(a, before("Start", None, running=False, as_primary=True), result=UP_PRIMARY) == \
        [Event("on_start", "primary")]


def test_a_start_that_gave_up_waiting_is_announced_when_postgresql_answers() -> None:
    a = Announcer()
    assert finish(a, before("Start", None, running=False, as_primary=False), ok=False) == []
    assert a.observed("", True, True, "replica") == [Event("on_start", "replica")]


def test_reload_uses_the_role_postgresql_has() -> None:
    a = announcer("primary")
    assert a.reloaded("primary") == [Event("on_reload", "primary")]


def test_a_reply_for_another_request_is_ignored() -> None:
    a = announcer("replica")
    a.began(before("Restart", "replica"))
    assert a.finished("Stop", True, {}, None, False) == []


# -- the worker's side: configured commands only, with the scope and timeout of the config -------------


class FakeRunner:
    def __init__(self) -> None:
        self.fired: list[tuple[str, str, str, str, float]] = []

    def fire(self, command: str, action: str, role: str, scope: str, timeout: float) -> int:
        self.fired.append((command, action, role, scope, timeout))
        return 1


def config(callbacks: dict[str, str], timeout: float | None = None) -> Any:
    pg: dict[str, Any] = {"listen": "127.0.0.1:5432", "connect_address": "127.0.0.1:5432", "data_dir": "/d",
                          "authentication": {"superuser": {"username": "postgres"},
                                             "replication": {"username": "replicator"}},
                          "callbacks": callbacks}
    if timeout is not None:
        pg["callback_timeout"] = timeout
    cfg, _ = build_config({"scope": "batman", "name": "n1", "etcd": {"host": "127.0.0.1:2379"},
                           "restapi": {"listen": "127.0.0.1:8008",
                           "connect_address": "127.0.0.1:8008"}, "postgresql": pg})
    return cfg


def state(role: str, busy: str = "", probe_ok: bool = True, pid: int | None = 10, upstream: str | None = None
          ) -> ipc.PgState:
    return ipc.PgState(state="running", role=role, data_dir_empty=False, probe_ok=probe_ok, probe_at=0.0,
                       busy=busy, postmaster_pid=pid, upstream=upstream)


def test_only_configured_callbacks_run_with_scope_and_timeout() -> None:
    runner = FakeRunner()
    cfg = config({"on_role_change": "/bin/cb --x"}, timeout=7)
    cb = Callbacks(lambda: cfg, runner)  # type: ignore[arg-type]
    cb.observed(state("replica"))  # on_start: not configured
    cb.began(ipc.Promote(id=1, deadline=0.0), state("replica", busy="promote"))
    cb.observed(state("primary", busy="promote"))
    cb.finished(ipc.Reply(1, "Promote", True, "", UP_PRIMARY), None, True)
    cb.reloaded(state("primary"))
    assert runner.fired == [("/bin/cb --x", "on_role_change", "primary", "batman", 7.0)]


def test_reload_of_a_stopped_postgresql_calls_nothing() -> None:
    runner = FakeRunner()
    cfg = config({"on_reload": "/bin/cb"})
    cb = Callbacks(lambda: cfg, runner)  # type: ignore[arg-type]
    cb.reloaded(state("replica", probe_ok=False, pid=None))
    cb.reloaded(state("replica"))
    assert runner.fired == [("/bin/cb", "on_reload", "replica", "batman", 60.0)]
