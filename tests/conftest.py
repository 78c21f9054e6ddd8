import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import harness  # noqa: E402
from tests.harness import alive, become_subreaper, cmdline, descendants, kill_pids, reap_zombies  # noqa: E402

# `make test` runs every other test two at a time (pytest-xdist), then these files alone: their tests
# measure how fast something happens (a write gap, a fence before a key expires, an answer within a
# second), which a second cluster on the same two cores would slow, or they use host-wide resources
# (network namespaces, addresses on interfaces).
SERIAL_FILES = frozenset({
    "test_cluster.py", "test_cluster_etcd3.py", "test_etcd.py", "test_haproxy.py", "test_rest_slow_clients.py",
    "test_switchover.py", "test_vip.py", "test_watchdog.py", "test_worker_restart.py", "test_short.py",
    "test_software_fence.py", "test_mixed_cluster.py",
})


def pytest_configure(config):
    config.addinivalue_line("markers", "serial: run alone, not beside another test process (tests/conftest.py)")
    config.addinivalue_line("markers", "long: a soak test of minutes; runs only with -m long or HASUP_LONG_TESTS=1")


def pytest_collection_modifyitems(config, items):
    run_long = os.environ.get("HASUP_LONG_TESTS") or "long" in (config.getoption("markexpr") or "")
    skip = pytest.mark.skip(reason="a long soak test: run it with -m long or HASUP_LONG_TESTS=1")
    for item in items:
        if item.path.name in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)
        if "long" in item.keywords and not run_long:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.get_result().failed:
        harness.FAILURES.append(item.nodeid)


@pytest.fixture(scope="session", autouse=True)
def _subreaper():
    # Orphans of killed nodes re-parent to us, so cleanup can find them by PID.
    become_subreaper()
    yield
    reap_zombies()


def pytest_sessionfinish(session, exitstatus):
    """Every process a test started must be gone: anything left is a cleanup bug, and fails the run.
    Under pytest-xdist each worker checks its own; the controller's descendants are the workers."""
    if getattr(session.config.option, "numprocesses", None) and not hasattr(session.config, "workerinput"):
        return
    leftovers = [p for p in descendants(os.getpid()) if alive(p)]
    if leftovers:
        for pid in leftovers:
            print(f"\nleft behind by the tests: pid {pid}: {cmdline(pid)}", file=sys.stderr)
        kill_pids(leftovers)
        reap_zombies()
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
