"""hasupctl's pure parts: the member table, topology, role filters, output formats, config edits, settings."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from hasup.ctl import editing, output, views
from hasup.ctl.readiness import readiness
from hasup.ctl.settings import SettingsError, parse_dcs_url, settings_from_raw
from hasup.dcs.model import Cluster
from tests.unit.ctl_fakes import SCOPE, FakeStore, member_value, three_nodes

MB = 1024 * 1024


def cluster(**kw: Any) -> Cluster:
    store = FakeStore()
    three_nodes(store, **kw)
    return store.get_cluster()


def table(c: Cluster, fmt: str = "pretty", **kw: Any) -> list[dict[str, Any]]:
    columns, rows = views.member_table(c, SCOPE, fmt, **kw)
    return [dict(zip(columns, r, strict=True)) for r in rows]


def test_member_table_shows_role_state_timeline_and_receive_replay_positions() -> None:
    rows = table(cluster())
    assert [r["Member"] for r in rows] == ["node1", "node2", "node3"]
    assert [r["Role"] for r in rows] == ["Leader", "Replica", "Replica"]
    assert [r["State"] for r in rows] == ["running", "streaming", "streaming"]
    assert [r["Receive LSN"] for r in rows] == ["", "0/3200000", "0/2F00000"]  # 50 MB, 47 MB
    assert [r["Receive Lag"] for r in rows] == ["", 0, 3]
    assert [r["Replay LSN"] for r in rows] == ["", "0/3200000", "0/2F00000"]
    assert [r["Replay Lag"] for r in rows] == ["", 0, 3]
    assert rows[0]["Host"] == "127.0.0.1:5432" and rows[2]["Host"] == "127.0.0.1:5434"  # shared host: port shown
    assert list(rows[0]) == views.LIST_COLUMNS  # no optional column without a value


def test_machine_formats_name_the_cluster_first_and_optional_columns_appear_with_a_value() -> None:
    store = FakeStore()
    three_nodes(store)
    data = store.value("members/node2")
    data.update(pending_restart=True, tags={"nofailover": True},
                pending_restart_reason={"max_connections": {"old_value": "100", "new_value": "200"}},
                scheduled_restart={"schedule": "2030-01-01T03:00:00+00:00", "postgres_version": "15.9"})
    store.put("members/node2", data)
    rows = table(store.get_cluster(), "json")
    assert list(rows[0])[0] == "Cluster" and rows[0]["Cluster"] == SCOPE
    assert rows[1]["Pending restart"] == "*" and rows[0]["Pending restart"] == ""
    assert rows[1]["Pending restart reason"] == "max_connections: 100->200"
    assert table(store.get_cluster(), "tsv")[1]["Tags"] == "{nofailover: true}"  # YAML flow style
    assert table(store.get_cluster())[1]["Tags"] == "nofailover: true"  # block style in the box
    assert rows[1]["Scheduled restart"] == "2030-01-01T03:00:00+00:00 if version < 15.9"
    assert rows[1]["Tags"] == {"nofailover": True}
    assert "Tags" in table(cluster(), extended=True)[0]


def test_unknown_lag_and_the_standard_port_rule() -> None:
    store = FakeStore()
    store.put("members/a", {"conn_url": "postgres://10.0.0.1:5432/postgres", "state": "starting"})
    store.put("members/b", {"conn_url": "postgres://10.0.0.2:5432/postgres", "state": "running",
                            "xlog_location": 5})
    rows = table(store.get_cluster())
    assert [r["Host"] for r in rows] == ["10.0.0.1", "10.0.0.2"]  # all on 5432, distinct hosts
    # Only the flushed position is published: it counts as replayed when not streaming; without a status
    # optime no lag can be computed.
    assert [(r["Receive LSN"], r["Replay LSN"], r["Replay Lag"]) for r in rows] == [
        ("unknown", "unknown", ""), ("unknown", "0/5", "")]
    assert views.cluster_title(store.get_cluster(), SCOPE) == f"Cluster: {SCOPE} (uninitialized)"


def test_sync_standby_and_standby_leader_roles() -> None:
    c = cluster(config={"synchronous_mode": True})
    store = FakeStore()
    three_nodes(store, config={"synchronous_mode": True})
    store.put("sync", {"leader": "node1", "sync_standby": "node3"})
    assert [r["Role"] for r in table(store.get_cluster())] == ["Leader", "Replica", "Sync Standby"]
    assert table(c)[2]["Role"] == "Replica"  # no sync key: nobody is a sync standby
    quorum = FakeStore()
    three_nodes(quorum, config={"synchronous_mode": "quorum"})
    quorum.put("sync", {"leader": "node1", "sync_standby": "node2,node3", "quorum": 1})
    assert [r["Role"] for r in table(quorum.get_cluster())] == ["Leader", "Quorum Standby", "Quorum Standby"]
    standby = cluster(config={"standby_cluster": {"host": "10.0.0.9"}})
    assert table(standby)[0]["Role"] == "Standby Leader"
    assert views.members_with_role(standby, "primary") == []
    assert [m.name for m in views.members_with_role(standby, "standby-leader")] == ["node1"]


def test_role_filters_and_leader_first() -> None:
    c = cluster(leader="node2")
    assert [m.name for m in views.members_with_role(c, "leader")] == ["node2"]
    assert [m.name for m in views.members_with_role(c, "primary")] == ["node2"]
    assert views.members_with_role(c, "standby-leader") == []
    assert [m.name for m in views.members_with_role(c, "replica")] == ["node1", "node3"]
    assert [m.name for m in views.members_with_role(c, "any")] == ["node1", "node2", "node3"]
    assert [m.name for m in views.leader_first(c)] == ["node2", "node1", "node3"]
    assert views.members_with_role(cluster(leader=None), "leader") == []


def test_topology_nests_replicas_under_their_upstream() -> None:
    store = FakeStore()
    three_nodes(store)
    store.put("members/node3", member_value("node3", None, 5434, tags={"replicatefrom": "node2"}))
    c = store.get_cluster()
    assert [(level, m.name) for level, m in views.topology(c)] == [(0, "node1"), (1, "node2"), (2, "node3")]
    rows = table(c, "topology", nested=True)
    assert [r["Member"] for r in rows] == ["node1", "+ node2", "  + node3"]
    # A replicatefrom cycle is still shown, not lost.
    store.put("members/node2", member_value("node2", None, 5433, tags={"replicatefrom": "node3"}))
    assert sorted(m.name for _, m in views.topology(store.get_cluster())) == ["node1", "node2", "node3"]


def test_history_rows_are_padded_and_service_lines_name_pause_and_schedule() -> None:
    store = FakeStore()
    three_nodes(store, config={"pause": True})
    store.put("history", [[1, 100, "no recovery target specified"], [2, 200, "x", "2030-01-01", "node2"]])
    store.put("failover", {"leader": "node1", "member": "node2", "scheduled_at": "2030-01-01T03:00:00+00:00"})
    c = store.get_cluster()
    assert views.history_rows(c) == [[1, 100, "no recovery target specified", "", ""],
                                     [2, 200, "x", "2030-01-01", "node2"]]
    lines = views.service_lines(c)
    assert lines[0] == "Maintenance mode: on"
    assert lines[1] == "Switchover scheduled at: 2030-01-01T03:00:00+00:00"
    assert lines[2].strip() == "from: node1" and lines[3].strip() == "to: node2"


def test_dsn_and_connection_parameters() -> None:
    c = cluster()
    assert views.dsn(c.members["node2"]) == "host=127.0.0.1 port=5433"
    assert views.conn_params(c.members["node2"]) == {"host": "127.0.0.1", "port": 5433, "dbname": "postgres"}


# -- output ------------------------------------------------------------------------------------------


def test_pretty_list_header_matches_patronictl_4() -> None:
    columns, _rows = views.member_table(cluster(), SCOPE, "pretty")
    assert views.header_names(columns, "pretty") == ["Member", "Host", "Role", "State", "TL", "Receive LSN", "Lag",
                                                     "Replay LSN", "Lag"]
    tsv, _rows = views.member_table(cluster(), SCOPE, "tsv", extended=True)
    assert views.header_names(tsv, "tsv") == ["Cluster"] + views.LIST_COLUMNS + list(views.OPTIONAL_COLUMNS)


def test_a_long_restart_reason_is_hidden_in_the_box_and_several_lines_frame_every_row() -> None:
    store = FakeStore()
    three_nodes(store)
    data = store.value("members/node2")
    data["pending_restart_reason"] = {"shared_buffers": {"old_value": "128MB", "new_value": "256MB"},
                                      "shared_preload_libraries": {"old_value": "", "new_value": "x" * 40}}
    store.put("members/node2", data)
    rows = table(store.get_cluster())
    assert rows[1]["Pending restart reason"].split("\n") == ["shared_buffers: 128MB->256MB",
                                                             "shared_preload_libraries: [hidden - too long]"]
    assert table(store.get_cluster(), "json")[1]["Pending restart reason"].endswith("x" * 40)
    columns, raw = views.member_table(store.get_cluster(), SCOPE, "pretty")
    lines = output.render(columns, raw, "pretty", "Cluster: c (1)")
    assert len({len(line) for line in lines}) == 1
    assert sum(line.startswith("+-") for line in lines) == 1 + 3  # under the header, then after each row
    assert any("| shared_preload_libraries: [hidden - too long] |" in line for line in lines)


def test_render_in_every_format() -> None:
    columns, rows = ["Member", "TL", "Tags"], [["a", 1, {"x": 1}], ["bb", "", ""]]
    pretty = output.render(columns, rows, "pretty", "Cluster: c (1)", right=("TL",))
    assert pretty[0].startswith("+ Cluster: c (1) ") and pretty[0].endswith("+")
    assert pretty[1] == "| Member | TL | Tags |" and pretty[3] == "| a      |  1 | x: 1 |"
    assert len({len(line) for line in pretty}) == 1
    assert output.render(columns, rows, "tsv") == ["Member\tTL\tTags", "a\t1\tx: 1", "bb\t\t"]
    assert json.loads(output.render(columns, rows, "json")[0]) == [{"Member": "a", "TL": 1, "Tags": {"x": 1}},
                                                                   {"Member": "bb"}]
    assert yaml.safe_load("\n".join(output.render(columns, rows, "yaml"))) == [
        {"Member": "a", "TL": 1, "Tags": {"x": 1}}, {"Member": "bb"}]


# -- editing -----------------------------------------------------------------------------------------


def test_set_values_follows_dotted_paths_and_null_removes() -> None:
    config = {"ttl": 30, "postgresql": {"parameters": {"max_connections": 100}, "use_slots": True}}
    changed = editing.set_values(config, ["ttl=40", "postgresql.use_slots=null", "a.b.c=[1, 2]",
                                          "postgresql.parameters.pg_stat_statements.max=5000"])
    assert changed == {"ttl": 40, "a": {"b": {"c": [1, 2]}},
                       "postgresql": {"parameters": {"max_connections": 100, "pg_stat_statements.max": 5000}}}
    assert config["ttl"] == 30  # the input is not modified
    assert editing.set_values({"a": {"b": 1}}, ["a.b=null"]) == {}  # emptied sections go too
    assert editing.set_values({}, editing.pg_pairs(["work_mem=8MB"])) == {
        "postgresql": {"parameters": {"work_mem": "8MB"}}}
    for bad in ("novalue", "=3", "a..b=1"):
        with pytest.raises(editing.EditError):
            editing.set_values({}, [bad])


def test_merge_yaml_patches_and_the_diff_shows_the_change() -> None:
    before = {"ttl": 30, "postgresql": {"parameters": {"a": 1, "b": 2}}}
    after = editing.merge_yaml(before, "postgresql:\n  parameters:\n    a: null\n    c: 3\nttl: 20\n", "f")
    assert after == {"ttl": 20, "postgresql": {"parameters": {"b": 2, "c": 3}}}
    diff = editing.diff_lines(editing.as_yaml(before), editing.as_yaml(after))
    assert "-ttl: 30" in diff and "+ttl: 20" in diff and "+    c: 3" in diff
    with pytest.raises(editing.EditError, match="expected a mapping"):
        editing.merge_yaml(before, "- 1\n", "f")
    with pytest.raises(editing.EditError, match="invalid YAML"):
        editing.parse_yaml_mapping("a: [", "f")


# -- settings ----------------------------------------------------------------------------------------


def test_dcs_url_forms() -> None:
    etcd, ns = parse_dcs_url("etcd://10.0.0.5:2399/db")
    assert etcd.hosts == (("10.0.0.5", 2399),) and etcd.protocol == "http" and ns == "db"
    etcd, ns = parse_dcs_url("10.0.0.5")
    assert etcd.hosts == (("10.0.0.5", 2379),) and ns is None
    assert parse_dcs_url("https://h:1").__getitem__(0).protocol == "https"
    for bad, why in (("consul://h:8500", "etcd3 \\(v3 API"), ("etcd://h:x", "not a number"), ("ftp://h", "scheme")):
        with pytest.raises(SettingsError, match=why):
            parse_dcs_url(bad)


def test_settings_take_ctl_auth_and_tls_with_restapi_fallbacks() -> None:
    raw = {"scope": "s", "namespace": "/ns/", "etcd": {"hosts": ["a:1", "b:2"]},
           "restapi": {"authentication": {"username": "r", "password": "rp"}, "cafile": "/ca", "certfile": "/c",
                       "keyfile": "/k"},
           "bootstrap": {"dcs": {"loop_wait": 3, "retry_timeout": "4"}}}
    s = settings_from_raw(raw)
    assert (s.scope, s.namespace, s.etcd.hosts, s.loop_wait, s.retry_timeout) == ("s", "ns", (("a", 1), ("b", 2)),
                                                                                 3, 4)
    assert (s.username, s.password) == ("r", "rp")
    assert (s.tls.cacert, s.tls.certfile, s.tls.keyfile, s.tls.insecure) == ("/ca", "/c", "/k", False)
    raw["ctl"] = {"authentication": {"username": "c", "password": "cp"}, "cacert": "/ctlca", "certfile": "/cc",
                  "insecure": True}
    s = settings_from_raw(raw, dcs_url="etcd://x:9/other")
    assert (s.username, s.password, s.tls.cacert, s.tls.certfile, s.tls.keyfile) == ("c", "cp", "/ctlca", "/cc",
                                                                                     None)
    assert s.tls.insecure and s.etcd.hosts == (("x", 9),) and s.namespace == "other"
    assert "cp" not in repr(s)
    with pytest.raises(SettingsError, match="etcd3 \\(v3 API"):
        settings_from_raw({"consul": {"host": "h"}})
    with pytest.raises(SettingsError, match="etcd"):
        settings_from_raw({"etcd": {"port": 1}})
    assert settings_from_raw({}).etcd.hosts == (("127.0.0.1", 2379),)


def test_check_shows_each_nodes_lease_protection_and_last_fence_and_list_keeps_patronictls_columns() -> None:
    store = FakeStore()
    three_nodes(store)
    for name, protection in (("node1", "software fence"), ("node2", "device"), ("node3", "")):
        data = store.value(f"members/{name}")
        if protection:
            data["lease_protection"] = protection
        if name == "node1":
            data["last_fence"] = "2026-12-05T03:15:00+00:00"
        store.put(f"members/{name}", data)
    assert "Protection" not in table(store.get_cluster(), extended=True)[0]
    checks, _ = readiness(store.get_cluster(), None, 1.0)
    assert [c.protection for c in checks] == ["software fence, fenced 2026-12-05T03:15:00+00:00", "device", ""]


def test_the_member_key_carries_the_protection_from_the_watchdog_state() -> None:
    from hasup import ipc
    from hasup.election.member import with_protection

    state = ipc.WatchdogState("off", False, None, None, None, protection="software fence", fences=1,
                              last_fence=1767225600.0)
    assert with_protection({}, state) == {"lease_protection": "software fence",
                                          "last_fence": "2026-01-01T00:00:00+00:00"}
    assert with_protection({}, None) == {}
