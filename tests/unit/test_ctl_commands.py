"""hasupctl commands end to end against an in-memory etcd and real HTTP servers standing in for members.

Each member's REST API is a small stdlib server that records what it was sent and answers
with Patroni's status codes and messages (docs/rest-api.md), so the requests hasupctl makes
(method, path, body, auth) and how it reports each answer are checked.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from hasup.config import EtcdConfig
from hasup.ctl import cli
from hasup.ctl.base import Seams
from hasup.ctl.settings import CtlSettings, parse_dcs_url
from tests.harness.pki import Pki, make_pki
from tests.unit.ctl_fakes import SCOPE, FakeApi, FakeClock, FakeStore, Request, fake_apis, three_nodes

MB = 1024 * 1024


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def apis(store: FakeStore) -> Iterator[dict[str, FakeApi]]:
    with fake_apis("node1", "node2", "node3") as apis:
        three_nodes(store, apis)
        yield apis


@pytest.fixture
def config_file(tmp_path: Path) -> str:
    path = tmp_path / "node.yml"
    path.write_text(yaml.safe_dump({"scope": SCOPE, "etcd": {"host": "127.0.0.1:2379"},
                                    "restapi": {"listen": ":8008", "connect_address": "127.0.0.1:8008",
                                                "authentication": {"username": "admin", "password": "s3cret"}}}))
    return str(path)


def run(store: FakeStore, config_file: str, *args: str, input: str | None = None,
        env: dict[str, str] | None = None, clock: FakeClock | None = None) -> Result:
    clock = clock or FakeClock()
    seams = Seams(store=lambda _s, _scope: store, clock=clock, sleep=clock.sleep)
    return CliRunner().invoke(cli, ["-c", config_file, *args], obj=seams, input=input, env=env,
                              catch_exceptions=False)


def auth_ok(req: Request) -> bool:
    return req.authorization == "Basic " + base64.b64encode(b"admin:s3cret").decode()


def single_error_line(result: Result) -> str:
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return errors[0]


# -- reading ------------------------------------------------------------------------------------------


def test_list_json_parses_and_pretty_has_title_and_footer(store: FakeStore, apis: dict[str, FakeApi],
                                                           config_file: str) -> None:
    result = run(store, config_file, "list", "-f", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["Member"], r["Role"], r["State"], r.get("Replay Lag")) for r in rows] == [
        ("node1", "Leader", "running", None), ("node2", "Replica", "streaming", 0),
        ("node3", "Replica", "streaming", 3)]
    store.put("config", {"pause": True})
    pretty = run(store, config_file, "list").stdout.splitlines()
    assert pretty[0].startswith(f"+ Cluster: {SCOPE} (7300000000000000001) ")
    assert pretty[-1] == " Maintenance mode: on"
    # The global -f works too, and the command's own wins over it.
    assert json.loads(run(store, config_file, "-f", "json", "list").stdout)[0]["Cluster"] == SCOPE
    tsv = run(store, config_file, "-f", "json", "list", "-f", "tsv").stdout.splitlines()
    assert tsv[0].split("\t")[:3] == ["Cluster", "Member", "Host"] and len(tsv) == 4


def test_list_watch_repeats(store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    result = run(store, config_file, "list", "-f", "tsv", "-w", "0.01", "--watch-count", "3", "-t")
    assert result.exit_code == 0
    assert result.stdout.count("Cluster\tMember") == 3


def test_topology_history_show_config_dsn(store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    topo = run(store, config_file, "topology").stdout
    assert "| + node2 " in topo and "| node1 " in topo
    hist = json.loads(run(store, config_file, "history", "-f", "json").stdout)
    assert hist == [{"TL": 1, "LSN": 25165824, "Reason": "no recovery target specified",
                     "Timestamp": "2030-01-01T00:00:00+00:00", "New Leader": "node1"}]
    assert yaml.safe_load(run(store, config_file, "show-config").stdout) == {"ttl": 30, "loop_wait": 10,
                                                                            "retry_timeout": 10}
    assert run(store, config_file, "dsn").stdout.strip() == "host=127.0.0.1 port=5432"
    assert run(store, config_file, "dsn", "-r", "replica").stdout.strip() == "host=127.0.0.1 port=5433"
    assert run(store, config_file, "dsn", "-m", "node3").stdout.strip() == "host=127.0.0.1 port=5434"
    assert "mutually exclusive" in single_error_line(run(store, config_file, "dsn", "-m", "node3", "-r", "leader"))
    assert "not a member" in single_error_line(run(store, config_file, "dsn", "-m", "node9"))


def test_version_asks_each_member(store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    for api in apis.values():
        api.answers[("GET", "/patroni")] = (200, {"state": "running", "server_version": 150018})
    out = run(store, config_file, "version", SCOPE, "node2").stdout.splitlines()
    assert out[0].startswith("hasupctl version ")
    assert out[-1] == "node2: hasup 0.1.0 (Patroni 4.1.4) PostgreSQL 15.18"
    assert len(apis["node2"].requests) == 1 and not apis["node1"].requests


def test_etcd_down_is_one_line(store: FakeStore, config_file: str) -> None:
    store.down = True
    line = single_error_line(run(store, config_file, "list"))
    assert "etcd at 127.0.0.1:2379 did not answer" in line


def test_missing_config_file_and_missing_scope(store: FakeStore, tmp_path: Path) -> None:
    line = single_error_line(run(store, str(tmp_path / "nope.yml"), "list"))
    assert "nope.yml" in line
    empty = tmp_path / "empty.yml"
    empty.write_text("etcd: {host: '127.0.0.1:2379'}\n")
    assert "no cluster name" in single_error_line(run(store, str(empty), "list"))


def test_unexpected_errors_are_one_line(store: FakeStore, config_file: str) -> None:
    store.nodes["config"] = ("{}", 1, None)

    def broken() -> Any:
        raise RuntimeError("boom\nsecond line")
    store.get_cluster = broken  # type: ignore[method-assign]
    assert single_error_line(run(store, config_file, "show-config")) == "Error: RuntimeError: boom second line"


# -- switchover and failover ---------------------------------------------------------------------------


def test_switchover_force_posts_to_the_leader_with_auth(store: FakeStore, apis: dict[str, FakeApi],
                                                        config_file: str) -> None:
    apis["node1"].answers[("POST", "/switchover")] = (200, 'Successfully switched over to "node2"')
    result = run(store, config_file, "switchover", "--force", "--candidate", "node2")
    assert result.exit_code == 0, result.output
    (req,) = apis["node1"].calls("POST", "/switchover")
    assert req.body == {"candidate": "node2", "leader": "node1"} and auth_ok(req)
    assert 'Successfully switched over to "node2"' in result.stdout
    assert result.stdout.startswith("Current cluster topology")


def test_switchover_interactive_scheduled(store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    apis["node1"].answers[("POST", "/switchover")] = (202, "Switchover scheduled")
    result = run(store, config_file, "switchover", input="node1\nnode3\n2030-01-02T03:04+00:00\ny\n")
    assert result.exit_code == 0, result.output
    (req,) = apis["node1"].calls("POST", "/switchover")
    assert req.body == {"candidate": "node3", "leader": "node1", "scheduled_at": "2030-01-02T03:04:00+00:00"}
    assert "Switchover scheduled" in result.stdout
    # Saying no aborts before anything is sent.
    result = run(store, config_file, "switchover", "--candidate", "node2", "--scheduled", "now", input="\nn\n")
    assert "Aborting switchover" in single_error_line(result)
    assert len(apis["node1"].calls("POST", "/switchover")) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--leader", "node2"], "Member node2 is not the leader of cluster main"),
    (["--candidate", "node1"], "Member node1 is already the leader of cluster main"),
    (["--candidate", "node9"], "Member node9 does not exist in cluster main or is tagged as nofailover"),
    (["--scheduled", "tomorrow"], "unable to parse the scheduled time"),
])
def test_switchover_refusals(store: FakeStore, apis: dict[str, FakeApi], config_file: str, args: list[str],
                             message: str) -> None:
    assert message in single_error_line(run(store, config_file, "switchover", "--force", *args))
    assert not apis["node1"].requests


def test_switchover_checks_against_the_cluster(store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    store.put("config", {"pause": True})
    line = single_error_line(run(store, config_file, "switchover", "--force", "--scheduled", "2030-01-01T00:00Z"))
    assert "Can't schedule switchover in the paused state" in line
    for name in ("node2", "node3"):
        data = store.value(f"members/{name}")
        data["tags"] = {"nofailover": True}
        store.put(f"members/{name}", data)
    assert "No candidates found to switchover to" in single_error_line(run(store, config_file, "switchover",
                                                                           "--force"))
    store.nodes.pop("leader")
    assert "This cluster has no leader" in single_error_line(run(store, config_file, "switchover", "--force"))


def test_switchover_failure_status_exits_non_zero(store: FakeStore, apis: dict[str, FakeApi],
                                                  config_file: str) -> None:
    apis["node1"].answers[("POST", "/switchover")] = (412, "candidate name does not match with sync_standby")
    line = single_error_line(run(store, config_file, "switchover", "--force", "--candidate", "node2"))
    assert line == "Error: Switchover failed, details: 412, candidate name does not match with sync_standby"


def test_switchover_falls_back_to_etcd_when_the_leader_is_unreachable(store: FakeStore, config_file: str) -> None:
    three_nodes(store)  # api_urls on ports nobody listens on
    store.put("members/node1", {**store.value("members/node1"), "api_url": "http://127.0.0.1:1/patroni"})
    result = run(store, config_file, "switchover", "--force", "--candidate", "node3")
    assert result.exit_code == 0, result.output
    assert "writing the request to etcd" in result.stdout
    assert store.value("failover") == {"leader": "node1", "member": "node3"}


def test_failover(store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    assert "Failover could be performed only to a specific candidate" in single_error_line(
        run(store, config_file, "failover", "--force"))
    apis["node1"].answers[("POST", "/failover")] = (200, 'Successfully failed over to "node3"')
    result = run(store, config_file, "failover", "--force", "--candidate", "node3")
    assert result.exit_code == 0 and 'Successfully failed over to "node3"' in result.stdout
    assert apis["node1"].calls("POST", "/failover")[0].body == {"candidate": "node3"}
    # Without a leader the candidate itself is asked.
    store.nodes.pop("leader")
    apis["node2"].answers[("POST", "/failover")] = (200, 'Successfully failed over to "node2"')
    assert run(store, config_file, "failover", "--force", "--candidate", "node2").exit_code == 0
    assert apis["node2"].calls("POST", "/failover")[0].body == {"candidate": "node2"}


def test_failover_to_an_async_node_in_sync_mode_asks(store: FakeStore, apis: dict[str, FakeApi],
                                                     config_file: str) -> None:
    store.put("config", {"synchronous_mode": True})
    store.put("sync", {"leader": "node1", "sync_standby": "node2"})
    result = run(store, config_file, "failover", "--candidate", "node3", input="n\n")
    assert "Aborting failover" in single_error_line(result)
    assert "asynchronous node node3" in result.stdout and not apis["node1"].requests


# -- restart, reload, reinit, flush ------------------------------------------------------------------------


def test_restart_force_all_members(store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    for api in apis.values():
        api.answers[("POST", "/restart")] = (200, "restarted successfully")
    result = run(store, config_file, "restart", SCOPE, "--force", "--pg-version", "16.1", "--timeout", "30")
    assert result.exit_code == 0, result.output
    for name, api in apis.items():
        (req,) = api.calls("POST", "/restart")
        assert req.body == {"postgres_version": "16.1", "timeout": 30} and auth_ok(req)
        assert f"Success: restart on member {name}" in result.stdout


def test_restart_role_and_names_and_failures(store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    apis["node2"].answers[("POST", "/restart")] = (200, "restarted successfully")
    apis["node3"].answers[("POST", "/restart")] = (503, "restart conditions are not satisfied")
    result = run(store, config_file, "restart", SCOPE, "--role", "replica", "--force")
    assert not apis["node1"].requests
    assert "Success: restart on member node2" in result.stdout
    assert ("Failed: restart for member node3, status code=503, (restart conditions are not satisfied)"
            in result.stdout)
    assert result.exit_code == 1
    assert "not a member" in single_error_line(run(store, config_file, "restart", SCOPE, "node9", "--force"))
    assert "no leader among" in single_error_line(run(store, config_file, "restart", SCOPE, "node2", "-r", "leader",
                                                      "--force"))
    assert "--pg-version" in single_error_line(run(store, config_file, "restart", SCOPE, "--force",
                                                   "--pg-version", "x"))


def test_restart_scheduled(store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    apis["node2"].answers[("POST", "/restart")] = (202, "Restart scheduled")
    apis["node3"].answers[("POST", "/restart")] = (409, "Another restart is already scheduled")
    result = run(store, config_file, "restart", SCOPE, "node2", "node3", input="2030-01-01T05:00+00:00\ny\n")
    assert apis["node2"].calls("POST", "/restart")[0].body == {"schedule": "2030-01-01T05:00:00+00:00"}
    assert "Success: restart scheduled on member node2" in result.stdout
    assert "Failed: another restart is already scheduled on member node3" in result.stdout
    assert result.exit_code == 1
    store.put("config", {"pause": True})
    line = single_error_line(run(store, config_file, "restart", SCOPE, "--force", "--scheduled", "2030-01-01T05:00"))
    assert "Can't schedule restart in the paused state" in line


def test_restart_scheduled_with_force_replaces_an_earlier_schedule(store: FakeStore, apis: dict[str, FakeApi],
                                                                   config_file: str) -> None:
    store.put("members/node2", {**store.value("members/node2"), "scheduled_restart": {"schedule": "2030"}})
    apis["node2"].answers[("DELETE", "/restart")] = (200, "scheduled restart deleted")
    apis["node2"].answers[("POST", "/restart")] = (202, "Restart scheduled")
    result = run(store, config_file, "restart", SCOPE, "node2", "--force", "--scheduled", "2030-01-01T05:00Z")
    assert result.exit_code == 0
    assert [(r.method, r.path) for r in apis["node2"].requests] == [("DELETE", "/restart"), ("POST", "/restart")]


def test_reload(store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    for api in apis.values():
        api.answers[("POST", "/reload")] = (202, "reload scheduled")
    result = run(store, config_file, "reload", SCOPE, "node3", input="y\n")
    assert result.exit_code == 0
    assert "Reload request received for member node3 and will be processed within 10 seconds" in result.stdout
    assert len(apis["node3"].calls("POST", "/reload")) == 1 and not apis["node2"].requests


def test_reinit_retries_with_force_when_asked_and_waits(store: FakeStore, apis: dict[str, FakeApi],
                                                        config_file: str) -> None:
    api = apis["node2"]
    starts = iter(["t0", "t0", "t1"])  # before the request, then once still the old postmaster, then a new one
    api.answers[("GET", "/patroni")] = lambda _r: (200, {"state": "running", "postmaster_start_time": next(starts)})
    api.answers[("POST", "/reinitialize")] = lambda r: (
        (200, "reinitialize started") if r.body.get("force") else (503, "reinitialize already in progress"))
    result = run(store, config_file, "reinit", SCOPE, "node2", "--wait", input="y\ny\n")
    assert result.exit_code == 0, result.output
    assert [r.body for r in api.calls("POST", "/reinitialize")] == [{"force": False}, {"force": True}]
    assert "Success: reinitialize for member node2" in result.stdout
    assert "Reinitialize is completed on: node2" in result.stdout


def test_reinit_only_replicas(store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    assert "no replica among" in single_error_line(run(store, config_file, "reinit", SCOPE, "node1", "--force"))
    assert "name the members" in single_error_line(run(store, config_file, "reinit", SCOPE, "--force"))
    apis["node3"].answers[("POST", "/reinitialize")] = (503, "Cluster has no leader, can not reinitialize")
    result = run(store, config_file, "reinit", SCOPE, "node3", "--force", "--from-leader")
    assert apis["node3"].calls("POST", "/reinitialize")[0].body == {"force": True, "from_leader": True}
    assert "Cluster has no leader, can not reinitialize" in result.stdout and result.exit_code == 1
    assert not apis["node1"].requests


def test_restart_pending_now_only_asks_members_with_a_pending_restart(store: FakeStore, apis: dict[str, FakeApi],
                                                                      config_file: str) -> None:
    assert run(store, config_file, "restart", SCOPE, "--force", "--pending").stdout.strip().endswith(
        "No member has a pending restart")
    assert not any(api.requests for api in apis.values())
    store.put("members/node3", {**store.value("members/node3"), "pending_restart": True})
    apis["node3"].answers[("POST", "/restart")] = (200, "restarted successfully")
    result = run(store, config_file, "restart", SCOPE, "--force", "--pending", "--any")
    assert result.exit_code == 0 and "Success: restart on member node3" in result.stdout
    assert apis["node3"].calls("POST", "/restart")[0].body == {"restart_pending": True}
    assert not apis["node1"].requests and not apis["node2"].requests


def test_flush(store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    store.put("members/node3", {**store.value("members/node3"), "scheduled_restart": {"schedule": "2030"}})
    apis["node3"].answers[("DELETE", "/restart")] = (200, "scheduled restart deleted")
    result = run(store, config_file, "flush", SCOPE, "restart", "--force")
    assert result.exit_code == 0 and "Success: flush scheduled restart for member node3" in result.stdout
    assert not apis["node2"].requests  # nothing scheduled there
    apis["node1"].answers[("DELETE", "/switchover")] = (404, "no switchover is scheduled")
    result = run(store, config_file, "flush", SCOPE, "switchover")
    assert result.exit_code == 0 and "no switchover is scheduled" in result.stdout


# -- pause, resume, edit-config, remove ---------------------------------------------------------------------


def test_pause_and_resume_patch_the_config_on_the_leader(store: FakeStore, apis: dict[str, FakeApi],
                                                        config_file: str) -> None:
    def apply(req: Request) -> tuple[int, Any]:
        config = {**store.value("config"), "pause": True} if req.body["pause"] else \
            {k: v for k, v in store.value("config").items() if k != "pause"}
        store.put("config", config)
        for name in ("node1", "node2", "node3"):  # the members notice and republish their keys
            data = {k: v for k, v in store.value(f"members/{name}").items() if k != "pause"}
            store.put(f"members/{name}", {**data, **({"pause": True} if req.body["pause"] else {})})
        return 200, config
    apis["node1"].answers[("PATCH", "/config")] = apply
    result = run(store, config_file, "pause", "--wait")
    assert result.exit_code == 0, result.output
    assert apis["node1"].calls("PATCH", "/config")[0].body == {"pause": True}
    assert auth_ok(apis["node1"].requests[0])
    assert result.stdout.splitlines()[-1] == "Success: cluster management is paused"
    assert "Cluster is already paused" in single_error_line(run(store, config_file, "pause"))
    result = run(store, config_file, "resume")
    assert apis["node1"].calls("PATCH", "/config")[1].body == {"pause": None}
    assert result.stdout.strip() == "Success: cluster management is resumed"
    assert "Cluster is not paused" in single_error_line(run(store, config_file, "resume"))


def test_pause_wait_names_members_that_did_not_follow(store: FakeStore, apis: dict[str, FakeApi],
                                                      config_file: str) -> None:
    store.put("config", {"loop_wait": 1})
    apis["node1"].answers[("PATCH", "/config")] = (200, {"pause": True})
    clock = FakeClock()
    line = single_error_line(run(store, config_file, "pause", "--wait", clock=clock))
    assert line == "Error: node1, node2, node3 did not recognize the pause within 7 seconds"
    assert 7 <= clock.slept <= 8


def test_pause_tries_the_next_member_when_the_leader_is_down(store: FakeStore, apis: dict[str, FakeApi],
                                                             config_file: str) -> None:
    store.put("members/node1", {**store.value("members/node1"), "api_url": "http://127.0.0.1:1/patroni"})
    apis["node2"].answers[("PATCH", "/config")] = (200, {"pause": True})
    result = run(store, config_file, "pause")
    assert result.exit_code == 0 and apis["node2"].calls("PATCH", "/config")
    assert "trying the next member" in result.stderr


def test_edit_config_set_and_pg_write_with_compare_and_swap(store: FakeStore, apis: dict[str, FakeApi],
                                                            config_file: str) -> None:
    index = store.nodes["config"][1]
    result = run(store, config_file, "edit-config", "--force", "-s", "loop_wait=5", "--set", "ttl=null",
                 "-p", "max_connections=200")
    assert result.exit_code == 0, result.output
    assert store.writes[-1][2] == index
    assert store.value("config") == {"loop_wait": 5, "retry_timeout": 10,
                                     "postgresql": {"parameters": {"max_connections": 200}}}
    assert "-loop_wait: 10" in result.stdout and "+loop_wait: 5" in result.stdout
    assert result.stdout.strip().endswith("Configuration changed")
    assert run(store, config_file, "edit-config", "--force", "-s", "loop_wait=5").stdout.strip() == "Not changed"


def test_edit_config_asks_and_refuses_what_nodes_cannot_use(store: FakeStore, apis: dict[str, FakeApi],
                                                            config_file: str) -> None:
    before = store.value("config")
    result = run(store, config_file, "edit-config", "-s", "loop_wait=5", input="n\n")
    assert "Apply these changes?" in result.stdout and store.value("config") == before
    line = single_error_line(run(store, config_file, "edit-config", "--force", "-s", "loop_wait=soon"))
    assert "invalid configuration" in line and "loop_wait" in line
    assert store.value("config") == before


def test_edit_config_detects_a_concurrent_change(store: FakeStore, apis: dict[str, FakeApi],
                                                 config_file: str) -> None:
    real_get = store.get_cluster

    def stale() -> Any:
        seen = real_get()
        store.put("config", {"ttl": 99})  # someone else writes right after our read
        return seen
    store.get_cluster = stale  # type: ignore[method-assign]
    line = single_error_line(run(store, config_file, "edit-config", "--force", "-s", "ttl=40"))
    assert line == "Error: Config modification aborted due to concurrent changes"
    assert store.value("config") == {"ttl": 99}


def test_edit_config_apply_replace_and_editor(store: FakeStore, apis: dict[str, FakeApi], config_file: str,
                                              tmp_path: Path) -> None:
    patch = tmp_path / "patch.yml"
    patch.write_text("ttl: 40\nretry_timeout: null\n")
    assert run(store, config_file, "edit-config", "--force", "--apply", str(patch)).exit_code == 0
    assert store.value("config") == {"ttl": 40, "loop_wait": 10}
    result = run(store, config_file, "edit-config", "--replace", "-", input="ttl: 50\n")
    assert "Use --force option to apply changes" in result.stdout and store.value("config")["ttl"] == 40
    assert run(store, config_file, "edit-config", "--force", "--replace", "-", input="ttl: 50\n").exit_code == 0
    assert store.value("config") == {"ttl": 50}
    editor = tmp_path / "editor.py"
    editor.write_text("import sys\np = sys.argv[1]\ntext = open(p).read().replace('ttl: 50', 'ttl: 60')\n"
                      "open(p, 'w').write(text + 'loop_wait: 7\\n')\n")
    os.chmod(editor, 0o755)
    result = run(store, config_file, "edit-config", input="y\n",
                 env={"EDITOR": f"{sys.executable} {editor}"})
    assert result.exit_code == 0, result.output
    assert store.value("config") == {"ttl": 60, "loop_wait": 7}
    result = run(store, config_file, "edit-config", env={"EDITOR": "false"})
    assert "exited with status 1" in single_error_line(result)


def test_remove_needs_every_confirmation(store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    assert run(store, config_file, "remove", SCOPE, input="").exit_code != 0
    assert "does not match" in single_error_line(run(store, config_file, "remove", SCOPE, input="other\n"))
    assert "exactly" in single_error_line(run(store, config_file, "remove", SCOPE, input=f"{SCOPE}\nyes\n"))
    line = single_error_line(run(store, config_file, "remove", SCOPE, input=f"{SCOPE}\nYes I am aware\nnode2\n"))
    assert "not the current leader" in line
    assert not store.deleted and "leader" in store.nodes
    result = run(store, config_file, "remove", SCOPE, input=f"{SCOPE}\nYes I am aware\nnode1\n")
    assert result.exit_code == 0 and store.deleted and not store.nodes


def test_query_needs_exactly_one_source_of_sql(store: FakeStore, apis: dict[str, FakeApi], config_file: str,
                                               tmp_path: Path) -> None:
    assert "--command or --file" in single_error_line(run(store, config_file, "query"))
    sql = tmp_path / "q.sql"
    sql.write_text("SELECT 1")
    line = single_error_line(run(store, config_file, "query", "-c", "SELECT 1", "-f", str(sql)))
    assert "mutually exclusive" in line


def test_query_prompts_for_the_password_and_reports_connection_errors_in_one_line(
        store: FakeStore, apis: dict[str, FakeApi], config_file: str) -> None:
    store.put("members/node1", {**store.value("members/node1"), "conn_url": "postgres://127.0.0.1:1/postgres"})
    result = run(store, config_file, "query", "-U", "someone", "--password", "-c", "SELECT 1", input="pw-9f8e\n")
    assert "Password" in result.stdout and "pw-9f8e" not in result.output
    line = single_error_line(result)
    assert line.startswith("Error: node1: ") and "port 1" in line


# -- the DCS section and --dcs-url ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def run_seeing_settings(store: FakeStore, *args: str) -> tuple[Result, list[CtlSettings]]:
    """Run hasupctl and return the settings it opened etcd with."""
    seen: list[CtlSettings] = []
    store.put("config", {"ttl": 30})

    def open_store(settings: CtlSettings, _scope: str) -> FakeStore:
        seen.append(settings)
        return store

    clock = FakeClock()
    seams = Seams(store=open_store, clock=clock, sleep=clock.sleep)
    return CliRunner().invoke(cli, list(args), obj=seams, catch_exceptions=False), seen


def write_config(tmp_path: Path, **sections: Any) -> str:
    path = tmp_path / "ctl.yml"
    path.write_text(yaml.safe_dump({"scope": SCOPE, **sections}))
    return str(path)


def test_the_files_etcd3_section_is_used_with_tls(store: FakeStore, tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, etcd3={"hosts": "10.0.0.1:2379,10.0.0.2:2379", "cacert": pki.ca,
                                           "cert": pki.server_cert, "key": pki.server_key,
                                           "key_password": pki.key_password})
    result, [settings] = run_seeing_settings(store, "-c", config, "show-config")
    assert result.exit_code == 0, result.output
    assert settings.etcd == EtcdConfig((("10.0.0.1", 2379), ("10.0.0.2", 2379)), "https", api_version=3,
                                       cacert=pki.ca, cert=pki.server_cert, key=pki.server_key,
                                       key_password=pki.key_password)


@pytest.mark.parametrize(("sections", "expected"), [
    ({"etcd3": {"host": "e1", "cacert": "/x/ca.pem"}},
     "Error: etcd3.cacert: cannot read /x/ca.pem: No such file or directory"),
    ({"etcd3": {"host": "e1", "protocol": "http", "cert": "CERT", "key": "KEY"}},
     "Error: etcd3.protocol: TLS files given (etcd3.cert) but the protocol is http; use https or remove them"),
    ({"etcd3": {"host": "e1", "cert": "CERT", "key": "ENCRYPTED"}},
     "Error: etcd3.key_password: required: the private key in ENCRYPTED is encrypted"),
    ({"etcd": {"host": "e1"}, "etcd3": {"host": "e2"}},
     "Error: etcd3: set together with etcd; keep exactly one DCS section (etcd: for etcd's v2 API, etcd3: for its "
     "v3 API)"),
    ({"consul": {"host": "c:8500"}},
     "Error: consul: not supported; hasup supports etcd (v2 API, `etcd:`) and etcd3 (v3 API, `etcd3:`)"),
])
def test_a_bad_dcs_section_is_one_line(store: FakeStore, tmp_path: Path, pki: Pki, sections: dict[str, Any],
                                       expected: str) -> None:
    names = {"CERT": pki.client_cert, "KEY": pki.client_key, "ENCRYPTED": pki.server_key}
    for section in sections.values():
        section.update({k: names[v] for k, v in section.items() if v in names})
    result, seen = run_seeing_settings(store, "-c", write_config(tmp_path, **sections), "show-config")
    assert single_error_line(result) == expected.replace("ENCRYPTED", pki.server_key)
    assert seen == []


@pytest.mark.parametrize(("url", "api_version", "hosts", "namespace"), [
    ("etcd3://10.0.0.9:2399/other", 3, (("10.0.0.9", 2399),), "other"),
    ("etcd3://10.0.0.9", 3, (("10.0.0.9", 2379),), "service"),
    ("etcd://10.0.0.9:2399", 2, (("10.0.0.9", 2399),), "service"),
    ("10.0.0.9", 2, (("10.0.0.9", 2379),), "service"),
])
def test_dcs_url_picks_the_etcd_api(store: FakeStore, tmp_path: Path, url: str, api_version: int,
                                    hosts: tuple[tuple[str, int], ...], namespace: str) -> None:
    # --dcs-url replaces the file's DCS section as a whole (as in patronictl), TLS files included.
    config = write_config(tmp_path, etcd3={"host": "e1", "cacert": "/x/never-read.pem"})
    result, [settings] = run_seeing_settings(store, "-c", config, "--dcs-url", url, "show-config")
    assert result.exit_code == 0, result.output
    assert settings.etcd == EtcdConfig(hosts, "http", api_version=api_version)
    assert settings.namespace == namespace


@pytest.mark.parametrize(("url", "expected"), [
    ("consul://h:8500", "Error: --dcs-url: consul is not supported; hasup works with etcd (v2 API, etcd://) and "
                        "etcd3 (v3 API, etcd3://)"),
    ("zookeeper://h", "Error: --dcs-url: zookeeper is not supported; hasup works with etcd (v2 API, etcd://) and "
                      "etcd3 (v3 API, etcd3://)"),
    ("ftp://h", "Error: --dcs-url: unknown scheme 'ftp' (expected etcd://host:port[/namespace] or "
                "etcd3://host:port[/namespace])"),
    ("etcd3://h:x", "Error: --dcs-url: the port in 'etcd3://h:x' is not a number"),
])
def test_dcs_url_refusals_are_one_line(store: FakeStore, tmp_path: Path, url: str, expected: str) -> None:
    result, seen = run_seeing_settings(store, "-c", write_config(tmp_path), "--dcs-url", url, "show-config")
    assert single_error_line(result) == expected and seen == []


def test_parse_dcs_url_etcd3() -> None:
    etcd, namespace = parse_dcs_url("etcd3://u:pw@h:2400/ns/")
    assert etcd == EtcdConfig((("h", 2400),), "http", "u", "pw", api_version=3) and namespace == "ns"
    assert etcd.section == "etcd3" and "pw" not in repr(etcd)
    assert parse_dcs_url("ETCD3://h")[0].api_version == 3
    assert parse_dcs_url("https://h")[0].api_version == 2
