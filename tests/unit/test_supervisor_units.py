"""The supervisor's pure units, by table: heartbeat escalation, the shutdown order, routing and replay."""

from __future__ import annotations

import signal

import pytest

from hasup import ipc
from hasup.supervision import routing
from hasup.supervision.heartbeat import Escalate, Heartbeat
from hasup.supervision.shutdown import TERM_ORDER, Phase, ShutdownOrder, Signal, Tell

DEADLINE, GRACE, INTERVAL = 5.0, 2.0, 1.0

# -- heartbeat escalation -----------------------------------------------------------------------------
# Each row: the events of one worker's life after it started at 0, as (time, event), with event one of
# "pong" (it answered), "stop" (SIGSTOP: /proc shows it stopped), "check" (the loop looks); and what every
# check returned.  A worker that ignores SIGABRT is one that is still there at the next check.

ESCALATION = [
    ("answers in time: never touched",
     [(4.9, "check"), (4.9, "pong"), (9.8, "check"), (9.8, "pong"), (14.0, "check")], [None, None, None]),
    ("silent: aborted at its deadline, not before",
     [(4.99, "check"), (5.0, "check")], [None, Escalate.ABORT]),
    ("ignores SIGABRT: killed a grace later, not sooner",
     [(5.0, "check"), (6.0, "check"), (6.99, "check"), (7.0, "check")], [Escalate.ABORT, None, None, Escalate.KILL]),
    ("unkillable for a while (D state): SIGKILL again every grace",
     [(5.0, "check"), (7.0, "check"), (8.0, "check"), (9.0, "check"), (11.0, "check")],
     [Escalate.ABORT, Escalate.KILL, None, Escalate.KILL, Escalate.KILL]),
    ("an answer after SIGABRT changes nothing",
     [(5.0, "check"), (5.5, "pong"), (7.0, "check")], [Escalate.ABORT, Escalate.KILL]),
    ("stopped: SIGKILL at once, no SIGABRT it could not act on",
     [(1.0, "stop"), (5.0, "check"), (7.0, "check")], [Escalate.KILL_STOPPED, Escalate.KILL]),
    ("stopped but answering before it stopped: the deadline counts from the last answer",
     [(3.0, "pong"), (3.5, "stop"), (7.9, "check"), (8.0, "check")], [None, Escalate.KILL_STOPPED]),
]


@pytest.mark.parametrize(("events", "expected"), [r[1:] for r in ESCALATION], ids=[r[0] for r in ESCALATION])
def test_escalation(events, expected):
    hb = Heartbeat(last_pong=0.0)
    stopped = False
    got = []
    for t, event in events:
        if event == "pong":
            hb.pong(t)
        elif event == "stop":
            stopped = True
        else:
            got.append(hb.step(t, DEADLINE, GRACE, lambda s=stopped: s))
    assert got == expected


def test_proc_is_read_only_once_the_deadline_passed():
    reads = []
    hb = Heartbeat(last_pong=0.0)
    for t in (1.0, 2.0, 4.9):
        hb.step(t, DEADLINE, GRACE, lambda: reads.append(1) or False)
    assert not reads
    assert hb.step(5.0, DEADLINE, GRACE, lambda: reads.append(1) or False) is Escalate.ABORT and reads == [1]


def test_pings_are_numbered_and_spaced_by_the_interval():
    hb = Heartbeat(last_pong=0.0)
    sent = [(t, n) for t in (0.0, 0.5, 1.0, 1.2, 2.1, 2.2) if (n := hb.ping(t, INTERVAL)) is not None]
    assert sent == [(0.0, 1), (1.0, 2), (2.1, 3)]


@pytest.mark.parametrize(("state", "expected_due"), [
    ("quiet", 1.0),  # the next ping comes before the deadline
    ("not pinging", 5.0),  # its pipe is gone: only the deadline
    ("aborted", 7.0),  # aborted at 5: the kill is due a grace later
])
def test_the_loop_wakes_exactly_when_something_is_due(state, expected_due):
    hb = Heartbeat(last_pong=0.0)
    hb.ping(0.0, INTERVAL)
    if state == "aborted":
        hb.next_ping = 99.0
        hb.step(5.0, DEADLINE, GRACE, lambda: False)
    assert hb.next_due(DEADLINE, GRACE, pinging=state != "not pinging") == expected_due
    # ...and step() acts at that very moment (no busy loop waiting for a strict inequality).
    if state != "quiet":
        assert hb.step(expected_due, DEADLINE, GRACE, lambda: False) is not None


# -- the shutdown order -----------------------------------------------------------------------------------

ALL = ("election", "postgres", "watchdog", "api")
TERM_ALL = [Signal(r, signal.SIGTERM) for r in TERM_ORDER if r in ALL]

