"""hasupctl, and the real patronictl, against a live 3-node hasup cluster (docs/hasupctl.md).

One cluster serves the module; tests run in file order, read-only ones first, then the ones
that move the leader, restart and rebuild members. Each output is parsed (json where the
command offers it) and compared with what etcd and the members say.
ttl 10, loop_wait 2, retry_timeout 4.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import pytest
import yaml

from tests.harness import SUPERUSER_PASSWORD, Node, TestCluster, free_port, hasup_bin, wait_for

BIN = os.path.dirname(hasup_bin())
HASUPCTL = os.path.join(BIN, "hasupctl")
PATRONICTL = os.path.join(BIN, "patronictl")


API_USER, API_PASSWORD = "operator", "api-secret-5e1f"


@pytest.fixture(scope="module")
def tc():
    with TestCluster(3) as c:
        for node in c.nodes:  # both tools must send these (from restapi.authentication) to act
            node.extra["restapi.authentication"] = {"username": API_USER, "password": API_PASSWORD}
        c.start_all()
        yield c


def run(tc: TestCluster, *args: str, tool: str = HASUPCTL, input: str = "", timeout: float = 90,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if tool == PATRONICTL and not os.path.exists(PATRONICTL):
        pytest.skip("patronictl is not installed (pip install '.[test]')")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PATRONI", "HASUP_", "PG", "DCS_URL"))}
    return subprocess.run([tool, "-c", tc.nodes[0].config_path, *args], capture_output=True, text=True,
                          input=input, timeout=timeout, env={**clean, **(env or {})})


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def settled(tc: TestCluster) -> tuple[Node, list[Node]]:
    """The leader and its replicas, every replica streaming and saying so in its member key."""
    leader = tc.wait_leader(90)
    replicas = [n for n in tc.nodes if n is not leader]
    tc.wait_streaming(leader, replicas, 90)
    wait_for(lambda: all(tc.member(r.name).get("replication_state") == "streaming" for r in replicas), 20,
             "replicas to publish streaming")
    return leader, replicas


def rows_by_member(stdout: str) -> dict[str, dict[str, Any]]:
    return {r["Member"]: r for r in json.loads(stdout)}


def test_list_topology_dsn_and_version(tc: TestCluster) -> None:
    leader, replicas = settled(tc)
    assert leader.api("/config", "PATCH")[0] == 401  # the actions below pass only with the credentials
    rows = rows_by_member(ok(run(tc, "list", "-f", "json")))
    assert set(rows) == {n.name for n in tc.nodes}
    assert rows[leader.name]["Role"] == "Leader" and rows[leader.name]["State"] == "running"
    for r in replicas:
        assert rows[r.name]["Role"] == "Replica" and rows[r.name]["State"] == "streaming"
        assert rows[r.name]["Receive Lag"] == rows[r.name]["Replay Lag"] == 0 and rows[r.name]["TL"] == 1
        assert rows[r.name]["Host"] == f"127.0.0.1:{r.pg_port}" and rows[r.name]["Cluster"] == tc.scope
    topo = ok(run(tc, "topology")).splitlines()
    assert any(line.startswith(f"| {leader.name} ") for line in topo)
    assert all(any(line.startswith(f"| + {r.name} ") for line in topo) for r in replicas)
    assert ok(run(tc, "dsn")).strip() == f"host=127.0.0.1 port={leader.pg_port}"
    assert ok(run(tc, "dsn", "-m", replicas[0].name)).strip() == f"host=127.0.0.1 port={replicas[0].pg_port}"
    versions = ok(run(tc, "version", tc.scope)).splitlines()
    assert versions[0].startswith("hasupctl version ")
    for n in tc.nodes:
        assert any(v.startswith(f"{n.name}: hasup ") and " PostgreSQL 15." in v for v in versions), versions


def test_patronictl_reads_what_hasupctl_reads(tc: TestCluster) -> None:
    leader, replicas = settled(tc)
    ours = rows_by_member(ok(run(tc, "list", "-f", "json")))
    theirs = rows_by_member(ok(run(tc, "list", "-f", "json", tool=PATRONICTL)))
    assert {n: (r["Role"], r["State"], r["Host"]) for n, r in theirs.items()} == \
        {n: (r["Role"], r["State"], r["Host"]) for n, r in ours.items()}
    assert all(theirs[r.name]["Replay Lag"] == 0 for r in replicas)
    etcd_config = json.loads(tc.etcd.value(tc.key("config")) or "{}")
    assert yaml.safe_load(ok(run(tc, "show-config"))) == etcd_config
    assert yaml.safe_load(ok(run(tc, "show-config", tool=PATRONICTL))) == etcd_config
    assert ok(run(tc, "history", "-f", "json", tool=PATRONICTL)).strip() == "[]"
    assert json.loads(ok(run(tc, "history", "-f", "json"))) == []


def test_edit_config_with_both_tools(tc: TestCluster) -> None:
    out = ok(run(tc, "edit-config", "--force", "--set", "maximum_lag_on_failover=2097152"))
    assert "+maximum_lag_on_failover: 2097152" in out and out.strip().endswith("Configuration changed")
    assert json.loads(tc.etcd.value(tc.key("config")) or "{}")["maximum_lag_on_failover"] == 2097152
    ok(run(tc, "edit-config", "--force", "--set", "maximum_lag_on_failover=3145728", tool=PATRONICTL))
    assert yaml.safe_load(ok(run(tc, "show-config")))["maximum_lag_on_failover"] == 3145728
    # A PostgreSQL parameter through --pg reaches the running servers.
    ok(run(tc, "edit-config", "--force", "--pg", "work_mem=7MB"))
    wait_for(lambda: all(n.sql("SHOW work_mem")[0][0] == "7MB" for n in tc.nodes), 30, "work_mem applied")
    # What nodes could not use is refused, and etcd keeps the old value.
    result = run(tc, "edit-config", "--force", "--set", "loop_wait=soon")
    assert result.returncode == 1 and "loop_wait" in result.stderr
    assert json.loads(tc.etcd.value(tc.key("config")) or "{}")["loop_wait"] == 2


def test_pause_and_resume_with_both_tools(tc: TestCluster) -> None:
    settled(tc)
    out = ok(run(tc, "pause", "--wait"))
    assert out.splitlines()[-1] == "Success: cluster management is paused"
    assert all(tc.member(n.name).get("pause") is True for n in tc.nodes)
    wait_for(lambda: all(n.status().get("pause") is True for n in tc.nodes), 10, "/patroni to say pause")
    assert " Maintenance mode: on" in ok(run(tc, "list")).splitlines()
    assert "Cluster is already paused" in run(tc, "pause").stderr
    assert ok(run(tc, "resume", "--wait")).splitlines()[-1] == "Success: cluster management is resumed"
    assert not any(tc.member(n.name).get("pause") for n in tc.nodes)
    # patronictl waits on the members' pause flags too.
    assert ok(run(tc, "pause", "--wait", tool=PATRONICTL)).splitlines()[-1] == \
        "Success: cluster management is paused"
    assert json.loads(tc.etcd.value(tc.key("config")) or "{}").get("pause") is True
    assert ok(run(tc, "resume", "--wait", tool=PATRONICTL)).splitlines()[-1] == \
        "Success: cluster management is resumed"
    assert "pause" not in json.loads(tc.etcd.value(tc.key("config")) or "{}")


def test_query(tc: TestCluster) -> None:
    leader, replicas = settled(tc)
    env = {"PGPASSWORD": SUPERUSER_PASSWORD}
    sql = "SELECT pg_is_in_recovery() AS recovery, current_setting('port') AS port"
    rows = json.loads(ok(run(tc, "query", "-U", "postgres", "--format", "json", "-c", sql, env=env)))
    assert rows == [{"recovery": False, "port": str(leader.pg_port)}]
    out = ok(run(tc, "query", "-U", "postgres", "-r", "replica", "-c", sql, env=env)).splitlines()
    assert out[0] == "recovery\tport" and out[1].split("\t")[0] == "true"
    result = run(tc, "query", "-U", "postgres", "-c", "SELECT nosuchcolumn", env=env)
    assert result.returncode == 1 and "nosuchcolumn" in result.stderr and "Traceback" not in result.stderr


def test_remove_refuses_without_confirmation(tc: TestCluster) -> None:
    result = run(tc, "remove", tc.scope, input="")
    assert result.returncode != 0
    result = run(tc, "remove", tc.scope, input="not-this-one\n")
    assert result.returncode == 1 and "does not match" in result.stderr
    result = run(tc, "remove", tc.scope, input=f"{tc.scope}\nYes I am aware\nnobody\n")
    assert result.returncode == 1 and "not the current leader" in result.stderr
    assert tc.leader_name() and tc.etcd.value(tc.key("initialize"))


def test_etcd_down_is_one_line_within_the_retry_timeout(tc: TestCluster) -> None:
    port = free_port()  # nobody listens there
    started = time.monotonic()
    result = run(tc, "-d", f"127.0.0.1:{port}", "list")
    assert time.monotonic() - started < 15
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == f"Error: etcd at 127.0.0.1:{port} did not answer within 4 s " \
                                    f"(reading cluster '{tc.scope}')"


def test_switchover_and_failover_with_both_tools_show_in_history(tc: TestCluster) -> None:
    leader, replicas = settled(tc)
    first = replicas[0].name
    out = ok(run(tc, "switchover", "--force", "--candidate", first))
    assert f'Successfully switched over to "{first}"' in out
    assert tc.wait_leader(60).name == first
    leader, replicas = settled(tc)
    out = ok(run(tc, "switchover", "--force", tool=PATRONICTL))
    assert "witched over to" in out, out
    second = tc.wait_leader(60, exclude=first).name
    leader, replicas = settled(tc)
    third = replicas[0].name
    out = ok(run(tc, "failover", "--force", "--candidate", third))
    assert f'Successfully failed over to "{third}"' in out
    assert tc.wait_leader(60, exclude=second).name == third
    settled(tc)
    history = json.loads(ok(run(tc, "history", "-f", "json")))
    assert [h["New Leader"] for h in history][-3:] == [first, second, third]
    assert [h["TL"] for h in history][-3:] == [1, 2, 3]
    patroni_history = json.loads(ok(run(tc, "history", "-f", "json", tool=PATRONICTL)))
    assert [h["New Leader"] for h in patroni_history] == [h["New Leader"] for h in history]


def test_reload_restart_and_reinit(tc: TestCluster) -> None:
    leader, replicas = settled(tc)
    out = ok(run(tc, "reload", tc.scope, "--force"))
    assert out.count("Reload request received for member") == 3
    target = replicas[0]
    started = target.status().get("postmaster_start_time")
    out = ok(run(tc, "restart", tc.scope, target.name, "--force"))
    assert f"Success: restart on member {target.name}" in out
    assert target.status().get("postmaster_start_time") != started
    other = replicas[1]
    out = ok(run(tc, "reinit", tc.scope, other.name, "--force", "--wait"))
    assert f"Success: reinitialize for member {other.name}" in out
    assert f"Reinitialize is completed on: {other.name}" in out
    settled(tc)
    out = run(tc, "reinit", tc.scope, leader.name, "--force")
    assert out.returncode == 1 and "no replica among the members given" in out.stderr
    # patronictl restarts through the same endpoint.
    started = other.status().get("postmaster_start_time")
    out = ok(run(tc, "restart", tc.scope, other.name, "--force", tool=PATRONICTL))
    assert f"Success: restart on member {other.name}" in out
    assert other.status().get("postmaster_start_time") != started


def test_scheduled_restart_is_listed_and_flushed(tc: TestCluster) -> None:
    leader, replicas = settled(tc)
    target = replicas[0]
    ok(run(tc, "restart", tc.scope, target.name, "--force", "--scheduled", "2099-01-01T00:00:00+00:00"))
    wait_for(lambda: tc.member(target.name).get("scheduled_restart"), 20, "the schedule in the member key")
    rows = rows_by_member(ok(run(tc, "list", "-f", "json")))
    assert rows[target.name]["Scheduled restart"].startswith("2099-01-01")
    ok(run(tc, "flush", tc.scope, "restart", "--force"))
    wait_for(lambda: not tc.member(target.name).get("scheduled_restart"), 20, "the schedule to go")
