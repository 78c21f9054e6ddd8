"""Replication slots on a live three-node cluster with use_slots (docs/operations.md, "Replication slots").

One cluster, tests in order: member slots on the leader, an ignored
change-data-capture slot next to a stray one, a removed member, a failover.
"""

from __future__ import annotations

import json
import signal
import urllib.request

import pytest

from tests.harness import Node, TestCluster, wait_for

DCS = {
    "ttl": 10, "loop_wait": 2, "retry_timeout": 4, "maximum_lag_on_failover": 1048576,
    "member_slots_ttl": 0,  # drop a vanished member's slot at once (the default keeps it 30 minutes)
    "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": {"wal_level": "logical"}},
    "slots": {"perm_phys": {"type": "physical"},
              "perm_logical": {"type": "logical", "database": "postgres", "plugin": "pgoutput"}},
    "ignore_slots": [{"name": "cdc_slot"}, {"type": "logical", "plugin": "test_decoding"}],
}


@pytest.fixture(scope="module")
def tc():
    c = TestCluster(3, dcs=DCS)
    with c:  # starts etcd; destroys everything on the way out
        c.start_all()
        yield c


def slots_on(node: Node) -> dict[str, tuple[str, bool]]:
    """{slot: (type, active)} of the node's non-temporary slots."""
    rows = node.sql("SELECT slot_name, slot_type, active FROM pg_replication_slots WHERE NOT temporary")
    return {name: (kind, active) for name, kind, active in rows}


def restart_lsns(node: Node) -> dict[str, int]:
    """{slot: restart_lsn} of the node's member slots (the permanent ones have no consumer here)."""
    rows = node.sql("SELECT slot_name, restart_lsn - '0/0' FROM pg_replication_slots "
                    "WHERE slot_name LIKE 'node%%' AND NOT temporary")
    return {name: int(lsn) for name, lsn in rows}


def streaming_through_slots(node: Node) -> dict[str, str]:
    """{application_name: slot} for each walsender that streams through a slot."""
    rows = node.sql("SELECT r.application_name, s.slot_name FROM pg_stat_replication r "
                    "JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE r.state = 'streaming'")
    return dict(rows)


def having(found: dict, names: set[str]) -> dict | None:
    return found if names <= set(found) else None


def delete_key(tc: TestCluster, rel: str) -> None:
    req = urllib.request.Request(f"{tc.etcd.url}/v2/keys{tc.key(rel)}", method="DELETE")
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=3) as r:
        r.read()


def status_key(tc: TestCluster) -> dict:
    value = tc.etcd.value(tc.key("status"))
    return json.loads(value) if value else {}


def test_leader_keeps_one_active_slot_per_replica_and_the_permanent_ones(tc):
    leader = tc.wait_leader(30)
    replicas = sorted(n.name for n in tc.nodes if n is not leader)
    # Each replica streams through the slot named after it.
    wait_for(lambda: streaming_through_slots(leader) == {r: r for r in replicas}, 60,
             "every replica streaming through its slot")
    slots = wait_for(lambda: having(slots_on(leader), {"perm_phys", "perm_logical"}), 30,
                     "the permanent slots on the leader")
    assert sorted(n for n, (kind, active) in slots.items() if kind == "physical" and active) == replicas
    assert slots == {**{r: ("physical", True) for r in replicas},
                     "perm_phys": ("physical", False), "perm_logical": ("logical", False)}
    # /status carries the positions a replica advances its copies to, and the member slots kept.
    status = wait_for(lambda: (s := status_key(tc)) and having(s.get("slots", {}), {*replicas, "perm_phys"}) and s,
                      30, "slot positions in /status")
    # As Patroni's leader: its own slot too, so a crash of the leader keeps its slot on the others.
    assert status["retain_slots"] == sorted(n.name for n in tc.nodes) and leader.name in status["slots"]
    assert all(isinstance(v, int) for v in status["slots"].values())
    # Replicas that may be promoted hold copies of the other members' and the permanent physical slots.
    for replica in (n for n in tc.nodes if n is not leader):
        want = {n.name for n in tc.nodes if n is not replica} | {"perm_phys"}
        wait_for(lambda r=replica, w=want: set(slots_on(r)) == w, 30, f"slot copies on {replica.name}")
    # ... and move them along with the leader's record, so a new leader keeps the WAL they need.
    leader.sql("CREATE TABLE slot_test AS SELECT generate_series(1, 1000) AS v")
    written = leader.sql("SELECT pg_current_wal_flush_lsn() - '0/0'")[0][0]
    for replica in (n for n in tc.nodes if n is not leader):
        wait_for(lambda r=replica: min(restart_lsns(r).values()) >= written, 30,
                 f"the member slot copies on {replica.name} to advance past {written}")


