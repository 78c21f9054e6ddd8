"""Replication slots: the desired-state rules (pure), names and /status."""

from __future__ import annotations

import logging
from typing import Any

import psycopg2
import pytest

from hasup.config.slot_settings import IgnoreRule, SlotSettings, SlotSpec
from hasup.postgresql import slot_keeper, slots
from hasup.postgresql.slot_keeper import SlotJob, SlotKeeper
from hasup.postgresql.slots import Plan, SlotRow

PHYS = "physical"
CDC = SlotRow("debezium", "logical", "app", "pgoutput", active=True, restart_lsn=50, confirmed_flush_lsn=60)
PERM_LOGICAL = SlotSpec("perm_l", "logical", "app", "test_decoding")
SETTINGS = SlotSettings(permanent=(SlotSpec("perm_p"), PERM_LOGICAL), ignore=(IgnoreRule(plugin="pgoutput"),))


def row(name: str, kind: str = PHYS, **kw: Any) -> SlotRow:
    return SlotRow(name, kind, **kw)


def run(rows: list[SlotRow], members: tuple[str, ...] = ("node2", "node3"), **kw: Any) -> Plan:
    args: dict[str, Any] = {"me": "node1", "primary": True, "settings": SETTINGS, "member_slot_names": members}
    args.update(kw)
    return slots.plan(rows=rows, **args)


def names(plan: Plan) -> tuple[set[str], set[str], dict[str, int]]:
    return {s.name for s in plan.create}, {n for n, _ in plan.drop}, dict(plan.advance)


