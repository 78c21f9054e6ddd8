"""The supervisor's loop against a fake operating system: no fork, no signal, no clock of its own.

FakeSystem (hasup.supervision.system.System) hands out pids, records every signal, lets a test say how
each process reacts to it (dies, ignores it, is stopped), and keeps the clock.  The worker ends of the
pipes are real socketpairs, so a test plays a worker: it reads what the supervisor sent and answers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from hasup import ipc
from hasup.config import build_config
from hasup.proc import ProcStat
from hasup.supervision import crash_policy
from hasup.supervision.fence import FenceResult
from hasup.supervision.routing import REPLAY
from hasup.supervision.shutdown import TERM_GRACE
from hasup.supervisor import ABORT_GRACE, EXIT_GIVE_UP, SHUTDOWN_STOP_ID, Supervisor
from hasup.timing import FAST_PING_INTERVAL, OTHER_HEARTBEAT, POSTGRES_HEARTBEAT

START = 1000.0
POSTMASTER = 4242
STACK = ('Fatal Python error: Aborted\n\nCurrent thread 0x7f (most recent call first):\n'
         '  File "loop.py", line 7 in turn\n')


class FakeStack:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.text = ""
        self.closed = False

    def fileno(self) -> int:
        return self.fd

    def read(self) -> str:
        return self.text

    def close(self) -> None:
        self.closed = True


class FakeSystem:
    """Processes that react to signals as a test says; a clock that moves only when told."""

    def __init__(self) -> None:
        self.now = START
        self.pids = iter(range(101, 10_000))
        self.alive: set[int] = set()
        self.ended: list[tuple[int, int]] = []  # waiting to be reaped
        self.signals: list[tuple[float, int, int]] = []  # (time, pid, signal)
        self.ignores: dict[int, set[int]] = {}  # pid -> signals it survives
        self.stopped: set[int] = set()
        self.ends: dict[int, socket.socket] = {}
        self.stacks: dict[int, FakeStack] = {}
        self._next_stack: FakeStack | None = None
        self.postmaster: int | None = POSTMASTER
        self.fences: list[int | None] = []
        self.fence_confirms = True
        self.events: list[str] = []  # the order of what the supervisor did to PostgreSQL

    # System
    def monotonic(self) -> float:
        return self.now

    def fork(self, child: Any, worker_end: socket.socket) -> int:
        pid = next(self.pids)
        self.alive.add(pid)
        self.ends[pid] = worker_end.dup()  # the supervisor closes its copy, as after a real fork
        if self._next_stack is not None:
            self.stacks[pid], self._next_stack = self._next_stack, None
        return pid

    def kill(self, pid: int, sig: int) -> bool:
        self.signals.append((self.now, pid, sig))
        if pid not in self.alive:
            return False
        if sig == signal.SIGKILL or sig not in self.ignores.get(pid, set()) and pid not in self.stopped:
            if sig == signal.SIGABRT and pid in self.stacks:
                self.stacks[pid].text = STACK  # what faulthandler writes on its way out
            self.end(pid, 0 if sig == signal.SIGTERM else -sig)
        return True

    def signal_process(self, pid: int, sig: int) -> bool:
        if pid != self.postmaster:
            return False
        self.events.append(f"postmaster {signal.Signals(sig).name}")
        if sig == signal.SIGQUIT:
            self.postmaster = None
        return True

    def reap(self) -> list[tuple[int, int]]:
        out, self.ended = self.ended, []
        return out

    def stat(self, pid: int) -> ProcStat | None:
        if pid not in self.alive:
            return None
        return ProcStat("python3", "T" if pid in self.stopped else "S", 1, 1, 1)

    def find_postmaster(self, hint: int | None, data_dir: str) -> int | None:
        return self.postmaster

    def fence(self, postmaster_pid: int | None, data_dir: str, spare: set[int]) -> FenceResult:
        self.fences.append(postmaster_pid)
        self.events.append("fence")
        assert not spare & {POSTMASTER}
        if self.fence_confirms:
            self.postmaster = None
            return FenceResult(True, (), (), "no PostgreSQL process found")
        return FenceResult(False, (), (POSTMASTER,), "fence NOT confirmed: 4242 survived")

    def stack_file(self) -> FakeStack:
        self._next_stack = FakeStack(-1)
        return self._next_stack

    # for tests
    def end(self, pid: int, code: int) -> None:
        """The process exits now (a crash, or a signal it did not survive)."""
        if pid in self.alive:
            self.alive.discard(pid)
            self.ended.append((pid, code))

    def sent(self, pid: int | None = None, since: float = 0.0) -> list[tuple[float, int, int]]:
        return [s for s in self.signals if (pid is None or s[1] == pid) and s[0] >= since]


class FakeWriter:
    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []
        self.records_lost = 0

    def write(self, rec: ipc.LogRecord, role: str) -> None:
        self.records.append((role, rec.message))

    def close_in_child(self) -> None: ...
    def flush(self) -> None: ...


def config(tmp_path: Any, watchdog: str = "off", **extra: Any) -> Any:
    cfg, _ = build_config({
        "scope": "main", "name": "node1",
        "restapi": {"listen": "127.0.0.1:8008", "connect_address": "127.0.0.1:8008"},
        "etcd": {"host": "127.0.0.1:2379"},
        "postgresql": {"listen": "127.0.0.1:5432", "connect_address": "127.0.0.1:5432",
                       "data_dir": str(tmp_path / "data"), "pg_ctl_timeout": 30,
                       "authentication": {"superuser": {"username": "postgres", "password": "x"},
                                          "replication": {"username": "replicator", "password": "y"}}},
        "watchdog": {"mode": watchdog},
        **extra,
    })
    return cfg


class Node:
    """A supervisor under test, its fake OS, and the test playing every worker."""

    def __init__(self, tmp_path: Any, watchdog: str = "off", **extra: Any) -> None:
        self.os = FakeSystem()
        self.writer = FakeWriter()
        self.sup = Supervisor(config(tmp_path, watchdog, **extra), str(tmp_path / "hasup.yml"),
                              self.writer, self.os)  # type: ignore[arg-type]
        self._ends: dict[int, ipc.Channel] = {}
        self.inbox: dict[int, list[ipc.Message]] = {}
        self.logs_lost: dict[int, int] = {}  # pid -> what the worker says in its pongs

    def start(self) -> Node:
        for role in self.sup.roles:
            self.sup.spawn(role)
        return self

    def close(self) -> None:
        for ch in self._ends.values():
            ch.close()
        for sock in self.os.ends.values():
            sock.close()
        for w in self.sup.workers.values():
            if w.channel is not None:
                w.channel.close()
        for s in (self.sup.wake_r, self.sup.wake_w, self.sup.lease_election, self.sup.lease_watchdog):
            s.close()
        self.sup.sel.close()

    def pid(self, role: str) -> int:
        return self.sup.workers[role].pid

    def end(self, pid: int) -> ipc.Channel:
        if pid not in self._ends:
            self._ends[pid] = ipc.Channel(self.os.ends[pid], "supervisor")
        return self._ends[pid]

    def turn(self) -> float | None:
        """One turn of the supervisor's loop, without waiting."""
        due = self.sup.tick()
        self.sup.poll(0)
        return due

    def received(self, role: str, pid: int | None = None) -> list[ipc.Message]:
        """Everything the worker got so far but pings (which it answers, as a live worker does)."""
        pid = pid or self.pid(role)
        self.sup.poll(0)
        got = self.inbox.setdefault(pid, [])
        try:
            envs = self.end(pid).receive()
        except ipc.PeerClosed:
            envs = []
        for env in envs:
            if isinstance(env.message, ipc.Ping):
                self.say(role, ipc.Pong(env.message.n, self.logs_lost.get(pid, 0)), pid=pid)
            else:
                got.append(env.message)
        return got

    def say(self, role: str, msg: ipc.Message, pid: int | None = None) -> None:
        ch = self.end(pid or self.pid(role))
        ch.send(msg)
        ch.flush()
        self.sup.poll(0)

    def answer_pings(self, roles: tuple[str, ...] | None = None) -> None:
        for role in roles if roles is not None else self.sup.roles:
            if self.pid(role):
                self.received(role)

    def run_until(self, until: float, answering: tuple[str, ...] | None = None) -> None:
        """Run the loop as the real one would, jumping the clock from one due time to the next;
        the workers in `answering` (default: all) answer their pings."""
        while True:
            self.answer_pings(answering)
            due = self.turn()
            if due is None or due > until:
                self.os.now = until
                self.turn()
                self.answer_pings(answering)
                return
            self.os.now = max(self.os.now, due)

    def kill(self, role: str) -> int:
        """The worker crashes now; the loop reaps it."""
        pid = self.pid(role)
        self.os.end(pid, -signal.SIGKILL)
        self.sup.poll(0)
        assert not self.pid(role)
        return pid

    def restarted_after(self, role: str, limit: float = 600.0) -> float | None:
        """Seconds until the loop starts a new worker of this role; None if the node gives up instead."""
        died = self.os.now
        while not self.pid(role):
            if self.sup.giving_up is not None or self.sup.shutdown_started is not None:
                return None
            self.answer_pings()
            due = self.turn()
            assert due is not None and due - died < limit, "never restarted"
            if not self.pid(role):
                self.os.now = max(self.os.now, due)
        return round(self.os.now - died, 3)


