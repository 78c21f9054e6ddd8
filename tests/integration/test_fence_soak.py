"""A healthy leader under pgbench at the default timings is never fenced by the software fence.

ttl 30, loop_wait 10, retry_timeout 10, safety_margin 5 (Patroni's defaults), no watchdog device: the software
fence is this node's protection and falls due 23.5 s after each renewal began, so only a renewal that never comes
may trigger it.  The run lasts HASUP_FENCE_SOAK_MINUTES (default 10).  `make test` runs it beside the serial files
(tests/conftest.py SOAK_FILES); pgbench, the client, runs at nice 19 so that they keep the CPU they need, while
PostgreSQL's backends and hasup run at normal priority, as on a database host whose clients are elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import time

from tests.harness import PG_BIN, SUPERUSER_PASSWORD, TestCluster

DCS = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576,
       "postgresql": {"use_pg_rewind": True, "use_slots": False}}
MINUTES = float(os.environ.get("HASUP_FENCE_SOAK_MINUTES", "10"))
PGBENCH = {"scale": 20, "clients": 8, "threads": 2}  # as bench/hangs.py's busy primary

NICE = ["nice", "-n", "19"]


def test_a_healthy_leader_under_pgbench_at_the_defaults_is_never_fenced():
    c = TestCluster(2, dcs=DCS)
    for node in c.nodes:  # the default mode, with no device: the software fence is what this node has
        node.extra.update({"watchdog.mode": "automatic", "watchdog.driver": "testing",
                           "watchdog.device": f"{node.dir}/no-watchdog.sock"})
    c.etcd.start()
    try:
        leader = c.start_all()
        status = leader.status()
        assert status["lease_protection"] == {"kind": "software fence", "fences": 0, "last_fence": None}
        postmaster = leader.postmaster_pid()
        env = {**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD}
        args = ["-h", "127.0.0.1", "-p", str(leader.pg_port), "-U", "postgres"]
        subprocess.run([*NICE, f"{PG_BIN}/pgbench", "-i", "-s", str(PGBENCH["scale"]), "-q", *args, "postgres"],
                       env=env, check=True, capture_output=True)
        started = time.monotonic()
        run = subprocess.run([*NICE, f"{PG_BIN}/pgbench", "-c", str(PGBENCH["clients"]), "-j", str(PGBENCH["threads"]),
                              "-T", str(max(1, int(MINUTES * 60))), *args, "postgres"], env=env,
                             capture_output=True, text=True, timeout=MINUTES * 60 + 300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert time.monotonic() - started >= MINUTES * 60 - 1  # pgbench ran its whole course
        assert c.leader_name() == leader.name and leader.postmaster_pid() == postmaster
        assert leader.status()["lease_protection"] == {"kind": "software fence", "fences": 0, "last_fence": None}
        assert "software fence:" not in leader.log_text()
        assert "software fence off" not in leader.log_text()  # the defaults keep the lease rule: the fence was on
    finally:
        c.destroy()
