"""Debian's HAProxy with docs/haproxy.cfg routes clients to the primary, and follows a switchover."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import psycopg2
import pytest

from tests.harness import SUPERUSER_PASSWORD, TestCluster, free_port, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INTER, FALL = 2.0, 3  # as in docs/haproxy.cfg (checked below)


def haproxy_config(tc: TestCluster, primary_port: int, replica_port: int) -> str:
    """docs/haproxy.cfg with its example addresses replaced by this cluster's loopback ports."""
    with open(os.path.join(ROOT, "docs", "haproxy.cfg")) as f:
        text = f.read()
    assert f"inter {INTER:.0f}s fall {FALL} " in text
    text = text.replace("bind *:5000", f"bind 127.0.0.1:{primary_port}")
    text = text.replace("bind *:5001", f"bind 127.0.0.1:{replica_port}")
    for i, node in enumerate(tc.nodes, start=1):
        text = re.sub(rf"server node{i} \S+ (.*) check port 8008",
                      rf"server {node.name} 127.0.0.1:{node.pg_port} \1 check port {node.api_port}", text)
    assert "10.0.0." not in text and "8008" not in text
    return text


def server_port(port: int) -> int | None:
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=SUPERUSER_PASSWORD,
                                dbname="postgres", connect_timeout=2)
    except psycopg2.Error:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT inet_server_port()")
            row = cur.fetchone()
            return int(row[0]) if row else None
    finally:
        conn.close()


@pytest.fixture(scope="module")
def setup():
    if not shutil.which("haproxy") and not os.environ.get("CI"):
        pytest.skip("haproxy not installed (run `make test`)")
    c = TestCluster(3)
    c.etcd.start()
    proc = None
    try:
        c.start_all()
        primary_port, replica_port = free_port(), free_port()
        cfg = os.path.join(c.base, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(haproxy_config(c, primary_port, replica_port))
        log = open(os.path.join(c.base, "haproxy.log"), "ab")
        proc = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log.close()
        yield c, primary_port, replica_port
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        c.destroy()


def test_primary_port_reaches_the_leader_and_follows_a_switchover(setup):
    tc, primary_port, replica_port = setup
    leader = tc.wait_leader(30)
    wait_for(lambda: server_port(primary_port) == leader.pg_port, 30, "HAProxy to route to the leader")
    replica_ports = {n.pg_port for n in tc.nodes if n is not leader}
    wait_for(lambda: server_port(replica_port) in replica_ports, 30, "HAProxy to route to a replica")

    candidate = next(n for n in tc.nodes if n is not leader)
    tc.etcd.put(tc.key("failover"), json.dumps({"leader": leader.name, "member": candidate.name}))
    tc.wait_leader(30, exclude=leader.name)
    switched_at = time.monotonic()

    def routed_to_new_leader() -> bool:
        # Several connections in a row, so a lingering route to the old primary shows.
        return all(server_port(primary_port) == candidate.pg_port for _ in range(3))
    wait_for(routed_to_new_leader, INTER * FALL + 2 + 10, "HAProxy to route to the new leader", interval=0.1)
    took = time.monotonic() - switched_at
    assert took <= INTER * FALL + 2, f"HAProxy switched after {took:.1f}s"
    with psycopg2.connect(host="127.0.0.1", port=primary_port, user="postgres", password=SUPERUSER_PASSWORD,
                          dbname="postgres", connect_timeout=2) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        assert cur.fetchone() == (False,)
