"""Synchronous replication steps (hasup.election.sync) and their use by the leader and the race (policy)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from hasup.election import policy as ha
from hasup.election import sync
from tests.unit.test_ha import ME, SETTINGS, cluster, local, member, peer, pg

SYNC = replace(SETTINGS, synchronous_mode=True)


def rows(*names, sync_names=()):
    return tuple({"application_name": n, "state": "streaming", "sync_state": "sync" if n in sync_names else "async"}
                 for n in names)


def test_a_new_standby_enters_postgresql_first_and_the_key_once_it_is_sync():
    first = sync.next_step(key=(), configured=(), synchronous=set(), eligible=["n2", "n3"], count=1, strict=False)
    assert first == sync.SyncStep(key=(), names=("n2",))
    second = sync.next_step(key=(), configured=("n2",), synchronous={"n2"}, eligible=["n2", "n3"], count=1,
                            strict=False)
    assert second == sync.SyncStep(key=("n2",), names=("n2",))
    steady = sync.next_step(("n2",), ("n2",), {"n2"}, ["n3", "n2"], 1, False)
    assert steady == sync.SyncStep(("n2",), ("n2",))  # no churn for a more advanced newcomer


def test_a_lost_standby_leaves_the_key_first_and_its_replacement_waits_for_postgresql():
    step = sync.next_step(key=("n2",), configured=("n2",), synchronous=set(), eligible=["n3"], count=1, strict=False)
    assert step == sync.SyncStep(key=(), names=("n3",))
    nobody = sync.next_step(("n2",), ("n2",), set(), [], 1, strict=False)
    assert nobody == sync.SyncStep((), ())  # asynchronous, and the key records no standby
    strict = sync.next_step(("n2",), ("n2",), set(), [], 1, strict=True)
    assert strict == sync.SyncStep((), sync.STRICT_ANY)  # writes wait for anyone


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sets(st.sampled_from("abcd")), st.sets(st.sampled_from("abcd"))), max_size=12),
       st.integers(1, 3), st.booleans())
def test_the_key_never_names_a_standby_postgresql_does_not_wait_for(history, count, strict):
    key: tuple[str, ...] = ()
    configured: tuple[str, ...] = ()
    for eligible, synchronous in history:
        step = sync.next_step(key, configured, synchronous & set(configured), sorted(eligible), count, strict)
        # The key is written first: at that moment PostgreSQL still runs with `configured`.
        assert set(step.key) <= set(configured) | set(key)
        assert set(step.key) - set(key) <= set(configured)
        # Then PostgreSQL changes: it must still wait for everything the key names.
        assert set(step.key) <= set(step.names) or step.names == sync.STRICT_ANY and not step.key
        key, configured = step.key, step.names
        assert len(key) <= count


def test_settings_round_trip():
    value = sync.standby_names_setting(("n2", 'we"ird'))
    assert value == 'FIRST 2 ("n2", "we""ird")'
    assert sync.parse_setting(value) == ("n2", 'we"ird')
    assert sync.standby_names_setting(sync.STRICT_ANY) == "*" and sync.parse_setting("*") == sync.STRICT_ANY
    assert sync.parse_setting("") == () and sync.standby_names_setting(()) == ""


def test_the_leader_takes_one_step_per_cycle():
    c = cluster(leader="n1")
    primary = replace(pg(role="primary"), replication=rows("n2", "n3"), sync_standby_names="")
    d = ha.decide(c, local(primary), ME, SYNC)
    assert ha.WriteSync(()) in d.actions and ha.SetSyncStandbys('FIRST 1 ("n2")') in d.actions
    assert d.actions.index(ha.WriteSync(())) < d.actions.index(ha.SetSyncStandbys('FIRST 1 ("n2")'))
    recorded = replace(c, sync={"leader": "n1", "sync_standby": None})
    now_sync = replace(primary, replication=rows("n2", "n3", sync_names=("n2",)), sync_standby_names='FIRST 1 ("n2")')
    d = ha.decide(recorded, local(now_sync), ME, SYNC)
    assert ha.WriteSync(("n2",)) in d.actions and not any(isinstance(a, ha.SetSyncStandbys) for a in d.actions)
    settled = replace(c, sync={"leader": "n1", "sync_standby": "n2"})
    d = ha.decide(settled, local(now_sync), ME, SYNC)
    assert not any(isinstance(a, ha.WriteSync | ha.SetSyncStandbys) for a in d.actions)
    assert ha.ClearSync() in ha.decide(settled, local(now_sync), ME, SETTINGS).actions  # mode turned off


def test_nosync_and_nofailover_members_are_never_synchronous():
    c = cluster(leader="n1")
    quiet = replace(member("n2"), data={**member("n2").data, "tags": {"nosync": True}})
    c = replace(c, members={**c.members, "n2": quiet})
    assert sync.candidates(rows("n2", "n3"), c, "n1") == ["n3"]


def test_only_a_recorded_synchronous_standby_may_take_over():
    c = replace(cluster(leader=None), sync={"leader": "n9", "sync_standby": "n2"})
    d = ha.decide(c, local(pg()), ME, SYNC)  # n1 is not recorded
    assert ha.AcquireLock() not in d.actions and "not a synchronous standby" in d.reason
    n2 = ha.Node("n2")
    # n1 (asynchronous, further ahead) does not hold n2 back: it may not take over anyway.
    d = ha.decide(c, ha.Local(pg(), True, "", {"n1": peer("n1", wal=9000), "n3": peer("n3")}), n2, SYNC)
    assert ha.AcquireLock() in d.actions
    assert ha.AcquireLock() in ha.decide(c, local(pg()), ME, SETTINGS).actions  # asynchronous mode: anyone


def test_candidates_come_most_advanced_first():
    c = cluster(leader="n1")
    behind = member("n2", wal=100)
    ahead = member("n3", wal=9000)
    c = replace(c, members={**c.members, "n2": behind, "n3": ahead})
    assert sync.candidates(rows("n2", "n3"), c, "n1") == ["n3", "n2"]
    assert sync.candidates(rows("n1", "n2"), c, "n1") == ["n2"]  # never ourselves