# Each row: a sequence of turns (time, running workers, election said ShutdownDone, postgres answered our Stop)
# and what each turn sends.  Budget 60 s, SIGKILL 10 s after SIGTERM.
ORDER = [
    ("election stops PostgreSQL, then every worker is terminated",
     [(0.0, ALL, False, False), (5.0, ALL, False, False), (6.0, ALL, True, False)],
     [[Tell("election", "shutdown")], [], TERM_ALL]),
    ("election gone: the postgres worker stops PostgreSQL and is terminated only after its answer",
     [(0.0, ALL[1:], False, False), (3.0, ALL[1:], False, False), (4.0, ALL[1:], False, True)],
     [[Tell("postgres", "stop")], [], [Signal(r, signal.SIGTERM) for r in ("postgres", "api", "watchdog")]]),
    ("election dies during its shutdown: the supervisor asks the postgres worker itself",
     [(0.0, ALL, False, False), (2.0, ALL[1:], False, False), (3.0, ALL[1:], False, True)],
     [[Tell("election", "shutdown")], [Tell("postgres", "stop")],
      [Signal(r, signal.SIGTERM) for r in ("postgres", "api", "watchdog")]]),
    ("the postgres worker dies before answering: nothing left to wait for",
     [(0.0, ALL[1:], False, False), (1.0, ("api", "watchdog"), False, False)],
     [[Tell("postgres", "stop")], [Signal("api", signal.SIGTERM), Signal("watchdog", signal.SIGTERM)]]),
    ("neither election nor postgres runs: straight to SIGTERM",
     [(0.0, ("api",), False, False)], [[Signal("api", signal.SIGTERM)]]),
    ("a stop that hangs ends at the budget all the same",
     [(0.0, ALL, False, False), (59.9, ALL, False, False), (60.0, ALL, False, False)],
     [[Tell("election", "shutdown")], [], TERM_ALL]),
    ("a worker that ignores SIGTERM is killed 10 s later, and again every 10 s",
     [(0.0, ALL, True, False), (9.9, ("api",), True, False), (10.0, ("api",), True, False),
      (15.0, ("api",), True, False), (20.0, ("api",), True, False)],
     [[Tell("election", "shutdown"), *TERM_ALL], [], [Signal("api", signal.SIGKILL)], [],
      [Signal("api", signal.SIGKILL)]]),
]


@pytest.mark.parametrize("turns, expected", [r[1:] for r in ORDER], ids=[r[0] for r in ORDER])
def test_shutdown_order(turns, expected):
    order = ShutdownOrder(0.0, budget=60.0, term_grace=10.0)
    got = [order.step(now, running, done, pg_done) for now, running, done, pg_done in turns]
    assert got == expected


def test_every_worker_gets_sigterm_once_and_the_order_is_done_when_none_is_left():
    order = ShutdownOrder(0.0, budget=60.0)
    order.step(0.0, ALL, False, False)
    assert order.phase is Phase.ELECTION and not order.finished(ALL)
    assert order.step(1.0, ALL, True, False) == TERM_ALL
    assert order.step(2.0, ALL, True, False) == []  # no second SIGTERM
    assert not order.finished(("api",)) and order.finished(())


def test_after_a_give_up_postgresql_is_settled_and_the_workers_go_at_once():
    order = ShutdownOrder(0.0, budget=60.0, postgres_settled=True)
    assert order.step(0.0, ALL, False, False) == TERM_ALL


@pytest.mark.parametrize(("phase_turns", "due"), [
    ([(0.0, ALL, False, False)], 60.0),  # waiting on election: the budget
    ([(0.0, ALL, True, False)], 10.0),  # terminating: the SIGKILL
])
def test_the_shutdown_wakes_the_loop_when_it_is_due(phase_turns, due):
    order = ShutdownOrder(0.0, budget=60.0, term_grace=10.0)
    for now, running, done, pg_done in phase_turns:
        order.step(now, running, done, pg_done)
    assert order.next_due() == due


# -- routing and replay ------------------------------------------------------------------------------------

SNAPSHOT_KINDS = [k for k in ipc.MESSAGE_TYPES.values() if k.SNAPSHOT]
WORKERS = ("election", "postgres", "watchdog", "api", "vip")


def test_every_snapshot_a_worker_receives_is_replayed_to_it_or_says_why_not():
    """The completeness rule: no (worker, snapshot) pair is left to chance."""
    for role in WORKERS:
        for kind in SNAPSHOT_KINDS:
            reaches = role in routing.receivers(kind)
            replayed = kind in routing.REPLAY[role]
            excused = (role, kind) in routing.NOT_REPLAYED
            if reaches:
                assert replayed != excused, f"{kind.__name__} -> {role}: replayed or excused, exactly one"
            else:
                assert not replayed and not excused, f"{kind.__name__} never reaches {role}"


@pytest.mark.parametrize(("role", "expected"), [
    ("api", [ipc.ClusterView, ipc.PgState, ipc.WatchdogState, ipc.LogLoss]),
    ("vip", [ipc.ClusterView, ipc.PgState]),
    ("postgres", [ipc.ClusterView]),
    ("election", []),
    ("watchdog", []),
])
def test_what_each_worker_gets_at_start(role, expected):
    snaps = routing.Snapshots()
    for msg in (pg(), view("old"), view("new"), wd(), ipc.LogLoss(3), ipc.Pong(1)):
        snaps.keep(msg)
    got = snaps.for_start(role)
    assert [type(m) for m in got] == expected
    assert all(m.leader == "new" for m in got if isinstance(m, ipc.ClusterView))  # the latest, never an older one


def test_nothing_is_replayed_before_anything_was_received():
    assert routing.Snapshots().for_start("api") == []


def test_destinations_come_from_the_messages_route():
    assert routing.destinations(pg()) == ("election", "api", "vip")
    assert routing.destinations(ipc.LogRecord(20, "x", "y", 1.0)) == ()  # the supervisor's, not forwarded


def pg() -> ipc.PgState:
    return ipc.PgState("running", "primary", False, True, 1.0, postmaster_pid=4242)


def view(leader: str) -> ipc.ClusterView:
    return ipc.ClusterView(1.0, 1.0, leader, True, 100.0, {}, {}, (), None, None, None, None, False)


def wd() -> ipc.WatchdogState:
    return ipc.WatchdogState("off", False, None, None, None)
