"""The member key a node publishes (Patroni's fields)."""

from __future__ import annotations

import yaml

from hasup.config import load_config_text
from hasup.election.member import member_data
from hasup.ipc import PgState

NODE = {"scope": "main", "name": "node1", "etcd": {"host": "127.0.0.1:2379"},
        "restapi": {"listen": "127.0.0.1:8008", "connect_address": "127.0.0.1:8008"},
        "postgresql": {"listen": "127.0.0.1:5432", "connect_address": "127.0.0.1:5432", "data_dir": "/tmp/d",
                       "authentication": {"superuser": {"username": "postgres"},
                                          "replication": {"username": "replicator"}}}}


def test_pause_flag_follows_the_cluster_for_patronictl_wait() -> None:
    cfg, _ = load_config_text(yaml.safe_dump(NODE))
    pg = PgState(state="running", role="primary", data_dir_empty=False, probe_ok=True, probe_at=1.0,
                 wal_position=100, timeline=1)
    paused = member_data(cfg, pg, paused=True)
    assert paused["pause"] is True
    assert "pause" not in member_data(cfg, pg)  # like Patroni: the key is absent, not false, when not paused
    assert paused["api_url"] == "http://127.0.0.1:8008/patroni" and paused["xlog_location"] == 100


def test_a_fresh_primary_says_its_checkpoint_after_promote_is_pending() -> None:
    # A Patroni replica waits for the flag to go before it rewinds against this leader: until the
    # first checkpoint on the new timeline, pg_rewind would see no fork.
    cfg, _ = load_config_text(yaml.safe_dump(NODE))
    fresh = PgState(state="running", role="primary", data_dir_empty=False, probe_ok=True, probe_at=1.0,
                    wal_position=100, timeline=3, checkpoint_timeline=2)
    assert member_data(cfg, fresh)["checkpoint_after_promote"] is False
    done = PgState(state="running", role="primary", data_dir_empty=False, probe_ok=True, probe_at=1.0,
                   wal_position=100, timeline=3, checkpoint_timeline=3)
    assert "checkpoint_after_promote" not in member_data(cfg, done)
    replica = PgState(state="running", role="replica", data_dir_empty=False, probe_ok=True, probe_at=1.0,
                      wal_position=100, timeline=3, checkpoint_timeline=2)
    assert "checkpoint_after_promote" not in member_data(cfg, replica)