@pytest.fixture
def node(tmp_path: Any) -> Iterator[Any]:
    made: list[Node] = []

    def factory(watchdog: str = "off", start: bool = True, **extra: Any) -> Node:
        n = Node(tmp_path, watchdog, **extra)
        made.append(n)
        return n.start() if start else n
    yield factory
    for n in made:
        n.close()


def view(holds_lock: bool = True, paused: bool = False, leader: str = "node1", **kw: Any) -> ipc.ClusterView:
    return ipc.ClusterView(read_at=START, read_at_wall=1.0, leader=leader, holds_lock=holds_lock,
                           lock_valid_until=START + 1e6, members={}, config={}, history=(), optime=None,
                           initialize=None, sync=None, failover=None, paused=paused, **kw)


def pgstate(**kw: Any) -> ipc.PgState:
    return ipc.PgState("running", "primary", False, True, START, postmaster_pid=POSTMASTER, **kw)


# -- restart budgets per kind --------------------------------------------------------------------------------
# The delays themselves are crash_policy's table (test_crash_policy.py); here, that the loop keeps them:
# the worker comes back after exactly that long on the loop's own clock, or the node gives up.

BUDGETS = [
    ("election", "off", [0.0, 1.0, 2.0, 4.0, 8.0, None]),
    ("postgres", "off", [0.5, 1.0, 2.0, 4.0, 8.0, None]),
    ("watchdog", "automatic", [0.0, 1.0, 1.0, 1.0, 1.0, None]),
    ("watchdog", "off", [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 4.0]),
    ("api", "off", [0.5] * 5 + [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]),
    ("vip", "off", [0.5] * 5 + [1.0, 2.0, 4.0]),
]


