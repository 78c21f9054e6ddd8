"""Where scripts and runbooks written for Patroni 4.1 meet hasup, on one live 3-node cluster.

`hasupctl list` prints the columns the real patronictl 4.1 prints for the same cluster; a wiped
`config` key is written back by the leader with the settings the cluster had; a second node started
under a name a running member uses refuses to start (one line, exit 2) and leaves that member be.
ttl 10, loop_wait 2, retry_timeout 4.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from typing import Any

import pytest
import yaml

from hasup.config.dynamic_cache import CACHE_FILE
from tests.harness import Node, TestCluster, hasup_bin, wait_for

BIN = os.path.dirname(hasup_bin())
HASUPCTL = os.path.join(BIN, "hasupctl")
PATRONICTL = os.path.join(BIN, "patronictl")


@pytest.fixture(scope="module")
def tc():
    with TestCluster(3) as c:
        c.start_all()
        yield c


def ctl(tool: str, config: str, *args: str) -> list[str]:
    if not os.path.exists(tool):
        pytest.skip(f"{tool} is not installed (pip install '.[test]')")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PATRONI", "HASUP_", "PG", "DCS_URL"))}
    out = subprocess.run([tool, "-c", config, *args], capture_output=True, text=True, timeout=60, env=clean)
    assert out.returncode == 0, f"{tool} {args}: rc={out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout.splitlines()


def header(lines: list[str]) -> list[str]:
    """The column names of a boxed table: its second line."""
    return [c.strip() for c in lines[1].strip("|").split("|")]


def test_list_shows_patronictl_4_columns(tc: TestCluster, tmp_path: Any) -> None:
    leader = tc.wait_leader(60)
    replicas = [n for n in tc.nodes if n is not leader]
    wait_for(lambda: all(tc.member(r.name).get("replication_state") == "streaming" for r in replicas), 60,
             "replicas to publish streaming")
    # patronictl with nothing but where the cluster is: the columns come from the member keys alone.
    patroni_cfg = tmp_path / "patronictl.yml"
    patroni_cfg.write_text(yaml.safe_dump({"scope": tc.scope, "namespace": "/service/",
                                           "etcd": {"host": f"127.0.0.1:{tc.etcd.port}"}}))
    for extra in ((), ("-e",)):
        theirs = ctl(PATRONICTL, str(patroni_cfg), "list", *extra)
        ours = ctl(HASUPCTL, leader.config_path, "list", *extra)
        assert header(ours) == header(theirs), f"\nhasupctl:\n{ours[:2]}\npatronictl:\n{theirs[:2]}"
        tsv_theirs = ctl(PATRONICTL, str(patroni_cfg), "list", "-f", "tsv", *extra)
        assert ctl(HASUPCTL, leader.config_path, "list", "-f", "tsv", *extra)[0] == tsv_theirs[0]
    assert "Receive LSN" in header(ours) and "Lag in MB" not in header(ours)
    # The same numbers, not only the same names: each replica is caught up in both tools' eyes.
    ours_rows = {r["Member"]: r for r in json.loads("\n".join(ctl(HASUPCTL, leader.config_path, "list", "-f",
                                                                   "json")))}
    theirs_rows = {r["Member"]: r for r in json.loads("\n".join(ctl(PATRONICTL, str(patroni_cfg), "list", "-f",
                                                                     "json")))}
    for r in replicas:
        for column in ("Role", "State", "TL", "Receive Lag", "Replay Lag"):
            assert ours_rows[r.name][column] == theirs_rows[r.name][column], (r.name, column)


def delete_key(tc: TestCluster, rel: str) -> None:
    req = urllib.request.Request(f"{tc.etcd.url}/v2/keys{tc.key(rel)}", method="DELETE")
    with urllib.request.urlopen(req, timeout=3) as r:
        r.read()


def test_a_wiped_config_key_is_written_back_by_the_leader(tc: TestCluster) -> None:
    leader = tc.wait_leader(60)
    config = json.loads(tc.etcd.value(tc.key("config")) or "{}")
    # A setting bootstrap.dcs never had: written back, it shows the cluster's own settings came back.
    changed = {**config, "max_timelines_history": 7}
    tc.etcd.put(tc.key("config"), json.dumps(changed))
    cache = os.path.join(leader.data_dir, CACHE_FILE)

    def cached() -> bool:
        try:
            with open(cache) as f:
                return bool(json.load(f) == changed)
        except (OSError, ValueError):
            return False
    wait_for(cached, 30, "the leader to cache the changed configuration")
    assert os.stat(cache).st_mode & 0o777 == 0o600
    delete_key(tc, "config")
    loop_wait = int(config["loop_wait"])
    back = wait_for(lambda: tc.etcd.value(tc.key("config")), 5 * loop_wait + 20, "the config key written back")
    assert json.loads(back) == changed
    assert tc.leader_name() == leader.name  # nothing else moved


def test_a_second_node_with_a_name_in_use_refuses_to_start(tc: TestCluster) -> None:
    leader = tc.wait_leader(60)
    victim = next(n for n in tc.nodes if n is not leader)
    pid, member_before = victim.pid, tc.member(victim.name)
    assert pid is not None and member_before
    # Same name and cluster, its own directory and ports: what a copied configuration file looks like.
    dup = Node(victim.name, os.path.join(tc.base, "duplicate"), tc.scope, tc.etcd.port, tc.owner, tc.dcs)
    dup.start()
    try:
        rc = wait_for(lambda: dup.proc.poll() if dup.proc else None, 60, "the duplicate to exit")
    finally:
        if dup.pid is not None:
            dup.kill_tree()
    text = dup.log_text()
    assert rc == 2, text
    said = [line for line in text.splitlines() if "already in use" in line]
    assert len(said) == 1 and f"'{victim.name}'" in said[0] and "Traceback" not in text, text
    assert not os.path.exists(os.path.join(dup.data_dir, "PG_VERSION"))  # it touched nothing
    # The running member is unharmed: same process, still streaming, its key still its own.
    assert victim.pid == pid
    assert victim.api("/patroni")[1].get("state") == "running"
    after = tc.member(victim.name)
    assert after.get("api_url") == member_before.get("api_url") and after.get("conn_url") == member_before["conn_url"]
    assert victim.sql("SELECT pg_is_in_recovery()")[0][0] is True
