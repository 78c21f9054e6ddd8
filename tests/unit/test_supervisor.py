"""The supervisor's restart decisions, wired to crash_policy: no fork, no real worker."""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hasup import ipc
from hasup.config import build_config
from hasup.supervision.crash_policy import Stopped
from hasup.supervisor import EXIT_GIVE_UP, Supervisor

KILLED = signal.SIGKILL  # a wait status: killed by SIGKILL


class FakeWriter:
    def write(self, *_: Any) -> None: ...
    def close_in_child(self) -> None: ...
    def flush(self) -> None: ...


def config(tmp_path: Any, watchdog: str = "off") -> Any:
    cfg, _ = build_config({
        "scope": "main", "name": "node1",
        "restapi": {"listen": "127.0.0.1:8008", "connect_address": "127.0.0.1:8008"},
        "etcd": {"host": "127.0.0.1:2379"},
        "postgresql": {"listen": "127.0.0.1:5432", "connect_address": "127.0.0.1:5432",
                       "data_dir": str(tmp_path / "data"),
                       "authentication": {"superuser": {"username": "postgres", "password": "x"},
                                          "replication": {"username": "replicator", "password": "y"}}},
        "watchdog": {"mode": watchdog},
    })
    return cfg


@pytest.fixture
def make(tmp_path: Any) -> Iterator[Any]:
    made: list[Supervisor] = []

    def factory(watchdog: str = "off") -> Supervisor:
        sup = Supervisor(config(tmp_path, watchdog), str(tmp_path / "hasup.yml"), FakeWriter())  # type: ignore[arg-type]
        made.append(sup)
        return sup
    yield factory
    for sup in made:
        for s in (sup.wake_r, sup.wake_w, sup.lease_election, sup.lease_watchdog):
            s.close()
        sup.sel.close()


def die(sup: Supervisor, role: str, times: int) -> list[float | None]:
    """Report `times` deaths of a worker; the restart delay after each (None once there is no restart)."""
    w = sup.workers[role]
    out = []
    for _ in range(times):
        w.pid = 4242  # as if it had been restarted in between
        sup.worker_exited(w, KILLED)
        out.append(None if w.restart_at is None else round(w.restart_at - time.monotonic(), 1))
        w.restart_at = None
    return out


def test_an_api_crash_loop_never_stops_the_node(make):
    sup = make()
    assert die(sup, "api", 14) == [0.5] * 5 + [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert sup.shutdown_started is None and sup.giving_up is None and sup.exit_code == 0
    assert sup.workers["api"].crash_looping
    assert sup.status_line().endswith("; api worker crash-looping")


def test_an_election_crash_loop_gives_up_safely(make):
    sup = make()
    assert die(sup, "election", 6) == [0.0, 1.0, 2.0, 4.0, 8.0, None]
    assert sup.exit_code == EXIT_GIVE_UP and sup.shutdown_started is not None
    assert sup.giving_up is not None and sup.giving_up.kind == "election"


def test_a_postgres_worker_crash_loop_gives_up_safely(make):
    sup = make()
    assert die(sup, "postgres", 6)[-1] is None
    assert sup.giving_up is not None and sup.exit_code == EXIT_GIVE_UP


@pytest.mark.parametrize(("mode", "gives_up"), [("off", False), ("automatic", True), ("required", True)])
def test_a_watchdog_crash_loop_gives_up_unless_the_watchdog_is_off(make, mode, gives_up):
    sup = make(mode)
    die(sup, "watchdog", 8)
    assert (sup.giving_up is not None) == gives_up


def test_deaths_are_counted_per_kind(make):
    sup = make()
    die(sup, "api", 5)
    die(sup, "postgres", 5)
    die(sup, "election", 5)
    assert sup.giving_up is None and not any(w.crash_looping for w in sup.workers.values())


def test_a_paused_cluster_gives_up_without_stopping_postgresql(make):
    sup = make()
    sup.last_view = ipc.ClusterView(read_at=1.0, read_at_wall=1.0, leader="node1", holds_lock=True,
                                    lock_valid_until=1e12, members={}, config={}, history=(), optime=None,
                                    initialize=None, sync=None, failover=None, paused=True)
    die(sup, "election", 6)
    assert sup.giving_up is None and sup.exit_code == EXIT_GIVE_UP
    assert sup.leave_postgres_running and sup.shutdown_done  # election is gone: nobody else would say so


def test_the_lock_counts_as_released_only_on_a_view_received_after_the_stop(make):
    sup = make()
    held = ipc.ClusterView(read_at=1.0, read_at_wall=1.0, leader="node1", holds_lock=True, lock_valid_until=1e12,
                           members={}, config={}, history=(), optime=None, initialize=None, sync=None,
                           failover=None, paused=False)
    sup.route("election", ipc.Envelope(held, 1, 0.0))
    sup.tell_election_stopped(Stopped(True, (), "no PostgreSQL process found"))
    assert not sup.lock_released()
    sup.route("election", ipc.Envelope(held, 2, 0.0))
    assert not sup.lock_released()
    sup.route("election", ipc.Envelope(dataclasses.replace(held, holds_lock=False), 3, 0.0))
    assert sup.lock_released()