@pytest.mark.parametrize(("role", "mode", "expected"), BUDGETS, ids=[f"{r}-{m}" for r, m, _ in BUDGETS])
def test_restart_budgets_per_kind(node, role, mode, expected):
    extra = {"vip": {"address": "10.0.0.10/24", "interface": "lo"}} if role == "vip" else {}
    n = node(mode, **extra)
    got = []
    for _ in expected:
        n.kill(role)
        got.append(n.restarted_after(role))
        if got[-1] is None:
            break
    assert got == expected
    gives_up = expected[-1] is None
    assert (n.sup.exit_code == EXIT_GIVE_UP) == gives_up
    assert n.sup.workers[role].crash_looping == (len(expected) > crash_policy.BUDGET)
    if not gives_up:
        assert n.sup.shutdown_started is None and n.os.postmaster == POSTMASTER  # PostgreSQL left alone
        others = {n.pid(r) for r in n.sup.roles if r != role}
        assert not [s for s in n.os.signals if s[1] in others]


def test_deaths_are_counted_per_kind(node):
    n = node()
    for role in ("api", "postgres", "election"):
        for _ in range(crash_policy.BUDGET):
            n.kill(role)
            assert n.restarted_after(role) is not None
    assert n.sup.giving_up is None and not any(w.crash_looping for w in n.sup.workers.values())