# (case, rows, plan() arguments, expected created, dropped, advanced)
CASES: list[tuple[str, list[SlotRow], dict[str, Any], set[str], set[str], dict[str, int]]] = [
    ("leader creates member and permanent slots before anyone needs them",
     [], {"logical_ok": True}, {"node2", "node3", "perm_p", "perm_l"}, set(), {}),
    ("leader keeps what exists, drops a vanished member's slot and an unknown one",
     [row("node2", active=True), row("node3"), row("node4"), row("stray"), row("perm_p"),
      row("perm_l", "logical", database="app", plugin="test_decoding")],
     {"member_slot_names": ("node2", "node3")}, set(), {"node4", "stray"}, {}),
    ("leader never keeps a slot named like itself",
     [row("node1"), row("node2"), row("node3"), row("perm_p")], {"logical_ok": False}, set(), {"node1"}, {}),
    ("without wal_level=logical a permanent logical slot is not created, nor dropped",
     [row("node2"), row("node3"), row("perm_p"), row("perm_l", "logical", database="app", plugin="test_decoding")],
     {"logical_ok": False}, set(), set(), {}),
    ("a change-data-capture slot matching ignore_slots is never dropped, active or not",
     [CDC, row("cdc2", "logical", database="x", plugin="pgoutput")], {"logical_ok": True},
     {"node2", "node3", "perm_p", "perm_l"}, set(), {}),
    ("temporary slots belong to their session (pg_basebackup's)",
     [row("pg_basebackup_123", temporary=True)], {"members": ()}, {"perm_p", "perm_l"}, set(), {}),
    ("a member slot whose WAL is lost is recreated",
     [row("node2", wal_status="lost"), row("node3"), row("perm_p")], {"logical_ok": False}, {"node2"}, {"node2"}, {}),
    ("a permanent slot of the wrong kind or plugin is recreated",
     [row("perm_p", "logical", database="app", plugin="test_decoding"), row("node2"), row("node3"),
      row("perm_l", "logical", database="app", plugin="wal2json")],
     {"logical_ok": True}, {"perm_p", "perm_l"}, {"perm_p", "perm_l"}, {}),
    ("paused: nothing is dropped, missing slots are still created",
     [row("node4"), row("node2", wal_status="lost")], {"paused": True, "logical_ok": False}, {"node3", "perm_p"},
     set(), {}),
    ("a permanent slot named like a member outlives the member",
     [row("node3"), row("node2"), row("perm_p")],
     {"member_slot_names": ("node2",), "settings": SlotSettings(permanent=(SlotSpec("perm_p"), SlotSpec("node3")))},
     set(), set(), {}),
    ("replica keeps copies of the other members' and permanent physical slots, advanced from /status",
     [row("node1", restart_lsn=100), row("node3", restart_lsn=100), row("perm_p", restart_lsn=500),
      row("perm_l", "logical", database="app", plugin="test_decoding")],
     {"me": "node2", "primary": False, "members": ("node1", "node3"), "leader": "node1",
      "status_slots": {"node3": 300, "perm_p": 400, "perm_l": 900}, "leader_optime": 700},
     set(), {"perm_l"}, {"node1": 700, "node3": 300}),
    ("replica creates missing copies and drops its own-named slot",
     [row("node2", restart_lsn=5)],
     {"me": "node2", "primary": False, "members": ("node1", "node3"), "leader": "node1"},
     {"node1", "node3", "perm_p"}, {"node2"}, {}),
    ("replica does not advance an active slot (a member streaming from it)",
     [row("node1", restart_lsn=10), row("node3", restart_lsn=10, active=True), row("perm_p", restart_lsn=10)],
     {"me": "node2", "primary": False, "members": ("node1", "node3"), "leader": "node1",
      "status_slots": {"node3": 30, "perm_p": 30}, "leader_optime": 40},
     set(), set(), {"node1": 40, "perm_p": 30}),
    ("replica leaves an ignored copy where it is",
     [row("node1", restart_lsn=10), row("node3", restart_lsn=10), row("perm_p", restart_lsn=10)],
     {"me": "node2", "primary": False, "members": ("node1", "node3"), "leader": "node1",
      "settings": SlotSettings(permanent=(SlotSpec("perm_p"),), ignore=(IgnoreRule(name="perm_p"),)),
      "status_slots": {"node3": 30, "perm_p": 30}, "leader_optime": 40},
     set(), set(), {"node1": 40, "node3": 30}),
    ("a nofailover replica keeps no copies, but never drops ignored slots",
     [row("node1"), row("node3"), row("perm_p"), CDC],
     {"me": "node2", "primary": False, "nofailover": True, "members": ("node1", "node3")}, set(),
     {"node1", "node3", "perm_p"}, {}),
    ("a nofailover replica keeps the slots of members cascading from it",
     [row("node1"), row("node3", active=True, restart_lsn=5)],
     {"me": "node2", "primary": False, "nofailover": True, "members": ("node1", "node3"), "downstream": ("node3",),
      "status_slots": {"node3": 50}}, set(), {"node1"}, {}),
    ("the leader moves the idle slot of a member cascading from a replica to the member's position",
     [row("node2", active=True, restart_lsn=10), row("node3", restart_lsn=10), row("perm_p", restart_lsn=10)],
     {"cascaded": {"node3": 70, "node2": 90}, "logical_ok": False}, set(), set(), {"node3": 70}),
    ("use_slots off: only inactive member slots are dropped",
     [row("node2"), row("node3", active=True), row("perm_p"), row("other"), CDC],
     {"settings": SlotSettings(use_slots=False, permanent=(SlotSpec("perm_p"),),
                               ignore=(IgnoreRule(plugin="pgoutput"),))}, set(), {"node2"}, {}),
]


@pytest.mark.parametrize(("case", "rows", "kw", "create", "drop", "advance"), CASES, ids=[c[0] for c in CASES])
def test_plan(case: str, rows: list[SlotRow], kw: dict[str, Any], create: set[str], drop: set[str],
              advance: dict[str, int]) -> None:
    kw = dict(kw)
    members = kw.pop("members", None)
    if members is not None:
        kw["member_slot_names"] = members
    plan = run(rows, **kw)
    assert names(plan) == (create, drop, advance), case
    # Whatever else happens: ignored and temporary slots are never dropped.
    for r in rows:
        if r.temporary or any(rule.matches(r) for rule in plan_settings(kw).ignore):
            assert r.name not in {n for n, _ in plan.drop}


def plan_settings(kw: dict[str, Any]) -> SlotSettings:
    return kw.get("settings", SETTINGS)