def test_ignored_slots_stay_while_a_stray_one_is_dropped(tc):
    leader = tc.wait_leader(30)
    leader.sql("SELECT pg_create_logical_replication_slot('cdc_slot', 'pgoutput')")
    leader.sql("SELECT pg_create_logical_replication_slot('cdc_decoding', 'test_decoding')")
    leader.sql("SELECT pg_create_physical_replication_slot('stray', true)")
    wait_for(lambda: "stray" not in slots_on(leader), 30, "the stray slot to be dropped")
    assert {"cdc_slot", "cdc_decoding"} <= set(slots_on(leader))
    assert "dropped replication slot stray" in leader.log_text()


def test_a_removed_member_loses_its_slot_and_gets_it_back(tc):
    leader = tc.wait_leader(30)
    gone = next(n for n in tc.nodes if n is not leader)
    other = next(n for n in tc.nodes if n is not leader and n is not gone)
    gone.stop()
    delete_key(tc, f"members/{gone.name}")
    wait_for(lambda: gone.name not in slots_on(leader), 30, f"{gone.name}'s slot to be dropped on the leader")
    wait_for(lambda: gone.name not in slots_on(other), 30, f"{gone.name}'s slot copy to be dropped on {other.name}")
    assert {other.name, "perm_phys", "perm_logical", "cdc_slot", "cdc_decoding"} <= set(slots_on(leader))
    # Back in the cluster: the slot is made again as soon as its member key is, and it streams through it.
    gone.start()
    wait_for(lambda: streaming_through_slots(leader) == {other.name: other.name, gone.name: gone.name}, 60,
             f"{gone.name} streaming through its slot again")


def test_a_cascading_member_streams_through_its_slot_on_the_replica_it_follows(tc):
    leader = tc.wait_leader(30)
    source, cascading = sorted((n for n in tc.nodes if n is not leader), key=lambda n: n.name)
    cascading.extra["tags.replicatefrom"] = source.name
    cascading.prepare()
    cascading.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: streaming_through_slots(source) == {cascading.name: cascading.name}, 60,
             f"{cascading.name} streaming from {source.name} through its slot")
    wait_for(lambda: streaming_through_slots(leader) == {source.name: source.name}, 30,
             f"only {source.name} streaming from the leader")
    # The leader's slot for the cascading member is idle, yet it holds no WAL back.
    leader.sql("CREATE TABLE cascade_test AS SELECT generate_series(1, 1000) AS v")
    written = leader.sql("SELECT pg_current_wal_flush_lsn() - '0/0'")[0][0]
    wait_for(lambda: restart_lsns(leader)[cascading.name] >= written, 30,
             f"the leader's slot for {cascading.name} to follow it past {written}")


def test_after_a_failover_the_new_leader_has_the_permanent_and_member_slots(tc):
    old = tc.wait_leader(30)
    old.kill_tree()
    new = tc.wait_leader(60, exclude=old.name)
    survivor = next(n for n in tc.nodes if n is not old and n is not new)
    # The permanent slots are there (the logical one made anew: PostgreSQL 15 cannot copy it to a standby).
    wait_for(lambda: {"perm_phys", "perm_logical"} <= set(slots_on(new)), 30, "permanent slots on the new leader")
    assert slots_on(new)["perm_logical"][0] == "logical"
    # The remaining replica streams through its own slot.  The old leader's member key expired with
    # the leader key, and member_slots_ttl is 0 here: its slot goes too.
    wait_for(lambda: streaming_through_slots(new) == {survivor.name: survivor.name}, 60,
             f"{survivor.name} streaming from {new.name} through its slot")
    wait_for(lambda: not tc.member(old.name) and old.name not in slots_on(new), 30,
             f"{old.name}'s slot to go with its member key")
    # An ignored slot made on the new leader outlives a reconcile that drops a stray one.
    new.sql("SELECT pg_create_logical_replication_slot('cdc_slot', 'pgoutput')")
    new.sql("SELECT pg_create_physical_replication_slot('stray2', true)")
    wait_for(lambda: "stray2" not in slots_on(new), 30, "the stray slot to be dropped on the new leader")
    assert "cdc_slot" in slots_on(new)
