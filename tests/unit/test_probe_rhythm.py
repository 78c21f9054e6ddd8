"""The probe's two rhythms: a quick prepared query every probe on one kept connection, and the costly
facts (replication rows, pending_restart, sysid, a primary's timeline) only on a new connection, when a
quick column hints they moved, after refresh(), or once `full_every` has passed (hasup.postgresql.probe)."""

from __future__ import annotations

from typing import Any

import psycopg2.extensions
import pytest

from hasup.postgresql import probe as probe_mod
from hasup.postgresql.probe import CHANGE_FIELDS, QUICK_FIELDS, Prober

REPLICATION = [{"application_name": "node2", "state": "streaming", "sync_state": "async"}]


class FakeServer:
    """Answers the probe's statements the way PostgreSQL would, and counts what it was asked."""

    def __init__(self) -> None:
        self.connections = 0
        self.statements: list[str] = []
        self.quick = [False, 100, None, None, None, None, "", None, None, "10 streaming async 0"]
        self.pending = False

    def row(self, sql: str) -> tuple[Any, ...]:
        if sql == "EXECUTE hasup_quick":
            return tuple(self.quick)
        assert sql == "EXECUTE hasup_full"
        return (*self.quick, 3, "2026-01-01 00:00:00.000000+00", 150000, "7000", 3, REPLICATION, self.pending)


class FakeCursor:
    def __init__(self, server: FakeServer) -> None:
        self.server, self.last = server, ""

    def execute(self, sql: str) -> None:
        self.server.statements.append(sql if sql.startswith("EXECUTE") else "PREPARE")
        self.last = sql

    def fetchone(self) -> tuple[Any, ...]:
        return self.server.row(self.last)


class FakeConnection:
    closed = 0

    def __init__(self, server: FakeServer) -> None:
        self.server = server

    def poll(self) -> int:
        return psycopg2.extensions.POLL_OK

    def cursor(self) -> FakeCursor:
        return FakeCursor(self.server)

    def close(self) -> None:
        self.closed = 1


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    srv = FakeServer()

    def connect(dsn: str, async_: int = 0) -> FakeConnection:
        assert async_ == 1  # the probe polls its own socket, so a frozen server cannot hang it
        srv.connections += 1
        return FakeConnection(srv)
    monkeypatch.setattr(probe_mod.psycopg2, "connect", connect)
    return srv


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(probe_mod.time, "monotonic", lambda: now[0])
    return now


def test_an_idle_server_gets_the_quick_query_on_one_connection(server: FakeServer, clock: list[float]) -> None:
    prober = Prober("dsn", 1.0, full_every=10.0)
    results = []
    for _ in range(9):
        results.append(prober.probe())
        clock[0] += 1.0
    assert server.connections == 1
    assert server.statements == ["PREPARE", "EXECUTE hasup_full"] + ["EXECUTE hasup_quick"] * 8
    assert all(r == results[0] for r in results)  # the quick probes report what the full one read
    assert results[-1].replication == tuple(REPLICATION) and results[-1].timeline == 3


def test_the_costly_facts_are_read_again_at_the_full_rhythm(server: FakeServer, clock: list[float]) -> None:
    prober = Prober("dsn", 1.0, full_every=10.0)
    prober.probe()
    server.pending = True
    clock[0] += 9.5
    assert prober.probe().pending_restart is False
    clock[0] += 0.5
    assert prober.probe().pending_restart is True
    assert prober.full_reads == 2


@pytest.mark.parametrize("field", CHANGE_FIELDS)
def test_a_hint_of_change_reads_everything_at_once(server: FakeServer, clock: list[float], field: int) -> None:
    prober = Prober("dsn", 1.0, full_every=10.0)
    prober.probe()
    clock[0] += 1.0
    prober.probe()
    assert prober.full_reads == 1
    server.quick[field] = "changed" if field else True  # a promotion, a new walsender, a walreceiver...
    clock[0] += 1.0
    prober.probe()
    assert prober.full_reads == 2 and server.statements[-2:] == ["EXECUTE hasup_quick", "EXECUTE hasup_full"]
    clock[0] += 1.0
    prober.probe()
    assert prober.full_reads == 2  # settled again


def test_moving_wal_positions_are_no_hint(server: FakeServer, clock: list[float]) -> None:
    prober = Prober("dsn", 1.0, full_every=10.0)
    prober.probe()
    for lsn in range(101, 106):
        server.quick[1] = lsn
        clock[0] += 1.0
        assert prober.probe().wal_position == lsn  # positions are quick columns: always current
    assert prober.full_reads == 1 and set(range(QUICK_FIELDS)) - set(CHANGE_FIELDS) >= {1, 2, 3}


def test_refresh_and_a_new_connection_read_everything(server: FakeServer, clock: list[float]) -> None:
    prober = Prober("dsn", 1.0, full_every=10.0)
    prober.probe()
    prober.refresh()
    prober.probe()
    assert prober.full_reads == 2 and server.connections == 1
    prober.close()
    prober.probe()
    assert prober.full_reads == 3 and server.connections == 2
    assert server.statements.count("PREPARE") == 2  # each connection prepares its statements once


def test_without_full_every_each_probe_reads_everything(server: FakeServer, clock: list[float]) -> None:
    prober = Prober("dsn", 1.0)  # what the short-lived probers of a start or a switchover use
    for _ in range(3):
        prober.probe()
    assert prober.full_reads == 3 and "EXECUTE hasup_quick" not in server.statements


def test_a_refresh_asked_for_later_waits_for_its_moment_and_survives_an_earlier_full_read(
        server: FakeServer, clock: list[float]) -> None:
    prober = Prober("dsn", 1.0, full_every=10.0)
    prober.probe()
    prober.refresh(1.0)  # a reload: PostgreSQL has not taken its SIGHUP yet
    server.pending = True
    assert prober.probe().pending_restart is False and prober.full_reads == 1  # not yet
    server.quick[9] = "another walsender"
    clock[0] += 0.5
    prober.probe()  # a full read for another reason, before the refresh is due
    clock[0] += 0.5
    prober.probe()
    assert prober.full_reads == 3  # the refresh still came
    clock[0] += 1.0
    prober.probe()
    assert prober.full_reads == 3