def test_ignored_slots_are_never_dropped_in_any_situation() -> None:
    rows = [CDC, row("mine", "logical", database="app", plugin="pgoutput"), row("node9")]
    rules = (IgnoreRule(plugin="pgoutput"), IgnoreRule(name="node9", type=PHYS))
    for use_slots in (True, False):
        for primary in (True, False):
            for nofailover in (True, False):
                for paused in (True, False):
                    settings = SlotSettings(use_slots=use_slots, ignore=rules)
                    plan = slots.plan(me="node1", primary=primary, settings=settings, rows=rows,
                                      member_slot_names=("node9",), paused=paused, nofailover=nofailover)
                    assert plan.drop == (), (use_slots, primary, nofailover, paused)


def test_ignore_rules_match_on_every_attribute_they_set() -> None:
    r = row("cdc", "logical", database="app", plugin="pgoutput")
    assert IgnoreRule().matches(r)
    assert IgnoreRule(name="cdc", type="logical", database="app", plugin="pgoutput").matches(r)
    assert not IgnoreRule(name="cdc", database="other").matches(r)
    assert not IgnoreRule(type=PHYS).matches(r)


def test_plan_reports_what_it_keeps_for_status() -> None:
    plan = run([row("node2"), row("perm_p"), CDC, row("gone")], logical_ok=False)
    assert plan.managed == {"node2", "node3", "perm_p"}
    assert plan.notes == ("permanent logical slot perm_l needs wal_level=logical: not created",)


def test_member_slots_skip_me_nostream_and_report_collisions() -> None:
    members = {"node1": {}, "Node-2": {}, "node.2": {}, "arch": {"tags": {"nostream": True}}, "NODE1": {}}
    got, notes = slots.member_slots(members, "node1")
    assert got == {"node_2": "Node-2"}
    assert len(notes) == 2 and any("node1 and NODE1" in n for n in notes)


def test_retain_keeps_vanished_members_for_member_slots_ttl() -> None:
    seen = slots.retain({}, ["a", "b"], now=100.0, ttl=60)
    assert seen == {"a": 100.0, "b": 100.0}
    seen = slots.retain(seen, ["a"], now=150.0, ttl=60)
    assert seen == {"a": 150.0, "b": 100.0}
    assert slots.retain(seen, ["a"], now=161.0, ttl=60) == {"a": 161.0}
    assert slots.retain(seen, ["a"], now=150.0, ttl=0) == {"a": 150.0}


def test_keeper_retention_carries_over_a_failover() -> None:
    now = [1000.0]
    keeper = SlotKeeper(lambda db: "", clock=lambda: now[0])
    job = SlotJob(me="node2", nofailover=False, holds_lock=True, leader="node2", paused=False,
                  members={"node2": {}, "node3": {}}, settings=SlotSettings(member_slots_ttl=60),
                  status={"optime": 1, "retain_slots": ["node1", "node2", "node3", "node4"]})
    # As a replica: copies of present members and of those the leader still retains, never its own.
    assert keeper._member_slot_names(job, primary=False) == {"node1", "node3", "node4"}
    # Promoted: the previous leader's grace goes on, from now.
    assert keeper._member_slot_names(job, primary=True) == {"node1", "node3", "node4"}
    now[0] += 61
    assert keeper._member_slot_names(job, primary=True) == {"node3"}
    assert keeper.last_seen == {"node3": 1061.0}


def test_slot_names() -> None:
    assert slots.slot_name("Node-1.a") == "node_1_a"
    assert slots.slot_name("nödé") == "nu0246du0233"
    assert len(slots.slot_name("x" * 100)) == 63


def test_own_slot() -> None:
    assert slots.own_slot("Node-2", {}, use_slots=True) == "node_2"
    assert slots.own_slot("node2", {"nostream": True}, use_slots=True) is None
    assert slots.own_slot("node2", {}, use_slots=False) is None


