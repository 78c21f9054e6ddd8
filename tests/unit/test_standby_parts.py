"""The standby cluster outside the policy: recovery settings, member key, REST roles, /config checks,
and hasupctl demote-cluster / promote-cluster (hasup.config.standby and its users)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hasup.api import status as st
from hasup.api.admin import patch_config, stored_problems
from hasup.api.health import health_code
from hasup.config import DynamicConfig
from hasup.config.standby import REMOTE, described, is_standby, remote_address, remote_url
from hasup.election.member import member_data
from tests.unit.ctl_fakes import FakeApi, FakeClock, FakeStore, Request
from tests.unit.test_api_health import NOW, leader_view, pg_replica, snap, view
from tests.unit.test_api_worker import make_config
from tests.unit.test_ctl_commands import apis, config_file, run, single_error_line, store  # noqa: F401
from tests.unit.test_lifecycle import FakePostmaster, lifecycle

SECTION = {"host": "10.0.0.9", "port": 5433, "primary_slot_name": "dr_site", "restore_command": "cp /a/%f %p",
           "archive_cleanup_command": "pg_archivecleanup /a %r", "recovery_min_apply_delay": "5min"}


def test_the_section_names_the_remote() -> None:
    assert is_standby(SECTION) and not is_standby({}) and not is_standby({"primary_slot_name": "x"})
    assert remote_address(SECTION) == ("10.0.0.9", 5433) and described(SECTION) == "10.0.0.9:5433"
    assert remote_url({"host": "h"}) == "postgres://h:5432/postgres"
    assert remote_address({"restore_command": "cp /a/%f %p"}) is None
    assert "/" in REMOTE  # never a member name (hasup.dcs.parse.valid_name)


def conf_of(tmp_path: Path, section: dict[str, Any] | None, leader: str | None, url: str | None) -> str:
    lc = lifecycle(tmp_path, DynamicConfig(standby_cluster=section), FakePostmaster(stops=True))
    lc.cfg = replace(lc.cfg, postgresql=replace(lc.cfg.postgresql, pgpass=str(tmp_path / "pgpass")))
    lc.write_config(leader, url, standby=True)
    assert (tmp_path / "standby.signal").exists() and lc.following == leader
    return (tmp_path / "postgresql.conf").read_text()


def test_the_standby_leader_streams_from_the_remote_with_its_settings(tmp_path: Path) -> None:
    text = conf_of(tmp_path, SECTION, REMOTE, "postgres://ignored:1/postgres")
    conninfo = next(line for line in text.splitlines() if line.startswith("primary_conninfo"))
    assert "host=10.0.0.9 port=5433 user=replicator" in conninfo and "password" not in conninfo
    for line in ("primary_slot_name = 'dr_site'", "restore_command = 'cp /a/%f %p'",
                 "archive_cleanup_command = 'pg_archivecleanup /a %r'", "recovery_min_apply_delay = '5min'",
                 "recovery_target_timeline = 'latest'"):
        assert line in text.splitlines(), line


def test_the_other_members_cascade_with_the_archive_but_no_delay(tmp_path: Path) -> None:
    text = conf_of(tmp_path, SECTION, "node2", "postgres://127.0.0.1:5434/postgres")
    assert "host=127.0.0.1 port=5434" in text and "restore_command = 'cp /a/%f %p'" in text
    assert "recovery_min_apply_delay" not in text and "dr_site" not in text
    plain = conf_of(tmp_path, None, "node2", "postgres://127.0.0.1:5434/postgres")
    assert "restore_command" not in plain


def test_the_member_key_says_standby_leader_only_for_the_lock_holders_replica() -> None:
    cfg = make_config(1)
    assert member_data(cfg, pg_replica(), standby_leader=True)["role"] == "standby_leader"
    assert member_data(cfg, pg_replica(), standby_leader=True)["replication_state"] == "streaming"
    assert member_data(cfg, pg_replica())["role"] == "replica"
    primary = replace(pg_replica(), role="primary")  # a primary being demoted is still a primary
    assert member_data(cfg, primary, standby_leader=True)["role"] == "primary"


def test_rest_roles_in_a_standby_cluster() -> None:
    config = {"ttl": 30, "standby_cluster": {"host": "10.0.0.9", "port": 5433}}
    leader = snap(pg_replica(), leader_view(config=config))
    assert st.build_status(leader, NOW)["role"] == "standby_leader"
    codes = {p: health_code(p, {}, leader, NOW) for p in ("/standby-leader", "/primary", "/replica", "/leader")}
    assert codes == {"/standby-leader": 200, "/primary": 503, "/replica": 503, "/leader": 200}
    member = snap(pg_replica(), view(config=config))
    assert st.build_status(member, NOW)["role"] == "replica"
    assert health_code("/replica", {}, member, NOW) == 200 and health_code("/standby-leader", {}, member, NOW) == 503
    # Without the section (or with only refinements) the lock holder is no standby leader.
    refined = snap(pg_replica(), leader_view(config={"standby_cluster": {"primary_slot_name": "x"}}))
    assert st.build_status(refined, NOW)["role"] == "replica"


def test_config_patches_add_and_remove_the_section_and_bad_values_are_refused() -> None:
    current = {"ttl": 30}
    added = patch_config(current, {"standby_cluster": {"host": "10.0.0.9", "port": 5433}})
    assert added["standby_cluster"] == {"host": "10.0.0.9", "port": 5433} and stored_problems(current, added) == []
    assert "standby_cluster" not in patch_config(added, {"standby_cluster": None})
    bad = patch_config(current, {"standby_cluster": {"host": "10.0.0.9", "port": 0}})
    assert stored_problems(current, bad) == ["config.standby_cluster: port: must be at least 1, got 0"]


# -- hasupctl ---------------------------------------------------------------------------------------


def _become(store: FakeStore, role: str, config: dict[str, Any]) -> None:  # noqa: F811
    store.put("config", config)
    store.put("members/node1", {**store.value("members/node1"), "role": role})


def test_demote_cluster_patches_the_leader_and_waits_for_a_standby_leader(
        store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:  # noqa: F811
    polls: list[int] = []

    def apply(req: Request) -> tuple[int, Any]:
        config = {**store.value("config"), "standby_cluster": req.body["standby_cluster"]}
        store.put("config", config)
        return 200, config
    apis["node1"].answers[("PATCH", "/config")] = apply
    clock = FakeClock()
    original = clock.sleep

    def sleep(seconds: float) -> None:  # the leader comes back as standby leader after two polls
        polls.append(1)
        if len(polls) == 2:
            _become(store, "standby_leader", store.value("config"))
        original(seconds)
    clock.sleep = sleep  # type: ignore[method-assign]
    result = run(store, config_file, "demote-cluster", "--force", "--host", "10.0.0.9", "--port", "5433",
                 "--primary-slot-name", "dr_site", clock=clock)
    assert result.exit_code == 0, result.output
    assert apis["node1"].calls("PATCH", "/config")[0].body == {
        "standby_cluster": {"host": "10.0.0.9", "port": 5433, "primary_slot_name": "dr_site"}}
    assert "cluster is unlocked: False, leader role: primary, leader state: running" in result.stdout
    assert "cluster is successfully demoted" in result.stdout and len(polls) == 2
    line = single_error_line(run(store, config_file, "demote-cluster", "--force", "--host", "x"))
    assert line == "Error: Cluster is already in the required state"


def test_demote_cluster_needs_a_remote_and_a_leader_and_can_give_up(
        store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:  # noqa: F811
    line = single_error_line(run(store, config_file, "demote-cluster", "--force"))
    assert line == "Error: At least --host, --port or --restore-command should be specified"
    apis["node1"].answers[("PATCH", "/config")] = (200, {})
    clock = FakeClock()
    line = single_error_line(run(store, config_file, "demote-cluster", "--force", "--port", "5433", "--timeout", "5",
                                 clock=clock))
    assert line == "Error: the cluster was not demoted within 5 seconds" and 5 <= clock.slept <= 7
    apis["node1"].answers[("PATCH", "/config")] = (422, "invalid configuration: config.standby_cluster: port")
    line = single_error_line(run(store, config_file, "demote-cluster", "--force", "--port", "5433"))
    assert line.startswith("Error: Failed to demote main cluster: /config PATCH status code=422")
    store.nodes.pop("leader")
    line = single_error_line(run(store, config_file, "promote-cluster", "--force"))
    assert line == "Error: Cluster has no leader, promotion is not possible"


def test_promote_cluster_removes_the_section_and_waits_for_a_primary(
        store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:  # noqa: F811
    _become(store, "standby_leader", {"ttl": 30, "standby_cluster": {"host": "10.0.0.9"}})

    def apply(req: Request) -> tuple[int, Any]:
        assert req.body == {"standby_cluster": None}
        _become(store, "primary", {"ttl": 30})
        return 200, {"ttl": 30}
    apis["node1"].answers[("PATCH", "/config")] = apply
    result = run(store, config_file, "promote-cluster", "--force")
    assert result.exit_code == 0, result.output
    assert "cluster is successfully promoted" in result.stdout
    line = single_error_line(run(store, config_file, "promote-cluster", "--force"))
    assert line == "Error: Cluster is already in the required state"
