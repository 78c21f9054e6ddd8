"""The dynamic configuration's local cache and the leader writing back a missing config key."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from hasup.config.dynamic_cache import CACHE_FILE, MAX_CACHE_BYTES, read_cache, write_cache
from hasup.election import policy as ha
from tests.unit.test_ha import ME, SETTINGS, cluster, local, pg


def test_the_cache_round_trips_atomically_with_private_permissions(tmp_path: Path) -> None:
    assert read_cache(str(tmp_path)) == (None, None)  # none yet: nothing to say
    write_cache(str(tmp_path), {"ttl": 20, "postgresql": {"parameters": {"max_connections": 200}}})
    write_cache(str(tmp_path), {"ttl": 30, "pause": True})
    assert read_cache(str(tmp_path)) == ({"ttl": 30, "pause": True}, None)
    assert os.stat(tmp_path / CACHE_FILE).st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path)) == [CACHE_FILE]  # no temporary file left behind


def test_a_corrupt_cache_is_ignored_with_one_reason(tmp_path: Path) -> None:
    path = tmp_path / CACHE_FILE
    for content, why in ((b'{"ttl": 3', "not valid JSON"), (b"\xff\xfe", "not valid JSON"),
                         (b"[1, 2]", "not a non-empty JSON object"), (b"{}", "not a non-empty JSON object"),
                         (b"[" * 100_000 + b"]" * 100_000, "larger than"),
                         (b" " * (MAX_CACHE_BYTES + 1), "larger than")):
        path.write_bytes(content)
        data, note = read_cache(str(tmp_path))
        assert data is None and note is not None and why in note and "\n" not in note, (content[:10], note)


def test_a_failed_write_leaves_the_old_cache_and_no_temporary_file(tmp_path: Path) -> None:
    write_cache(str(tmp_path), {"ttl": 30})
    try:
        write_cache(str(tmp_path), {"bad": {1, 2}})  # a set is not JSON
    except TypeError:
        pass
    assert read_cache(str(tmp_path)) == ({"ttl": 30}, None)
    assert os.listdir(tmp_path) == [CACHE_FILE]


def test_the_leader_writes_back_a_missing_or_empty_config_key_and_no_one_else_does() -> None:
    leader = local(pg(role="primary"))
    for config in ({}, None):
        c = replace(cluster(leader="n1"), config=config)
        assert ha.RepublishConfig() in ha.decide(c, leader, ME, SETTINGS).actions
        replica_view = replace(cluster(leader="n2"), config=config)
        assert ha.RepublishConfig() not in ha.decide(replica_view, local(pg(upstream="n2")), ME, SETTINGS).actions
    assert ha.RepublishConfig() not in ha.decide(cluster(leader="n1"), leader, ME, SETTINGS).actions
    # A value that failed its parser is not missing: an operator's edit is not overwritten.
    rejected = replace(cluster(leader="n1"), config=None, rejected=frozenset({"config"}))
    assert ha.RepublishConfig() not in ha.decide(rejected, leader, ME, SETTINGS).actions
    # Written right after the lock and status: before anything that may stop the list.
    paused_gone = replace(cluster(leader="n1"), config={})
    assert ha.decide(paused_gone, leader, ME, SETTINGS).actions[:3] == (ha.RefreshLock(), ha.WriteStatus(),
                                                                         ha.RepublishConfig())


def test_the_cache_holds_json_as_patroni_writes_it(tmp_path: Path) -> None:
    write_cache(str(tmp_path), {"loop_wait": 10, "postgresql": {"use_slots": True}})
    assert json.loads((tmp_path / CACHE_FILE).read_text()) == {"loop_wait": 10, "postgresql": {"use_slots": True}}
