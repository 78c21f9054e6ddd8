"""A real 3-node cluster: bootstrap, replication, process shape, failover, rejoin, shutdown.

One cluster serves the whole module; the tests run in file order and each
leaves the cluster with three running members for the next.
ttl 10, loop_wait 2, retry_timeout 4.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.harness import SECRETS, TestCluster, alive, cmdline, hasup_bin, wait_for

TTL, LOOP_WAIT = 10, 2
ROLES = ("supervisor", "election", "postgres", "watchdog", "api")


@pytest.fixture(scope="module")
def tc():
    c = TestCluster(3)
    c.etcd.start()
    try:
        for node in c.nodes:
            node.start()
        yield c
    finally:
        c.destroy()


def all_streaming(tc: TestCluster, timeout: float = 120) -> tuple:
    leader = tc.wait_leader(timeout)
    replicas = [n for n in tc.nodes if n is not leader]
    tc.wait_streaming(leader, replicas, timeout)
    return leader, replicas


def test_bootstrap_one_leader_two_streaming_replicas(tc):
    leader, replicas = all_streaming(tc, timeout=180)
    rows = leader.sql("SELECT application_name, state FROM pg_stat_replication ORDER BY 1")
    assert rows == sorted((r.name, "streaming") for r in replicas)
    leader.sql("CREATE TABLE acceptance (id int PRIMARY KEY, note text)")
    leader.sql("INSERT INTO acceptance VALUES (1, 'written on the leader')")
    for r in replicas:
        assert wait_for(lambda r=r: r.sql("SELECT note FROM acceptance WHERE id = 1"), 30,
                        f"the row on {r.name}") == [("written on the leader",)]
        assert r.sql("SELECT pg_is_in_recovery()") == [(True,)]


def test_bootstrap_users_post_bootstrap_and_managed_parameters(tc):
    leader, replicas = all_streaming(tc)
    assert leader.sql("SELECT rolcanlogin, rolcreatedb FROM pg_roles WHERE rolname = 'app'") == [(True, True)]
    assert leader.sql("SELECT rolreplication FROM pg_roles WHERE rolname = 'replicator'") == [(True,)]
    expected = {"max_connections": "100", "max_locks_per_transaction": "64", "max_worker_processes": "8",
                "max_prepared_transactions": "0", "wal_level": "replica", "wal_log_hints": "on",
                "track_commit_timestamp": "off", "hot_standby": "on", "cluster_name": tc.scope,
                "fsync": "off"}  # the last one comes from the local postgresql.parameters
    for node in (leader, *replicas):
        assert node.sql("SELECT count(*) FROM pg_class WHERE relname = 'post_bootstrap_ran'") == [(1,)]
        got = dict(node.sql("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", list(expected)))
        assert got == expected, node.name
        with open(os.path.join(node.data_dir, "postgresql.conf")) as f:
            first = [line for line in f if line.strip() and not line.startswith("#")][0]
        assert first.strip() == f"include '{os.path.join(node.data_dir, 'postgresql.base.conf')}'"
    for r in replicas:
        assert os.path.exists(os.path.join(r.data_dir, "standby.signal"))
        conninfo = r.sql("SHOW primary_conninfo")[0][0]
        assert f"port={leader.pg_port}" in conninfo and "password" not in conninfo


def test_no_secret_in_logs_etcd_or_api(tc):
    leader, _ = all_streaming(tc)
    dump = json.dumps(tc.etcd.get(f"/v2/keys/service/{tc.scope}?recursive=true"))
    for node in tc.nodes:
        texts = [node.log_text(), dump]
        for path in ("/patroni", "/cluster", "/config", "/history", "/primary", "/replica"):
            texts.append(json.dumps(node.api(path)[1]))
        for secret in SECRETS:
            assert not any(secret in t for t in texts), (node.name, secret)


def test_process_titles(tc):
    for node in tc.nodes:
        titles = {cmdline(p) for p in node.processes()}
        for role in ROLES:
            assert f"hasup: {role} {tc.scope}/{node.name}" in titles, (node.name, role, sorted(titles))
        # The api is one process (gunicorn's worker without its arbiter, hasup/workers/api.py).
        assert not any(t.startswith("hasup: api worker") for t in titles), sorted(titles)
        sup = node.pid
        for role in ROLES[1:]:
            pid = node.worker_pid(role)
            assert pid is not None
            with open(f"/proc/{pid}/stat") as f:
                assert int(f.read().rsplit(")", 1)[1].split()[1]) == sup, role


def hasup_sessions(node) -> set:
    return set(node.sql("SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = 'hasup'"))


def quick_probe_since(node, since, seconds: float) -> bool:
    return node.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hasup'"
                    " AND query = 'EXECUTE hasup_quick' AND query_start > %s + %s * interval '1 s'",
                    since, seconds)[0][0] == 1


def test_probes_are_one_quick_prepared_query_on_a_kept_session(tc):
    """An idle node costs its PostgreSQL one cheap round trip a second: no new backend per probe, and the
    costly part of the probe (pg_settings, pg_control, pg_stat_replication) only now and then."""
    leader, replicas = all_streaming(tc)
    nodes = (leader, replicas[0])
    started = {n.name: n.sql("SELECT now()")[0][0] for n in nodes}
    before = {n.name: hasup_sessions(n) for n in nodes}
    # Two loop_waits of probes later: the same sessions, and the probe's latest statement the quick one.
    wait_for(lambda: all(quick_probe_since(n, started[n.name], 2 * LOOP_WAIT) for n in nodes), 30,
             "a quick probe two loop_waits on")
    for n in nodes:
        assert hasup_sessions(n) == before[n.name] and before[n.name], n.name


def test_etcd_layout(tc):
    leader = tc.wait_leader(30)
    assert tc.etcd.value(tc.key("leader")) == leader.name
    assert tc.etcd.value(tc.key("initialize")).isdigit()
    config = json.loads(tc.etcd.value(tc.key("config")))
    assert config["ttl"] == TTL and config["loop_wait"] == LOOP_WAIT
    for node in tc.nodes:
        member = json.loads(tc.etcd.value(tc.key(f"members/{node.name}")))
        assert member["conn_url"] == f"postgres://127.0.0.1:{node.pg_port}/postgres"
        assert member["api_url"] == f"http://127.0.0.1:{node.api_port}/patroni"
        assert member["state"] == "running"
    leader_key = tc.etcd.key(tc.key("leader"))
    assert leader_key["ttl"] <= TTL


def test_rest_roles_and_status(tc):
    leader, replicas = all_streaming(tc)
    assert leader.api("/primary")[0] == 200
    assert leader.api("/replica")[0] == 503
    for r in replicas:
        assert r.api("/primary")[0] == 503
        wait_for(lambda r=r: r.api("/replica")[0] == 200, 20, f"/replica 200 on {r.name}")
    status = leader.status()
    assert status["role"] == "primary" and status["state"] == "running"
    assert status["timeline"] >= 1 and status["xlog"]["location"] > 0
    assert status["patroni"]["name"] == leader.name and status["patroni"]["scope"] == tc.scope
    rstatus = replicas[0].status()
    assert rstatus["role"] == "replica" and rstatus["xlog"]["replayed_location"] > 0


def test_hasupctl_list_shows_the_cluster(tc):
    leader, replicas = all_streaming(tc)
    wait_for(lambda: all(tc.member(r.name).get("replication_state") == "streaming" for r in replicas), 20,
             "replicas to publish streaming")
    out = subprocess.run([os.path.join(os.path.dirname(hasup_bin()), "hasupctl"), "-c", leader.config_path,
                          "list"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"+ Cluster: {tc.scope} (") and tc.etcd.value(tc.key("initialize")) in lines[0]
    rows = {cells[0]: cells for line in lines if line.startswith("| node")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert set(rows) == {n.name for n in tc.nodes}
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    assert header[:9] == ["Member", "Host", "Role", "State", "TL", "Receive LSN", "Lag", "Replay LSN", "Lag"]
    assert rows[leader.name][2:4] == ["Leader", "running"]
    assert rows[leader.name][1] == f"127.0.0.1:{leader.pg_port}"
    for r in replicas:
        assert rows[r.name][2:4] == ["Replica", "streaming"] and rows[r.name][6] == rows[r.name][8] == "0"


def test_sighup_reload_publishes_new_tags(tc):
    node = tc.nodes[1]
    node.extra["tags.rack"] = "r7"
    node.prepare()
    node.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: json.loads(tc.etcd.value(tc.key(f"members/{node.name}"))).get("tags", {}).get("rack") == "r7",
             20, "the new tag in the member key")
    assert "configuration reloaded" in node.log_text()


def test_silent_worker_is_aborted_and_restarted(tc):
    node = tc.nodes[2]
    old = node.worker_pid("watchdog")
    assert old
    os.kill(old, signal.SIGSTOP)  # alive but silent: only the heartbeat can tell
    new = wait_for(lambda: (p := node.worker_pid("watchdog")) and p != old and p, 40, "a new watchdog worker")
    assert new != old and not alive(old)
    assert f"watchdog worker (pid {old}) missed its heartbeat" in node.log_text()


def test_killing_postgres_worker_reattaches_without_failover(tc):
    leader, _ = all_streaming(tc)
    postmaster = leader.postmaster_pid()
    old_worker = leader.worker_pid("postgres")
    assert postmaster and old_worker
    leader.sql("INSERT INTO acceptance VALUES (2, 'before worker kill')")
    os.kill(old_worker, signal.SIGKILL)
    new_worker = wait_for(lambda: (p := leader.worker_pid("postgres")) and p != old_worker and p, 20,
                          "a new postgres worker")
    assert new_worker != old_worker
    # The new worker reports the running database again, and nothing failed over.
    wait_for(lambda: leader.status().get("state") == "running", 20, "state running after re-attach")
    assert leader.postmaster_pid() == postmaster
    for _ in range(3 * LOOP_WAIT):  # several cycles, checked as they pass
        assert tc.leader_name() == leader.name
        time.sleep(1)
    assert leader.sql("SELECT pg_is_in_recovery()") == [(False,)]


def wait_history_grows(tc: TestCluster, node, before: int) -> list:
    return wait_for(lambda: len(h := node.api("/history")[1]) > before and h, 30, "a new /history entry")


def test_sigkill_whole_leader_tree_fails_over(tc):
    leader, replicas = all_streaming(tc)
    history_before = len(leader.api("/history")[1])
    node_key = tc.etcd.key(tc.key("leader"))
    assert node_key is not None
    killed_at = time.monotonic()
    leader.kill_tree()
    new = tc.wait_leader(TTL + LOOP_WAIT + 5 + 5, exclude=leader.name)
    elapsed = time.monotonic() - killed_at
    assert elapsed <= TTL + LOOP_WAIT + 5, f"failover took {elapsed:.1f}s"
    new.sql("INSERT INTO acceptance VALUES (3, 'after failover')")
    history = wait_history_grows(tc, new, history_before)
    assert history[-1][-1] == new.name
    tc.killed = leader  # type: ignore[attr-defined]


def test_killed_node_rejoins_as_replica(tc):
    old = tc.killed  # type: ignore[attr-defined]
    old.start()
    leader = tc.wait_leader(30)
    assert leader is not old
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 120)
    assert wait_for(lambda: old.sql("SELECT note FROM acceptance WHERE id = 3"), 30, "row 3 on the old leader") \
        == [("after failover",)]


def test_sigterm_leader_hands_over_quickly(tc):
    leader, _ = all_streaming(tc)
    pids = leader.processes()
    stopped_at = time.monotonic()
    leader.proc.send_signal(signal.SIGTERM)
    new = tc.wait_leader(15, exclude=leader.name)
    took = time.monotonic() - stopped_at
    assert took <= 5, f"handover took {took:.1f}s"
    leader.proc.wait(60)
    wait_for(lambda: not any(alive(p) for p in pids) and not leader.processes(), 30,
             f"no process of {leader.name} left")
    assert new.name != leader.name
    leader.start()
    tc.wait_streaming(new, [n for n in tc.nodes if n is not new], 120)


def test_sigkill_supervisor_alone_stops_node_and_fails_over(tc):
    leader, _ = all_streaming(tc)
    pids = leader.processes()
    killed_at = time.monotonic()
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait(10)
    new = tc.wait_leader(15, exclude=leader.name)
    took = time.monotonic() - killed_at
    assert took <= 5, f"failover after supervisor death took {took:.1f}s"
    wait_for(lambda: not any(alive(p) for p in pids) and not leader.processes(), 30,
             f"no process of {leader.name} left")
    assert new.sql("SELECT count(*) FROM acceptance")[0][0] >= 3