def test_status_value() -> None:
    assert slots.status_value(7, {"node2": 5}, ("node3", "node2"), None) == \
        {"optime": 7, "slots": {"node2": 5}, "retain_slots": ["node2", "node3"]}
    previous = {"optime": 3, "slots": {"node1": 2}, "retain_slots": ["node1"]}
    # Until the slot keeper reports as leader, the previous leader's record stands.
    assert slots.status_value(9, None, (), previous) == {"optime": 9, "slots": {"node1": 2}, "retain_slots": ["node1"]}
    # Empty fields are left out, as Patroni's leader leaves them out.
    assert slots.status_value(9, None, (), {"slots": "x"}) == {"optime": 9}
    assert slots.status_value(9, {}, (), None) == {"optime": 9}


def test_status_value_lists_the_leaders_own_slot_as_patroni_does() -> None:
    # The leader's own slot at its optime, and its name among the retained ones: when it crashes,
    # the others keep its slot after its member key has expired.
    assert slots.status_value(70, {"node2": 50, "node3": 60}, ("node2", "node3"), None, own="node1") == \
        {"optime": 70, "slots": {"node1": 70, "node2": 50, "node3": 60}, "retain_slots": ["node1", "node2", "node3"]}
    # Just promoted: the previous leader's record (its slot included) stands, with ours at our optime.
    previous = {"optime": 40, "slots": {"node1": 40, "node2": 35}, "retain_slots": ["node1", "node2"]}
    assert slots.status_value(45, None, (), previous, own="node2") == \
        {"optime": 45, "slots": {"node1": 40, "node2": 45}, "retain_slots": ["node1", "node2"]}
    # A leader that never streams (nostream) has no slot of its own to list.
    assert slots.status_value(45, {"node2": 5}, ("node2",), None, own=None) == \
        {"optime": 45, "slots": {"node2": 5}, "retain_slots": ["node2"]}


def test_handover_value_keeps_the_retained_slots() -> None:
    previous = {"optime": 40, "slots": {"node1": 40, "node2": 35}, "retain_slots": ["node2", "node3"]}
    assert slots.handover_value(50, previous, "node1") == {"optime": 50, "retain_slots": ["node1", "node2", "node3"]}
    assert slots.handover_value(50, None, None) == {"optime": 50}
    assert slots.handover_value(50, {"retain_slots": "junk"}, "node1") == {"optime": 50, "retain_slots": ["node1"]}


def test_a_new_leader_keeps_the_crashed_leaders_slot() -> None:
    # node1 led and crashed; its member key is gone, but its /status lists its slot.
    now = [1000.0]
    status = slots.status_value(70, {"node2": 50, "node3": 60}, ("node2", "node3"), None, own="node1")
    keeper = SlotKeeper(lambda db: "", clock=lambda: now[0])
    job = SlotJob(me="node2", nofailover=False, holds_lock=True, leader="node2", paused=False,
                  members={"node2": {}, "node3": {}}, settings=SlotSettings(member_slots_ttl=60), status=status)
    assert keeper._member_slot_names(job, primary=False) == {"node1", "node3"}
    assert keeper._member_slot_names(job, primary=True) == {"node1", "node3"}
    result = slots.plan(me="node2", primary=True, settings=SlotSettings(), member_slot_names={"node1", "node3"},
                        rows=[slots.SlotRow("node1", "physical", restart_lsn=70),
                              slots.SlotRow("node3", "physical", restart_lsn=60)])
    assert result.drop == () and result.create == ()

def test_rows_and_lsns() -> None:
    r = slots.row_of({"slot_name": "l", "slot_type": "logical", "database": "d", "plugin": "p", "temporary": False,
                      "active": True, "restart_lsn": "0/3000060", "confirmed_flush_lsn": "1/10",
                      "wal_status": "reserved"})
    assert r == SlotRow("l", "logical", "d", "p", False, True, 0x3000060, (1 << 32) + 16, "reserved")
    assert r.position == (1 << 32) + 16 and row("p", restart_lsn=5).position == 5
    assert slots.parse_lsn(None) is None and slots.parse_lsn("x/y") is None
    assert slots.format_lsn((0x16 << 32) + 0xB374D848) == "16/B374D848"


