"""postgresql.callbacks on a real two-node cluster: each event calls its callback with action, role and
scope; a callback that sleeps delays no switchover and is killed once its timeout passes."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import pytest

from tests.harness import TestCluster, alive, wait_for

ACTIONS = ("on_start", "on_stop", "on_restart", "on_reload", "on_role_change")
TIMEOUT = 10  # postgresql.callback_timeout: longer than a switchover takes here, short enough to wait out
# Records `<action> <role> <scope>` in <dir>/callbacks.log; while <dir>/sleep exists it then sleeps with
# a child, after writing `<action> <pid> <child pid>` to <dir>/sleepers.
RECORDER = """#!/bin/sh
dir=$1
shift
echo "$*" >> "$dir/callbacks.log"
if [ -e "$dir/sleep" ]; then
    sleep 300 &
    echo "$1 $$ $!" >> "$dir/sleepers"
    wait
fi
"""


@pytest.fixture(scope="module")
def tc():
    c = TestCluster(2)
    script = os.path.join(c.base, "recorder.sh")
    with open(script, "w") as f:
        f.write(RECORDER)
    os.chmod(script, 0o755)  # nodes run as an unprivileged user
    for node in c.nodes:
        node.extra["postgresql.callbacks"] = {action: f"{script} {node.dir}" for action in ACTIONS}
        node.extra["postgresql.callback_timeout"] = TIMEOUT
    with c:  # starts etcd; destroys everything on the way out
        c.start_all()
        yield c


def calls(node) -> list[str]:
    try:
        with open(os.path.join(node.dir, "callbacks.log")) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def wait_calls(node, expected: list[str], timeout: float = 30) -> None:
    wait_for(lambda: calls(node) == expected, timeout, f"{node.name}'s callbacks to be {expected}")


def sleepers(node) -> dict[str, tuple[int, int]]:
    """The sleeping callbacks' pids (leader, child) by action; the latest of each."""
    try:
        with open(os.path.join(node.dir, "sleepers")) as f:
            return {a: (int(p), int(c)) for a, p, c in (line.split() for line in f)}
    except FileNotFoundError:
        return {}


def post(node, path: str, body: object) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{node.api_port}{path}", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_start_reload_and_restart(tc: TestCluster) -> None:
    leader = tc.wait_leader(30)
    replica = next(n for n in tc.nodes if n is not leader)
    s = tc.scope
    wait_calls(leader, [f"on_start primary {s}"])  # after bootstrap, not during it
    wait_calls(replica, [f"on_start replica {s}"])  # after the clone
    assert leader.api("/reload", "POST")[0] == 202  # re-read the file: PostgreSQL gets SIGHUP
    wait_calls(leader, [f"on_start primary {s}", f"on_reload primary {s}"])
    assert post(replica, "/restart", {}) == (200, "restarted successfully")
    wait_calls(replica, [f"on_start replica {s}", f"on_restart replica {s}"])


def test_switchover_stops_the_old_primary_and_changes_both_roles(tc: TestCluster) -> None:
    leader = tc.wait_leader(30)
    replica = next(n for n in tc.nodes if n is not leader)
    tc.wait_streaming(leader, [replica], 60)
    old_leader, old_replica = calls(leader), calls(replica)
    assert post(leader, "/switchover", {"leader": leader.name, "candidate": replica.name}) == \
        (200, f'Successfully switched over to "{replica.name}"')
    s = tc.scope
    wait_calls(replica, [*old_replica, f"on_role_change primary {s}"])
    # The old primary may first start without knowing its new upstream, then reload to stream from it.
    expected = [f"on_stop primary {s}", f"on_role_change replica {s}"]
    wait_for(lambda: calls(leader)[len(old_leader):][:2] == expected, 30, f"{leader.name}'s callbacks")
    tc.wait_streaming(replica, [leader], 30)
    assert set(calls(leader)[len(old_leader) + 2:]) <= {f"on_reload replica {s}"}, calls(leader)


def test_sleeping_callbacks_delay_no_switchover_and_are_killed_after_their_timeout(tc: TestCluster) -> None:
    leader = tc.wait_leader(30)
    replica = next(n for n in tc.nodes if n is not leader)
    tc.wait_streaming(leader, [replica], 60)
    for node in tc.nodes:
        open(os.path.join(node.dir, "sleep"), "w").close()
    asked_at = time.monotonic()
    assert post(leader, "/switchover", {"leader": leader.name, "candidate": replica.name})[0] == 200
    assert tc.wait_leader(10).name == replica.name
    tc.wait_streaming(replica, [leader], 30)  # the old primary is back, as a replica
    took = time.monotonic() - asked_at
    # Both role-change callbacks are still asleep: nothing waited for them.
    promoted = wait_for(lambda: sleepers(replica).get("on_role_change"), 5, "the new primary's sleeper")
    demoted = wait_for(lambda: sleepers(leader).get("on_role_change"), 5, "the old primary's sleeper")
    assert all(alive(pid) for pid in (*promoted, *demoted)), (promoted, demoted)
    assert took < TIMEOUT - 2, took
    # The old primary's on_stop was killed when its on_role_change started (one at a time).
    stopped = sleepers(leader).get("on_stop")
    assert stopped is not None and not any(alive(pid) for pid in stopped)
    for node in tc.nodes:
        os.unlink(os.path.join(node.dir, "sleep"))
    wait_for(lambda: not any(alive(pid) for pid in (*promoted, *demoted)), TIMEOUT + 10,
             "the sleeping callbacks and their children to be killed")
    assert time.monotonic() - asked_at >= TIMEOUT - 1
    for node in (leader, replica):
        wait_for(lambda n=node: "callback on_role_change" in n.log_text() and "killed its process group"
                 in n.log_text(), 10, f"{node.name} to log the kill")


def test_a_stopped_node_calls_on_stop(tc: TestCluster) -> None:
    leader = tc.wait_leader(30)
    replica = next(n for n in tc.nodes if n is not leader)
    before = calls(replica)
    replica.stop(timeout=60)
    wait_calls(replica, [*before, f"on_stop replica {tc.scope}"], 10)
