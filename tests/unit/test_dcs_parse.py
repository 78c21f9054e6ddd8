"""The etcd boundary (hasup.dcs.parse, hasup.dcs.model.build_cluster): any value in, a typed value or
a Bad out, never an exception; and the values that used to crash the election worker."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as s

from hasup import ipc
from hasup.api import metrics, snapshot
from hasup.config import parse_dynamic
from hasup.config.schema import DYNAMIC_INT_BOUNDS
from hasup.dcs import parse
from hasup.dcs.model import Cluster, Member, build_cluster, with_last_good
from hasup.election import policy as ha
from hasup.election import sync
from tests.unit.test_ha import ME, SETTINGS, cluster, local, member, peer, pg

# -- strategies -------------------------------------------------------------------------------------------

SCALARS = (s.none() | s.booleans() | s.integers(min_value=-(2**70), max_value=2**70)
           | s.floats(allow_nan=True, allow_infinity=True) | s.text(max_size=20))
JSON = s.recursive(SCALARS, lambda kids: s.lists(kids, max_size=4) | s.dictionaries(s.text(max_size=8), kids,
                                                                                        max_size=4), max_leaves=20)
NAMES = s.sampled_from(["n1", "n2", "", "a/b", "x" * 300, "\x00", "\ud800", "node\n"]) | s.text(max_size=12)
HISTORY_ENTRY = s.lists(s.one_of(s.integers(min_value=-5, max_value=2**65), NAMES, s.none(), JSON),
                        min_size=0, max_size=6)
MEMBER_FIELDS = s.sampled_from(["conn_url", "api_url", "state", "role", "version", "xlog_location", "timeline",
                                "tags", "receive_lsn", "replay_lsn", "replication_state", "pending_restart"])
URLS = s.sampled_from(["postgres://127.0.0.1:5432/postgres", "http://h:8008/patroni", "http://h:99999/",
                       "file:///etc/passwd", "data:,x", "http://", "nourl", "http://h:8008/\x00"]) | s.text()
SHAPED: dict[str, Any] = {
    "history": s.lists(HISTORY_ENTRY | JSON, max_size=4),
    "members/x": s.dictionaries(MEMBER_FIELDS, URLS | JSON, max_size=6),
    "failover": s.dictionaries(s.sampled_from(["leader", "member", "scheduled_at", "other"]), NAMES | JSON),
    "sync": s.dictionaries(s.sampled_from(["leader", "sync_standby", "quorum"]),
                           NAMES | s.lists(NAMES, max_size=3) | JSON),
    "status": s.dictionaries(s.sampled_from(["optime", "slots", "retain_slots"]),
                             s.dictionaries(NAMES, s.integers(min_value=-1, max_value=2**65)) | s.lists(NAMES)
                             | JSON),
    "failsafe": s.dictionaries(NAMES, URLS | JSON, max_size=3),
    "config": s.dictionaries(s.sampled_from(["ttl", "loop_wait", "retry_timeout", "pause", "synchronous_mode",
                                             "postgresql", "maximum_lag_on_failover", "master_start_timeout",
                                             "standby_cluster", "check_timeline"]), JSON, max_size=5),
}
PARSERS = {
    "leader": parse.parse_leader, "initialize": parse.parse_initialize, "optime/leader": parse.parse_optime,
    "members/x": parse.parse_member, "history": parse.parse_history, "failover": parse.parse_failover,
    "sync": parse.parse_sync, "status": parse.parse_status, "failsafe": parse.parse_failsafe,
    "config": parse.parse_config,
}
HOSTILE_TEXTS = [
    "[" * 600 + "]" * 600, '{"a":' * 600 + "1" + "}" * 600, "[" * 100_000, json.dumps("x" * 1_000_000),
    "1e400", "-1e400", "NaN", "Infinity", "[1e309]", '{"ttl": 1e400}', '{"ttl": NaN}', "1" * 5000,
    '{"ttl": ' + "9" * 5000 + "}", '"\\ud800"', '{"a": "\\u0000"}', "", " ", "null", "true", "{", "\x00",
    '{"ttl": 10, "ttl": "x"}', "[[1, 0, " + "[" * 70 + "]" * 70 + "]]",
]


def raw_texts() -> s.SearchStrategy[str | None]:
    """Text as etcd could hold it: JSON of anything, JSON shaped like the key, hostile or random text."""
    return s.none() | s.text() | s.sampled_from(HOSTILE_TEXTS) | JSON.map(json.dumps)


def well_formed(value: Any) -> None:
    """What every accepted value promises: JSON-encodable as it is (an IPC message), nothing unbounded."""
    encoded = json.dumps(value, allow_nan=False)
    assert parse.tree_problem(json.loads(encoded)) is None


# -- every parser is total ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(PARSERS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=s.data())
def test_every_parser_returns_a_value_or_bad_for_any_text(key: str, data: s.DataObject) -> None:
    shaped = SHAPED.get(key)
    raw = data.draw(raw_texts() | shaped.map(json.dumps) if shaped is not None else raw_texts())
    value = PARSERS[key](raw)
    if isinstance(value, parse.Bad):
        assert isinstance(value.reason, str) and value.reason
        return
    well_formed(value)
    if key == "history":
        assert all(parse.history_entry_problem(e) is None for e in value)
    elif key == "members/x":
        assert isinstance(value, dict) and parse.member_problem(value) is None
    elif key == "config" and value is not None:
        parse_dynamic(value)  # what the election worker does next cannot fail either
    elif key == "leader" and value is not None:
        assert parse.valid_name(value)
    elif key in ("initialize", "optime/leader"):
        assert value is None or value == "" or str(value).isdigit()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes=s.dictionaries(s.sampled_from([*PARSERS, "members/n2", "members/", "members/a/b", "unknown"]),
                            raw_texts(), max_size=8),
       race=s.booleans(), synchronous=s.booleans())
def test_any_cluster_read_builds_a_model_that_decide_and_the_view_can_use(
        nodes: dict[str, str | None], race: bool, synchronous: bool) -> None:
    cluster_ = build_cluster({k: (v, 7, None) for k, v in nodes.items()}, 9, parse.BadValues())
    assert cluster_.timeline >= 1
    assert set(cluster_.members) <= {"x", "n2"}
    settings_ = replace(SETTINGS, synchronous_mode=synchronous)
    peers = {"x": peer("x", wal=10**6)} if race else {}
    for state in (pg(), pg(role="primary")):
        ha.decide(cluster_, local(state, peers=peers), ME, settings_)
        ha.decide(replace(cluster_, leader=None), local(state, peers=peers), ME, settings_)
    # What the election worker's publish_view and hasupctl do with it.
    json.dumps([tuple(tuple(h) for h in cluster_.history), cluster_.config, cluster_.sync, cluster_.failover,
                cluster_.status, cluster_.failsafe, {n: m.data for n, m in cluster_.members.items()}],
               allow_nan=False)
    for m in cluster_.members.values():
        assert m.wal_position >= 0 and (m.host_port is None or isinstance(m.host_port[1], int))


# -- the values that once crashed the election worker -------------------------------------------------------


def read(**values: Any) -> Cluster:
    """build_cluster over keys given as JSON-able values (str: as it is)."""
    nodes = {k.replace("__", "/"): (v if isinstance(v, str) else json.dumps(v), 5, None) for k, v in values.items()}
    return build_cluster(nodes, 10, parse.BadValues())


@pytest.mark.parametrize("history", [[1], [{}], [[]], [["1", 0, "x"]], [[True, 0, "x"]], [[2, -1, "x"]],
                                     [[2, 0, "x", 5]], {"1": 2}, "[1,", [[0, 0, "no timeline 0"]]])
def test_a_corrupt_history_is_rejected_and_never_reaches_policy(history: Any) -> None:
    c = read(history=history, leader="n2", members__n1={"state": "running", "role": "replica"})
    assert c.history == [] and "history" in c.rejected and c.timeline == 1
    ha.decide(c, local(pg(role="primary", tl=3)), ME, SETTINGS)
    ha.decide(replace(c, leader=None), local(pg(tl=2)), ME, replace(SETTINGS, check_timeline=True))
    assert ha.needs_history(c, pg(role="primary", tl=3))


def test_a_good_history_of_every_patroni_shape_is_kept() -> None:
    history = [[1, 100, "no recovery target specified"], [2, 200, "x", "2024-01-01T00:00:00+00:00"],
               [3, 300, "y", "2024-01-02T00:00:00+00:00", "n2"], [4, 400, "z", None, None]]
    c = read(history=history)
    assert c.history == history and c.timeline == 5 and not c.rejected


def test_hand_made_clusters_with_bad_entries_still_answer_a_timeline() -> None:
    assert cluster(history=[[1, 0, "x"], [{}]]).timeline == 2  # the last usable entry
    assert cluster(history=[[1]]).timeline == 2
    assert cluster(history=[["a"], {}]).timeline == 1


@pytest.mark.parametrize("failover", [{"member": ["n2"]}, {"member": {"a": 1}}, {"leader": 5}, {"member": "a/b"},
                                      {"scheduled_at": ["now"]}, [], "x", "null"])
def test_a_corrupt_failover_key_is_no_request_at_all(failover: Any) -> None:
    c = read(failover=failover, members__n2={"state": "running", "role": "replica"})
    assert c.failover is None and "failover" in c.rejected
    # Leader race and leader with a switchover pending: the crash was `candidate in cluster.members`.
    assert ha.decide(c, local(pg(), peers={"n2": peer("n2", wal=1)}), ME, SETTINGS).actions
    ha.decide(replace(c, leader=cluster(leader="n1").leader), local(pg(role="primary")), ME, SETTINGS)


def test_a_failover_key_keeps_only_its_three_fields() -> None:
    assert read(failover={}).failover is None and not read(failover={}).rejected
    c = read(failover={"leader": "n1", "member": "", "scheduled_at": None, "extra": [1]})
    assert c.failover == {"leader": "n1"}
    assert read(failover={"other": 1}).failover is None  # names nobody: no switchover to just anyone


@pytest.mark.parametrize("xlog", ["abc", "12", 1.5, -1, 2**64, True, [1], {"a": 1}])
def test_a_member_with_a_non_numeric_position_is_left_out(xlog: Any) -> None:
    c = read(members__n2={"state": "running", "role": "replica", "xlog_location": xlog},
             members__n3={"state": "running", "role": "replica", "xlog_location": 7},
             sync={"leader": "n1", "sync_standby": "n2"}, leader="n1")
    assert set(c.members) == {"n3"} and "members/n2" in c.rejected
    rows = [{"application_name": n, "state": "streaming", "sync_state": "async"} for n in ("n2", "n3")]
    assert sync.candidates(rows, c, "n1") == ["n3"]
    primary = replace(pg(role="primary"), replication=tuple(rows))
    ha.decide(c, local(primary), ME, replace(SETTINGS, synchronous_mode=True))


def test_sync_candidates_survive_a_hand_made_member_with_a_bad_position() -> None:
    c = cluster(leader="n1")
    c.members["n2"] = Member("n2", {"state": "running", "xlog_location": "abc"})
    rows = [{"application_name": n, "state": "streaming"} for n in ("n2", "n3")]
    assert sync.candidates(rows, c, "n1") == ["n3", "n2"]


def test_member_urls_must_parse_with_the_schemes_members_publish() -> None:
    c = read(members__n2={"conn_url": "postgres://h:99999/postgres"}, members__n3={"api_url": "http://"},
             members__n4={"conn_url": "postgres://h:5432/postgres", "api_url": "https://h:8008/patroni"},
             members__n5={"api_url": "file://localhost/etc/passwd"}, members__n6={"api_url": "data:,{}"},
             members__n7={"conn_url": "http://h:5432/"}, members__n8={"api_url": "http://h:8008/pa tro\u0001ni"})
    assert set(c.members) == {"n4"} and c.members["n4"].host_port == ("h", 5432)


def test_member_keys_beyond_the_limit_and_with_bad_names_are_left_out_but_the_leader_stays() -> None:
    many = {f"members__m{i:03d}": {"state": "running"} for i in range(parse.MAX_MEMBERS + 5)}
    last = f"m{parse.MAX_MEMBERS + 4:03d}"
    c = read(leader=last, members__zz={"state": "running"}, **many)
    assert len(c.members) == parse.MAX_MEMBERS and last in c.members and "zz" not in c.members
    nodes = {"members/" + "x" * 300: ('{"state": "running"}', 1, None), "members/a\nb": ("{}", 1, None)}
    assert build_cluster(nodes, 1, parse.BadValues()).members == {}


def test_leader_values_that_name_nobody_are_taken_as_absent() -> None:
    for value in ("x" * 300, "a\x00b", "a/b", "line\nbreak"):
        c = read(leader=value)
        assert c.leader is None and "leader" in c.rejected
    assert read(leader="n2").leader is not None and read(leader="").leader is None


def test_hostile_json_is_bad_not_an_exception() -> None:
    for text in HOSTILE_TEXTS:
        for parser in PARSERS.values():
            parser(text)
    assert parse.decode_json("[" * 600 + "]" * 600, 1 << 20) == parse.Bad(f"nested deeper than {parse.MAX_DEPTH}")
    assert parse.decode_json("[" * 100_000, 1 << 20) == parse.Bad(f"nested deeper than {parse.MAX_DEPTH}")
    assert isinstance(parse.decode_json("[1e400]", 100), parse.Bad)
    assert isinstance(parse.decode_json("[NaN]", 100), parse.Bad)
    assert isinstance(parse.decode_json("9" * 5000, 10_000), parse.Bad)
    assert isinstance(parse.decode_json('"\\ud800"', 100), parse.Bad)
    assert isinstance(parse.decode_json("[" + "0," * 60_000 + "0]", 1 << 20), parse.Bad)  # too many values
    deep = parse.MAX_DEPTH + 1
    assert parse.decode_json("[" * deep + "]" * deep, 1000) == parse.Bad(f"nested deeper than {parse.MAX_DEPTH}")
    assert not isinstance(parse.decode_json("[" * parse.MAX_DEPTH + "]" * parse.MAX_DEPTH, 1000), parse.Bad)


def test_a_one_megabyte_string_in_any_key_is_rejected_before_it_is_decoded() -> None:
    big = json.dumps({"state": "x" * 1_000_000})
    started = time.monotonic()
    for parser in PARSERS.values():
        assert isinstance(parser(big), parse.Bad)
    assert time.monotonic() - started < 1.0


# -- the dynamic configuration -------------------------------------------------------------------------------


GOOD_CONFIG = {"ttl": 10, "loop_wait": 2, "retry_timeout": 4, "maximum_lag_on_failover": 1048576,
               "postgresql": {"use_pg_rewind": True, "parameters": {"max_connections": 100}}}


@pytest.mark.parametrize("config", [
    {"ttl": "abc"}, {"ttl": 1.5}, {"ttl": [10]}, {"loop_wait": True}, {"ttl": 10**30}, {"pause": "maybe"},
    {"synchronous_mode": {"on": 1}}, {"postgresql": []}, {"postgresql": {"parameters": [1]}},
    {"postgresql": {"pg_hba": "host all"}}, {"standby_cluster": "yes"}, {"master_start_timeout": "soon"},
    [1], "text", None])
def test_a_config_that_would_fall_back_to_defaults_is_bad(config: Any) -> None:
    value = parse.parse_config(json.dumps(config) if not isinstance(config, str) else config)
    assert isinstance(value, parse.Bad)


@settings(max_examples=200, deadline=None)
@given(config=SHAPED["config"] | s.dictionaries(s.text(max_size=8), JSON, max_size=4))
def test_parse_dynamic_is_total_and_bounded_on_what_etcd_may_hold(config: dict[str, Any]) -> None:
    """Even without the boundary in front of it (inf, NaN and huge integers included)."""
    dynamic, notes = parse_dynamic(config)
    low, high = DYNAMIC_INT_BOUNDS["ttl"]
    assert low <= dynamic.ttl <= high and 1 <= dynamic.loop_wait <= dynamic.ttl
    assert 0 < dynamic.retry_timeout <= dynamic.ttl and 0 <= dynamic.maximum_lag_on_failover < 2**63
    assert all(isinstance(n, str) and len(n) < 1000 for n in notes)


def test_a_good_config_passes_and_out_of_range_settings_are_parse_dynamics_to_clamp() -> None:
    assert parse.parse_config(json.dumps(GOOD_CONFIG)) == GOOD_CONFIG
    huge = parse.parse_config(json.dumps({**GOOD_CONFIG, "ttl": 10**9}))
    assert isinstance(huge, dict)
    dynamic, _notes = parse_dynamic(huge)
    assert math.isfinite(dynamic.ttl) and dynamic.ttl <= DYNAMIC_INT_BOUNDS["ttl"][1]


def test_a_rejected_config_history_sync_status_keeps_the_last_good_value() -> None:
    good = read(config=GOOD_CONFIG, history=[[1, 5, "x"]], sync={"leader": "n1", "sync_standby": "n2"},
                status={"optime": 99, "slots": {"n2": 5}}, failsafe={"n1": "http://h:1/patroni"},
                initialize="7300000000000000001", leader="n1", failover={"member": "n2"})
    bad = read(config='{"ttl": 1e400}', history="[1]", sync='{"leader": 5}', status='{"optime": "x"}',
               failsafe="[]", initialize="garbage", leader="\x00", failover='{"member": []}')
    assert bad.rejected >= {"config", "history", "sync", "status", "failsafe", "initialize", "leader", "failover"}
    kept = with_last_good(bad, good)
    assert (kept.config, kept.history, kept.sync, kept.status, kept.optime, kept.failsafe, kept.initialize) == \
        (good.config, good.history, good.sync, good.status, good.optime, good.failsafe, good.initialize)
    # Absent is the safe reading of these two: no lock holder we can name, no switchover request.
    assert kept.leader is None and kept.failover is None
    assert with_last_good(bad, None) is bad and with_last_good(good, bad) is good
    # Chained: a second bad read keeps what the first one kept.
    assert with_last_good(bad, kept).config == GOOD_CONFIG


# -- counting and logging -------------------------------------------------------------------------------------


def test_each_bad_value_is_counted_every_read_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    counter = parse.BadValues(memo=2)
    caplog.set_level(logging.WARNING, "hasup.dcs")
    for _ in range(3):
        build_cluster({"history": ("[1]", 1, None), "config": ("{", 2, None)}, 3, counter)
    assert counter.total == 6
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("ignoring the value of etcd key" in line for line in lines)
    assert any("history" in line for line in lines) and any("config" in line for line in lines)
    build_cluster({"sync": ("[", 1, None)}, 3, counter)  # the memo holds 2: the oldest (config's) goes
    build_cluster({"config": ("{", 2, None)}, 3, counter)
    assert len(caplog.records) == 4 and "config" in caplog.records[-1].getMessage()
    build_cluster({"config": ("{{", 2, None)}, 3, counter)  # another value of the same key: logged
    assert len(caplog.records) == 5


def test_a_logged_line_never_carries_the_value(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "hasup.dcs")
    build_cluster({"config": ('{"password": "s3cret", "ttl": "x"}', 1, None),
                   "members/n2": ('{"conn_url": "postgres://u:s3cret@h:1:2/x"}', 1, None)}, 2, parse.BadValues())
    assert caplog.records and "s3cret" not in caplog.text


def test_the_count_reaches_metrics_through_the_cluster_view() -> None:
    view = ipc.ClusterView(read_at=1.0, read_at_wall=1.0, leader=None, holds_lock=False, lock_valid_until=0.0,
                           members={}, config={}, history=(), optime=None, initialize=None, sync=None,
                           failover=None, paused=False, dcs_bad_values=7, cycle_errors=2)
    snap = snapshot.make_snapshot(snapshot.Identity("main", "n1"), None, view, None, now=2.0, now_wall=2.0)
    text = metrics.render(json.loads(snapshot.encode_snapshot(snap)), 2.0)
    assert 'hasup_dcs_bad_values_total{name="n1",scope="main"} 7.0' in text
    assert 'hasup_election_cycle_errors_total{name="n1",scope="main"} 2.0' in text
    assert "# TYPE hasup_dcs_bad_values_total counter" in text


def test_the_test_helpers_members_pass_the_boundary() -> None:
    for name in ("n1", "n2"):
        assert parse.member_problem(member(name).data) is None
