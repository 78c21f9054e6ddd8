"""A standby_cluster section arriving through the dynamic configuration (an existing Patroni standby
cluster, or edit-config) while hasup does not run standby clusters: nobody is promoted when the
leader dies, /patroni says why, and once the section is gone the cluster fails over as usual."""

from __future__ import annotations

import json
import time

import pytest

from hasup.election.policy import STANDBY_REFUSED
from tests.harness import TestCluster, wait_for


@pytest.fixture(scope="module")
def tc():
    with TestCluster(3) as c:
        c.start_all()
        yield c


def test_a_standby_cluster_in_the_dynamic_configuration_promotes_nobody(tc: TestCluster) -> None:
    leader = tc.wait_leader(60)
    replicas = [n for n in tc.nodes if n is not leader]
    tc.wait_streaming(leader, replicas, 60)
    config = json.loads(tc.etcd.value(tc.key("config")) or "{}")
    tc.etcd.put(tc.key("config"), json.dumps({**config, "standby_cluster": {"host": "127.0.0.1", "port": 1}}))
    leader.kill_tree()
    ttl = int(config["ttl"])

    def refusing(node_name: str) -> bool:
        node = tc.node(node_name)
        return STANDBY_REFUSED in str(node.api("/patroni")[1].get("last_decision", ""))
    for r in replicas:
        wait_for(lambda n=r.name: refusing(n), ttl + 20, f"{r.name} to say why it does not take over")
    watch_until = time.monotonic() + 2 * int(config["loop_wait"])
    while time.monotonic() < watch_until:  # the refusal holds cycle after cycle, not once
        assert all(r.sql("SELECT pg_is_in_recovery()")[0][0] for r in replicas)
        assert tc.leader_name() in (None, leader.name)
        time.sleep(0.2)
    tc.etcd.put(tc.key("config"), json.dumps(config))
    new = tc.wait_leader(ttl + 30, exclude=leader.name)
    assert new in replicas