def test_deaths_older_than_the_window_are_forgotten(node):
    n = node()
    for _ in range(crash_policy.BUDGET):
        n.kill("election")
        n.restarted_after("election")
    n.run_until(n.os.now + crash_policy.WINDOW)
    n.kill("election")
    assert n.restarted_after("election") == 0.0  # the first death again: at once


def test_a_restart_tells_election_but_a_first_start_does_not(node):
    n = node()
    assert not [m for m in n.received("election") if isinstance(m, ipc.WorkerRestarted)]
    n.kill("watchdog")
    n.restarted_after("watchdog")
    assert ipc.WorkerRestarted("watchdog") in n.received("election")
    n.kill("election")
    n.restarted_after("election")
    assert not [m for m in n.received("election") if isinstance(m, ipc.WorkerRestarted)]  # not of itself


def test_a_fork_that_fails_is_tried_again(node, monkeypatch):
    n = node()
    n.kill("api")

    def refuse(*_: Any) -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(n.os, "fork", refuse)
    n.os.now += 0.5
    n.turn()
    assert not n.pid("api") and n.sup.workers["api"].restart_at == n.os.now + 1.0
    monkeypatch.undo()
    assert n.restarted_after("api") == 1.0


# -- giving up after a crash loop: PostgreSQL, then the lock, then the workers -----------------------------------


def test_a_postgres_crash_loop_stops_postgresql_before_the_lock_and_the_lock_before_the_workers(node):
    n = node("automatic")
    n.say("election", view())
    n.say("postgres", pgstate())
    for _ in range(crash_policy.BUDGET):
        n.kill("postgres")
        n.restarted_after("postgres")
    n.kill("postgres")
    running = {r: n.pid(r) for r in ("election", "api", "watchdog")}  # in the order they are terminated
    assert n.sup.giving_up is not None and n.os.events == ["postmaster SIGQUIT"]
    assert ipc.Shutdown("a worker crash loop") in n.received("election")
    n.run_until(n.os.now + 1.0)
    assert n.os.events == ["postmaster SIGQUIT", "fence"]  # confirmed through /proc
    told = [m for m in n.received("election") if isinstance(m, ipc.StoppedForGiveUp)]
    assert len(told) == 1 and told[0].confirmed
    assert not n.os.sent(), "no worker is touched before the lock is released"
    assert not ipc.receive_datagrams(n.sup.lease_watchdog), "no disarm before the lock is released"
    n.say("election", view(holds_lock=False))
    n.run_until(n.os.now + 0.5)
    assert [type(e.message) for e in ipc.receive_datagrams(n.sup.lease_watchdog)] == [ipc.Disarm]
    assert [(pid, sig) for _, pid, sig in n.os.sent()] == [(running[r], signal.SIGTERM) for r in running]
    assert n.os.now < START + 60 and n.turn() is None and n.sup.exit_code == EXIT_GIVE_UP


def test_an_unconfirmed_stop_keeps_the_lock(node):
    n = node("automatic")
    n.say("election", view())
    n.say("postgres", pgstate())
    n.os.fence_confirms = False
    election = n.pid("election")
    for _ in range(crash_policy.BUDGET + 1):
        n.kill("postgres")
        n.restarted_after("postgres")
    n.run_until(n.os.now + crash_policy.STOP_GRACE + 1)
    assert n.os.events == ["postmaster SIGQUIT", "fence"]
    assert not [m for m in n.received("election", election) if isinstance(m, ipc.FenceDone)]
    assert not ipc.receive_datagrams(n.sup.lease_watchdog), "never a magic close while PostgreSQL may run"


