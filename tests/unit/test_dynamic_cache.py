"""The dynamic configuration's local cache and the leader writing back a missing config key."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from hasup.config import parse_dynamic
from hasup.config.dynamic_cache import CACHE_FILE, MAX_CACHE_BYTES, cache_path, read_cache, write_cache
from hasup.election import policy as ha
from hasup.election.executor import Executor
from hasup.election.reader import ClusterReader
from tests.unit.test_ha import ME, SETTINGS, cluster, local, pg
from tests.unit.test_host_checks import config as host_config


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


# -- the election worker's side: the reader keeps the cache, the executor writes the key back ----------


def reader_for(tmp_path: Path, cache: bytes | None = None, pg_version: bool = True) -> Any:
    cfg = host_config(tmp_path, **{"bootstrap.dcs": {"ttl": 20, "loop_wait": 3, "retry_timeout": 5}})
    os.makedirs(cfg.postgresql.data_dir)
    if pg_version:
        Path(cfg.postgresql.data_dir, "PG_VERSION").write_text("15\n")
    if cache is not None:
        Path(cfg.postgresql.data_dir, CACHE_FILE).write_bytes(cache)
    return ClusterReader(cfg, cast(Any, None)), cfg


def test_the_cached_configuration_is_in_force_until_etcd_is_read(tmp_path: Path) -> None:
    reader, _ = reader_for(tmp_path, json.dumps({"ttl": 40, "loop_wait": 5, "pause": True}).encode())
    assert (reader.dynamic.ttl, reader.dynamic.loop_wait, reader.dynamic.pause) == (40, 5, True)
    assert reader.last_config == {"ttl": 40, "loop_wait": 5, "pause": True}  # what a leader would write back


def test_a_corrupt_cache_is_said_once_and_bootstrap_dcs_holds(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "hasup.election"):
        reader, _ = reader_for(tmp_path, b'{"ttl": 40,')
    assert reader.dynamic.ttl == 20 and reader.last_config == {}
    said = [r.getMessage() for r in caplog.records if CACHE_FILE in r.getMessage()]
    assert len(said) == 1 and "not valid JSON" in said[0]


def test_the_cache_follows_etcd_once_the_data_directory_holds_a_cluster(tmp_path: Path) -> None:
    reader, cfg = reader_for(tmp_path, pg_version=False)
    reader.save_cache({"ttl": 30})
    assert not os.path.exists(cache_path(cfg.postgresql.data_dir))  # initdb and pg_basebackup want it empty
    Path(cfg.postgresql.data_dir, "PG_VERSION").write_text("15\n")
    reader.save_cache({"ttl": 30})
    assert read_cache(cfg.postgresql.data_dir) == ({"ttl": 30}, None)
    os.unlink(cache_path(cfg.postgresql.data_dir))
    reader.save_cache({"ttl": 30})  # unchanged: not written again every cycle
    assert not os.path.exists(cache_path(cfg.postgresql.data_dir))


class RecordingStore:
    def __init__(self) -> None:
        self.configs: list[dict[str, Any]] = []

    def set_config(self, config: dict[str, Any], index: int | None = None) -> bool:
        self.configs.append(config)
        return True


def test_the_executor_writes_back_the_configuration_in_force_else_bootstrap_dcs(tmp_path: Path) -> None:
    cfg = host_config(tmp_path, **{"bootstrap.dcs": {"ttl": 20, "loop_wait": 3, "retry_timeout": 5}})
    store = RecordingStore()
    known: dict[str, Any] = {"ttl": 40, "max_timelines_history": 7}

    def executor() -> Executor:
        return Executor(lambda: cfg, cast(Any, store), cast(Any, None), cast(Any, None), cast(Any, None),
                        lambda m: None, lambda: parse_dynamic({})[0], known_config=lambda: known)
    assert executor().run((ha.RepublishConfig(),), None)
    known = {}
    assert executor().run((ha.RepublishConfig(),), None)
    assert store.configs[0] == {"ttl": 40, "max_timelines_history": 7}
    assert store.configs[1]["ttl"] == 20 and store.configs[1]["loop_wait"] == 3
