"""A healthy leader under pgbench at the default timings is never fenced by the software fence.

ttl 30, loop_wait 10, retry_timeout 10, safety_margin 5 (Patroni's defaults), no watchdog device: the software
fence is this node's protection and falls due 23.5 s after each renewal began, so only a renewal that never comes
may trigger it.  The run lasts HASUP_FENCE_SOAK_MINUTES (default 10).  `make test` runs it beside the serial files
(tests/conftest.py SOAK_FILES): pgbench and its backends run at nice 19, so that those tests keep the CPU they need
while the load takes all the rest; hasup and the postmaster run at normal priority.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

from tests.harness import PG_BIN, SUPERUSER_PASSWORD, TestCluster, wait_for

DCS = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576,
       "postgresql": {"use_pg_rewind": True, "use_slots": False}}
MINUTES = float(os.environ.get("HASUP_FENCE_SOAK_MINUTES", "10"))
PGBENCH = {"scale": 20, "clients": 8, "threads": 2}  # as bench/hangs.py's busy primary

NICE = ["nice", "-n", "19"]


def pgbench_backends(leader) -> list[int] | None:
    """The pids of pgbench's backends, once all its clients are connected."""
    rows = leader.sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench'")
    return [r[0] for r in rows] if len(rows) == PGBENCH["clients"] else None


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
        bench = subprocess.Popen([*NICE, f"{PG_BIN}/pgbench", "-c", str(PGBENCH["clients"]), "-j",
                                  str(PGBENCH["threads"]), "-T", str(max(1, int(MINUTES * 60))), *args, "postgres"],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            backends = wait_for(lambda: pgbench_backends(leader), 60, "pgbench's connections")
            for pid in backends:
                with contextlib.suppress(PermissionError):  # only root renices another user's processes
                    os.setpriority(os.PRIO_PROCESS, pid, 19)
            _out, err = bench.communicate(timeout=MINUTES * 60 + 300)
        finally:
            if bench.poll() is None:
                bench.kill()
                bench.wait()
        assert bench.returncode == 0, err[-2000:]
        assert time.monotonic() - started >= MINUTES * 60 - 1  # pgbench ran its whole course
        assert c.leader_name() == leader.name and leader.postmaster_pid() == postmaster
        assert leader.status()["lease_protection"] == {"kind": "software fence", "fences": 0, "last_fence": None}
        assert "software fence:" not in leader.log_text()
        assert "software fence off" not in leader.log_text()  # the defaults keep the lease rule: the fence was on
    finally:
        c.destroy()