def test_a_paused_cluster_gives_up_without_stopping_postgresql(node):
    n = node()
    n.say("election", view(paused=True))
    for _ in range(crash_policy.BUDGET + 1):
        n.kill("election")
        n.restarted_after("election")
    assert n.sup.giving_up is None and n.sup.exit_code == EXIT_GIVE_UP and n.sup.leave_postgres_running
    n.run_until(n.os.now + 1)
    assert n.os.events == [] and n.os.postmaster == POSTMASTER
    assert n.turn() is None


def test_the_lock_counts_as_released_only_on_a_view_received_after_the_stop(node):
    n = node()
    n.say("election", view())
    n.sup.tell_election_stopped(crash_policy.Stopped(True, (), "no PostgreSQL process found"))
    assert not n.sup.lock_released()
    n.say("election", view())
    assert not n.sup.lock_released()
    n.say("election", view(holds_lock=False))
    assert n.sup.lock_released()


# -- heartbeats: ping, deadline, SIGABRT, SIGKILL -------------------------------------------------------------


def test_a_worker_that_answers_is_never_signalled(node):
    n = node()
    n.run_until(START + 120)
    assert n.os.sent() == []
    assert all(w.heartbeat.n > 1 for w in n.sup.workers.values())


def test_a_silent_worker_is_aborted_at_its_deadline_and_its_stack_is_logged(node, caplog):
    caplog.set_level(logging.ERROR, "hasup.supervisor")
    n = node()
    pid = n.pid("postgres")
    n.run_until(START + POSTGRES_HEARTBEAT + 1, answering=("election", "watchdog", "api"))
    aborted = n.os.sent(pid)
    assert aborted == [(pytest.approx(START + POSTGRES_HEARTBEAT, abs=0.01), pid, signal.SIGABRT)]
    assert n.pid("postgres") and n.pid("postgres") != pid  # and it came back
    logged = [r.getMessage() for r in caplog.records if "left its stack" in r.getMessage()]
    assert logged == ["postgres worker (SIGABRT) left its stack:\n" + STACK.rstrip()]
    assert n.os.stacks[pid].closed


def test_a_worker_that_ignores_sigabrt_is_killed_after_the_grace(node, caplog):
    n = node()
    pid = n.pid("api")
    n.os.ignores[pid] = {signal.SIGABRT}
    n.run_until(START + 30, answering=("election", "postgres", "watchdog"))
    assert n.os.sent(pid) == [(START + OTHER_HEARTBEAT, pid, signal.SIGABRT),
                              (START + OTHER_HEARTBEAT + ABORT_GRACE, pid, signal.SIGKILL)]
    assert n.pid("api") not in (0, pid)
    assert "still there 2.0 s after SIGABRT: killing it" in caplog.text


def test_a_late_answer_does_not_save_an_aborted_worker(node):
    n = node()
    pid = n.pid("api")
    n.os.ignores[pid] = {signal.SIGABRT}
    n.run_until(START + OTHER_HEARTBEAT, answering=("election", "postgres", "watchdog"))
    assert n.os.sent(pid) == [(START + OTHER_HEARTBEAT, pid, signal.SIGABRT)]
    n.run_until(START + OTHER_HEARTBEAT + ABORT_GRACE)  # now it answers again
    assert n.os.sent(pid)[-1] == (START + OTHER_HEARTBEAT + ABORT_GRACE, pid, signal.SIGKILL)


def test_a_stopped_worker_is_killed_at_once(node):
    n = node()
    pid = n.pid("election")
    n.os.stopped.add(pid)
    deadline = n.sup.deadlines.heartbeat("election")
    n.run_until(START + 20, answering=("postgres", "watchdog", "api"))
    assert n.os.sent(pid) == [(pytest.approx(START + deadline, abs=FAST_PING_INTERVAL), pid, signal.SIGKILL)]


