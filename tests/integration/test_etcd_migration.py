"""Moving a live hasup cluster from etcd's v2 API to v3 (before an upgrade to etcd 3.6), as
docs/etcd.md describes it: pause, `hasupctl migrate-dcs`, restart each node on `etcd3:`
(replicas first, the leader last), resume.  Under a write prober: 0 acknowledged writes lost,
the same leader before and after, and PostgreSQL never stops (at most 1 s without a write).

One etcd 3.4 serves both keyspaces here, as a production etcd does before its upgrade.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import pytest
import yaml

from hasup.config import EtcdConfig
from hasup.dcs.etcd3 import Etcd3Store
from tests.harness import Node, TestCluster, hasup_bin, wait_for
from tests.harness.prober import longest_gap, lost_writes, start_prober

HASUPCTL = os.path.join(os.path.dirname(hasup_bin()), "hasupctl")


@pytest.fixture(scope="module")
def tc():
    with TestCluster(3) as c:
        c.start_all()
        c.leader().sql("CREATE TABLE bench_writes (v bigint PRIMARY KEY)")
        yield c


def hasupctl(config: str, *args: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PATRONI", "HASUP_", "PG", "DCS_URL"))}
    done = subprocess.run([HASUPCTL, "-c", config, *args], capture_output=True, text=True, timeout=120, env=clean)
    assert done.returncode == 0, f"hasupctl {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def v3_keys(tc: TestCluster) -> dict[str, str]:
    cfg = EtcdConfig((("127.0.0.1", tc.etcd.port),), api_version=3)
    return Etcd3Store(cfg, "/service/", tc.scope, 3).read_raw()


def member_on_v3(tc: TestCluster, node: Node) -> bool:
    return f"members/{node.name}" in v3_keys(tc)


def test_a_live_cluster_moves_from_v2_to_v3_keeping_its_primary(tc: TestCluster) -> None:
    leader = tc.wait_leader(60)
    replicas = [n for n in tc.nodes if n is not leader]
    tc.wait_streaming(leader, replicas, 60)
    prober, _thread = start_prober(tc.nodes, 1)
    wait_for(lambda: len(prober.acked) > 20, 30, "the prober to write")
    started = time.monotonic()
    try:
        hasupctl(leader.config_path, "pause", "--wait")
        section: dict[str, Any] = {"etcd3": {"host": f"127.0.0.1:{tc.etcd.port}"}}
        target = os.path.join(tc.base, "etcd3.yml")
        with open(target, "w") as f:
            yaml.safe_dump({"scope": tc.scope, "namespace": "/service/", **section}, f)
        out = hasupctl(leader.config_path, "migrate-dcs", "--to", target)
        assert "Copied config, initialize" in out
        assert '"pause":true' in v3_keys(tc)["config"].replace(" ", "")
        for node in [*replicas, leader]:
            node.stop(keep_postgres=True)
            assert node.postmaster_pid() is not None, f"{node.name}'s PostgreSQL stopped with hasup"
            node.dcs_section = section
            node.prepare()
            node.start()
            wait_for(lambda n=node: member_on_v3(tc, n), 60, f"{node.name} to register on v3")
        wait_for(lambda: v3_keys(tc).get("leader") == leader.name, 60, f"{leader.name} to take the v3 lock")
        hasupctl(leader.config_path, "resume", "--wait")
        tc.wait_streaming(leader, replicas, 60)
        end = time.monotonic()
        wait_for(lambda: prober.acked[-1][1] > end, 10, "a write after the move")
    finally:
        prober.stop.set()
    keys = v3_keys(tc)
    assert keys.get("leader") == leader.name and "pause" not in keys["config"]
    assert {name for _, t, name in prober.acked if t >= started} == {leader.name}
    assert lost_writes(prober, leader) == []
    gap = longest_gap(prober.acked, started, time.monotonic())
    print(f"\nv2 -> v3 move: longest write gap {gap:.3f} s, {len(prober.acked)} writes acknowledged")
    assert gap <= 1.0, gap
