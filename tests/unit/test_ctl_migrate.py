"""hasupctl migrate-dcs: copy a paused cluster's lasting keys to another keyspace, refuse anything risky."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from hasup.ctl.base import Seams, cli
from hasup.ctl.settings import CtlSettings
from tests.unit.ctl_fakes import SCOPE, FakeClock, FakeStore, three_nodes


@pytest.fixture
def source() -> FakeStore:
    store = FakeStore()
    three_nodes(store, config={"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "pause": True})
    store.put("sync", {"leader": "node1", "sync_standby": "node2"})
    return store


def write(path: Path, section: dict[str, object]) -> str:
    path.write_text(yaml.safe_dump({"scope": SCOPE, **section}))
    return str(path)


def migrate(tmp_path: Path, source: FakeStore, target: FakeStore, *args: str) -> Result:
    old = write(tmp_path / "old.yml", {"etcd": {"host": "127.0.0.1:2379"}})
    new = write(tmp_path / "new.yml", {"etcd3": {"hosts": ["127.0.0.1:2379", "127.0.0.2:2379"]}})

    def store(settings: CtlSettings, _scope: str) -> FakeStore:
        return target if settings.etcd.api_version == 3 else source

    clock = FakeClock()
    return CliRunner().invoke(cli, ["-c", old, "migrate-dcs", "--to", new, *args],
                              obj=Seams(store=store, clock=clock, sleep=clock.sleep), catch_exceptions=False)


def test_the_lasting_keys_are_copied_config_first_and_nothing_the_nodes_make(tmp_path, source):
    target = FakeStore()
    result = migrate(tmp_path, source, target)
    assert result.exit_code == 0, result.output
    assert [key for key, _v, _i in target.writes] == ["config", "initialize", "history", "status", "sync"]
    for key in ("config", "initialize", "history", "status", "sync"):
        assert target.nodes[key][0] == source.nodes[key][0]
    assert "leader" not in target.nodes and not any(k.startswith("members/") for k in target.nodes)
    assert "(etcd3)" in result.output and "hasupctl resume" in result.output


def test_a_cluster_that_is_not_paused_is_refused(tmp_path, source):
    source.put("config", {"ttl": 30})
    target = FakeStore()
    result = migrate(tmp_path, source, target)
    assert result.exit_code != 0 and "pause the cluster first" in result.stderr
    assert target.writes == []


def test_keys_already_in_the_target_are_kept_unless_forced(tmp_path, source):
    target = FakeStore()
    target.put("config", {"ttl": 20})
    result = migrate(tmp_path, source, target)
    assert result.exit_code != 0 and "already has 1 keys" in result.stderr and "--force" in result.stderr
    assert target.writes == []
    assert migrate(tmp_path, source, target, "--force").exit_code == 0
    assert target.nodes["config"][0] == source.nodes["config"][0]


def test_the_same_keyspace_and_an_empty_source_are_refused(tmp_path, source):
    old = write(tmp_path / "same.yml", {"etcd": {"host": "127.0.0.1:2379"}})
    clock = FakeClock()
    result = CliRunner().invoke(cli, ["-c", old, "migrate-dcs", "--to", old],
                                obj=Seams(store=lambda _s, _c: source, clock=clock, sleep=clock.sleep))
    assert result.exit_code != 0 and "already" in result.stderr
    empty = migrate(tmp_path, FakeStore(), FakeStore())
    assert empty.exit_code != 0 and "has no keys" in empty.stderr
