import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import harness  # noqa: E402
from tests.harness import alive, become_subreaper, cmdline, descendants, kill_pids, reap_zombies  # noqa: E402

# `make test` runs every other test three at a time (pytest-xdist), then these files one after another: their
# tests measure how fast something happens (a write gap, a fence before a key expires, an answer within a
# second), which a second cluster on the same two cores would slow, or they use host-wide resources
# (network namespaces, addresses on interfaces).
SERIAL_FILES = frozenset({
    "test_cluster.py", "test_cluster_etcd3.py", "test_etcd.py", "test_haproxy.py", "test_rest_slow_clients.py",
    "test_switchover.py", "test_vip.py", "test_watchdog.py", "test_worker_restart.py", "test_software_fence.py",
    "test_mixed_cluster.py",
})
# Soak tests run beside the serial files, on the second xdist worker: minutes of waiting that would
# otherwise add their whole length to the run.  Their load is niced, so the serial files keep the CPU.
SOAK_FILES = frozenset({"test_fence_soak.py"})


def pytest_configure(config):
    config.addinivalue_line("markers", "serial: the second part of `make test` (tests/conftest.py)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SERIAL_FILES | SOAK_FILES:
            item.add_marker(pytest.mark.serial)


def part_two_group(nodeid: str) -> str:
    """The xdist work unit of a test in part two: the serial files together, in order, and each soak file."""
    name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return name if name in SOAK_FILES else "serial" if name in SERIAL_FILES else nodeid


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: a run without xdist knows no such hook
def pytest_xdist_make_scheduler(config, log):
    # `--dist loadgroup` by our lists rather than by xdist_group marks: pytest-xdist 3.8 tags a marked
    # test by setting item._nodeid, which pytest 9 no longer reads, so the marks group nothing.
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class PartTwo(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return part_two_group(nodeid)
    return PartTwo(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        # The clusters explain the failure in its own report, which CI shows (their files go at teardown).
        for cluster in harness.LIVE_CLUSTERS:
            report.sections.append((f"node logs at {call.when}", cluster.log_tails(80)))


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