def test_no_heartbeat_escalation_while_shutting_down(node):
    n = node()
    n.sup.begin_shutdown()
    n.run_until(START + 20, answering=())
    assert not [s for s in n.os.sent() if s[2] == signal.SIGABRT]


# -- shutdown order ----------------------------------------------------------------------------------------------


def test_sigterm_stops_postgresql_through_election_before_any_worker_is_signalled(node):
    n = node()
    pids = {r: n.pid(r) for r in ("election", "postgres", "api", "watchdog")}  # in the order they are terminated
    n.sup.begin_shutdown()
    assert n.received("election") == [ipc.Shutdown("SIGTERM")]
    n.run_until(START + 20)
    assert n.os.sent() == [], "nothing is signalled while election stops PostgreSQL"
    n.say("election", ipc.ShutdownDone(True, True))
    n.turn()
    assert [(pid, sig) for _, pid, sig in n.os.sent()] == [(pids[r], signal.SIGTERM) for r in pids]
    assert n.turn() is None and n.sup.exit_code == 0


def test_without_election_the_postgres_worker_stops_postgresql_and_is_terminated_only_after(node):
    n = node()
    n.kill("election")
    n.sup.begin_shutdown()
    stops = [m for m in n.received("postgres") if isinstance(m, ipc.Stop)]
    assert [(s.id, s.mode) for s in stops] == [(SHUTDOWN_STOP_ID, "fast")]
    pg = n.pid("postgres")
    n.run_until(START + 25)
    assert n.os.sent(pg) == []
    n.say("postgres", ipc.Reply(SHUTDOWN_STOP_ID, "Stop", True))
    n.turn()
    assert n.os.sent(pg) == [(START + 25, pg, signal.SIGTERM)]


def test_a_stop_that_hangs_ends_at_the_budget(node):
    n = node()
    n.sup.begin_shutdown()
    budget = n.sup.shutdown_budget()
    n.run_until(START + budget - 0.1)
    assert n.os.sent() == []
    n.run_until(START + budget + 1)
    assert {sig for _, _, sig in n.os.sent()} == {signal.SIGTERM}


def test_a_worker_that_ignores_sigterm_is_killed(node):
    n = node()
    api = n.pid("api")
    n.os.ignores[api] = {signal.SIGTERM}
    n.sup.begin_shutdown()
    n.say("election", ipc.ShutdownDone(True, True))
    n.turn()
    n.run_until(START + TERM_GRACE + 1)
    assert n.os.sent(api) == [(START, api, signal.SIGTERM), (START + TERM_GRACE, api, signal.SIGKILL)]
    assert n.turn() is None


def test_paused_and_without_election_postgresql_is_left_running(node):
    n = node()
    n.say("election", view(paused=True))
    n.kill("election")
    n.sup.begin_shutdown()
    assert not [m for m in n.received("postgres") if isinstance(m, ipc.Stop)]
    assert n.sup.leave_postgres_running
    n.turn()
    assert n.turn() is None and n.os.events == []


# -- routing and replay to a restarted worker ------------------------------------------------------------------


@pytest.mark.parametrize("role", ["api", "vip", "postgres", "election", "watchdog"])
def test_a_restarted_worker_gets_the_latest_snapshots_it_serves_from_at_once(node, role):
    n = node(vip={"address": "10.0.0.10/24", "interface": "lo"})
    n.say("election", view(leader="old"))
    n.say("election", view(leader="node1"))
    n.say("postgres", pgstate())
    n.say("watchdog", ipc.WatchdogState("off", False, None, None, None))
    n.writer.records_lost = 2
    n.turn()
    n.kill(role)
    n.os.now = n.sup.workers[role].restart_at  # type: ignore[assignment]
    n.sup.tick()
    pid = n.pid(role)
    # On the socket already, before the loop polls again: a new api reads it before it serves.
    envs = n.end(pid).receive()
    got = [e.message for e in envs if not isinstance(e.message, ipc.Ping)]
    assert [type(m) for m in got] == list(REPLAY[role])
    assert all(m.leader == "node1" for m in got if isinstance(m, ipc.ClusterView))