def test_keeper_checks_rarely_while_use_slots_is_off() -> None:
    now = [0.0]
    keeper = SlotKeeper(lambda db: "", clock=lambda: now[0], spawn=lambda fn: fn())  # runs inline
    ran: list[bool] = []
    keeper.run_once = lambda job: ran.append(job.settings.use_slots)  # type: ignore[method-assign]

    def submit(use_slots: bool) -> None:
        keeper.submit(SlotJob(me="n1", nofailover=False, holds_lock=True, leader="n1", paused=False, members={},
                              settings=SlotSettings(use_slots=use_slots)))

    submit(False)
    now[0] = 30.0
    submit(False)
    now[0] = 61.0
    submit(False)
    submit(True)
    submit(True)
    assert ran == [False, False, True, True]



def member(state: str = "running", role: str = "replica", xlog: int | None = None, **tags: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"state": state, "role": role, "conn_url": "postgres://h:5432/postgres"}
    if xlog is not None:
        data["xlog_location"] = xlog
    if tags:
        data["tags"] = tags
    return data


def test_upstream_follows_replicatefrom_while_the_source_runs_as_a_replica() -> None:
    members = {"n1": member(role="primary"), "n2": member(), "n3": member(replicatefrom="n2"),
               "n4": member(replicatefrom="n4"), "n5": member(replicatefrom="gone"),
               "n6": member(replicatefrom="n7"), "n7": member(state="stopped")}
    assert {m: slots.upstream_of(members, m, "n1") for m in members} == \
        {"n1": "n1", "n2": "n1", "n3": "n2", "n4": "n1", "n5": "n1", "n6": "n1", "n7": "n1"}


def test_cascades() -> None:
    members = {"n1": member(role="primary"), "n2": member(xlog=5), "n3": member(xlog=7, replicatefrom="n2"),
               "n4": member(replicatefrom="n2", nostream=True)}
    assert slots.cascades(members, "n1", "n1") == ({"n2"}, {"n3": 7})
    assert slots.cascades(members, "n2", "n1") == ({"n3"}, {})


class _Session:
    """A fake psycopg2 session for the keeper: answers its read, and dies on demand like a restarted server's."""

    def __init__(self, sessions: list[_Session]) -> None:
        self.closed = 0
        self.dead = False
        self.statements: list[str] = []
        sessions.append(self)

    def cursor(self) -> _Session:
        return self

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, args: object = None) -> None:
        if self.dead:
            raise psycopg2.OperationalError("server closed the connection unexpectedly")
        self.statements.append(sql)

    def fetchone(self) -> tuple[object, ...]:
        return (True, "replica", None)

    def close(self) -> None:
        self.closed = 1


def test_keeper_keeps_one_session_and_replaces_a_dead_one_quietly(monkeypatch, caplog) -> None:
    sessions: list[_Session] = []
    monkeypatch.setattr(slot_keeper.psycopg2, "connect", lambda dsn, connect_timeout: _Session(sessions))
    keeper = SlotKeeper(lambda db: "")
    job = SlotJob(me="n1", nofailover=False, holds_lock=False, leader="n2", paused=False, members={},
                  settings=SlotSettings(use_slots=True))
    for _ in range(3):
        keeper.run_once(job)
    assert len(sessions) == 1  # one backend for every loop_wait, not a new one each time
    assert sum("statement_timeout" in s for s in sessions[0].statements) == 1
    sessions[0].dead = True  # PostgreSQL restarted under it
    with caplog.at_level(logging.WARNING, logger="hasup.slots"):
        keeper.run_once(job)
    assert len(sessions) == 2 and sessions[0].closed and not sessions[1].closed
    assert not caplog.records  # a kept session that died is no problem worth a line
    sessions[1].dead = True
    monkeypatch.setattr(slot_keeper.psycopg2, "connect", lambda dsn, connect_timeout: _dead(sessions))
    with caplog.at_level(logging.WARNING, logger="hasup.slots"):
        keeper.run_once(job)
    # A new session that fails at once is a problem: said once.
    assert [r.getMessage() for r in caplog.records] == [
        "replication slots: cannot connect: server closed the connection unexpectedly"]


def _dead(sessions: list[_Session]) -> _Session:
    s = _Session(sessions)
    s.dead = True
    return s
