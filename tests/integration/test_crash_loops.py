"""A crash-looping api worker on the primary never costs PostgreSQL (hasup/supervision/crash_policy.py).

The api serves health checks; if its crash loop stopped the node, a bug in the REST layer would be
an outage of the database.  Eight deaths within a minute spend the budget (5 in 300 s) that ends
the node for election or postgres: here the api must keep coming back and PostgreSQL must not notice.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.harness import TestCluster, alive, cmdline, proc_stat, wait_for

KILLS = 8


@pytest.fixture(scope="module")
def cluster():
    with TestCluster(1) as c:
        c.start_all(timeout=120)
        yield c


def api_answers(node) -> bool:
    try:
        code, _ = node.api("/patroni", timeout=1)
    except OSError:
        return False
    return code == 200


def test_an_api_crash_loop_leaves_the_primary_alone(cluster):
    node = cluster.nodes[0]
    supervisor, postmaster = node.pid, node.postmaster_pid()
    assert supervisor and postmaster
    node.sql("CREATE TABLE IF NOT EXISTS crash_loop (n int)")
    started = time.monotonic()
    killed: list[int] = []
    for i in range(KILLS):
        # Each time a new api worker, up and answering, as a crash in the middle of serving would find it.
        pid = wait_for(lambda: (p := node.worker_pid("api")) not in (None, *killed) and api_answers(node) and p,
                       30, f"api worker #{i + 1} to answer")
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        wait_for(lambda gone=pid: not alive(gone), 5, f"api worker {pid} to die")
        # Meanwhile PostgreSQL goes on as the primary, taking writes.
        node.sql("INSERT INTO crash_loop VALUES (%s)", i)
    assert time.monotonic() - started < 60, "the kills took over a minute: the test proves less than it claims"

    assert node.pid == supervisor and alive(supervisor), "the supervisor exited"
    assert node.postmaster_pid() == postmaster, "PostgreSQL was restarted"
    assert node.sql("SELECT pg_is_in_recovery()")[0][0] is False
    assert cluster.leader_name() == node.name
    assert node.sql("SELECT count(*) FROM crash_loop")[0][0] == KILLS
    # The api comes back after its (now longer) backoff, and the loop was reported loudly.
    wait_for(lambda: api_answers(node) and node.api("/primary", timeout=1)[0] == 200, 30, "the api to come back")
    log = node.log_text()
    assert "api worker keeps crashing" in log and "giving up" not in log

    # Nothing of the killed ones lingers: the api is one process, the current one.
    def api_processes() -> list[int]:
        return [p for p in node.processes() if cmdline(p).startswith("hasup: api ")
                and (st := proc_stat(p)) is not None and st[1] == supervisor]
    wait_for(lambda: api_processes() == [node.worker_pid("api")], 15, "a single api process")