def test_messages_go_where_their_route_says(node):
    n = node()
    n.say("postgres", pgstate())
    n.say("election", view())
    assert [type(m) for m in n.received("api")] == [ipc.PgState, ipc.ClusterView]
    assert [type(m) for m in n.received("election")] == [ipc.PgState]
    assert [type(m) for m in n.received("postgres")] == [ipc.ClusterView]
    assert n.received("watchdog") == []


def test_log_records_go_to_the_writer_with_their_worker(node):
    n = node()
    n.say("api", ipc.LogRecord(logging.WARNING, "hasup.api", "hello", 1.0, "api"))
    assert n.writer.records == [("api", "hello")]


def test_what_a_worker_wrote_before_dying_is_read_though_a_write_finds_it_gone_first(node):
    n = node()
    pid = n.pid("watchdog")
    ch = n.end(pid)
    ch.send(ipc.LogRecord(logging.WARNING, "hasup.watchdog", "software fence: killed PostgreSQL", 1.0, "watchdog"))
    ch.flush()
    ch.close()  # the worker dies with its report unread by the supervisor
    n.sup.workers["watchdog"].channel.send(ipc.Ping(99))  # queued by a tick: the write fails first
    n.sup.poll(0)
    assert ("watchdog", "software fence: killed PostgreSQL") in n.writer.records
    assert n.sup.workers["watchdog"].channel is None


# -- lost log records ------------------------------------------------------------------------------------------------


def test_lost_log_records_are_added_up_and_reach_the_api(node):
    n = node()
    n.logs_lost[n.pid("election")], n.logs_lost[n.pid("postgres")] = 3, 4
    n.turn()  # pings go out; the pongs carry the counts
    n.answer_pings()
    n.writer.records_lost = 1
    n.turn()
    assert [m for m in n.received("api") if isinstance(m, ipc.LogLoss)] == [ipc.LogLoss(8)]
    n.turn()
    assert [m.lost for m in n.received("api") if isinstance(m, ipc.LogLoss)] == [8]  # sent only when it moves
    n.kill("election")  # its count stays counted after it is gone, and its successor starts from 0
    n.restarted_after("election")
    n.logs_lost[n.pid("election")] = 1
    n.run_until(n.os.now + 1)
    assert [m.lost for m in n.received("api") if isinstance(m, ipc.LogLoss)] == [8, 9]


@pytest.mark.parametrize("bad", [-1, "7", 10**16, True, 1.5])
def test_a_pong_with_a_bad_count_is_rejected_at_the_boundary(node, bad):
    n = node()
    pid = n.pid("election")
    frame = json.dumps({"k": "Pong", "s": 1, "t": 0.0, "b": {"n": 1, "logs_lost": bad}}).encode()
    n.os.ends[pid].send(ipc.FRAME_HEADER.pack(len(frame)) + frame)
    n.sup.poll(0)
    assert n.sup.workers["election"].channel.rejected == 1  # type: ignore[union-attr]
    assert n.sup.workers["election"].logs_lost == 0


# -- the messages of a give-up and of a fence ------------------------------------------------------------------------


def test_a_fence_answers_with_fence_done_and_a_give_up_with_its_own_message(node):
    n = node()
    n.say("election", ipc.Fence(POSTMASTER, "hung"))
    done = [m for m in n.received("election") if isinstance(m, ipc.FenceDone)]
    assert [type(m) for m in done] == [ipc.FenceDone] and n.os.fences == [POSTMASTER]
    n.sup.tell_election_stopped(crash_policy.Stopped(True, (7,), "1 process killed, none left"))
    given = [m for m in n.received("election") if isinstance(m, ipc.StoppedForGiveUp)]
    assert len(given) == 1 and given[0].killed == (7,) and "giving up" in given[0].reason
    assert dataclasses.asdict(given[0])["confirmed"] is True
