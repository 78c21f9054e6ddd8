import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import harness  # noqa: E402
from tests.harness import alive, become_subreaper, cmdline, descendants, kill_pids, reap_zombies  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "long: a soak test of minutes; runs only with -m long or HASUP_LONG_TESTS=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("HASUP_LONG_TESTS") or "long" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="a long soak test: run it with -m long or HASUP_LONG_TESTS=1")
    for item in items:
        if "long" in item.keywords:
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
    """Every process a test started must be gone: anything left is a cleanup bug, and fails the run."""
    leftovers = [p for p in descendants(os.getpid()) if alive(p)]
    if leftovers:
        for pid in leftovers:
            print(f"\nleft behind by the tests: pid {pid}: {cmdline(pid)}", file=sys.stderr)
        kill_pids(leftovers)
        reap_zombies()
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
