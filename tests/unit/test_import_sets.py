"""Every library a worker runs on is loaded before the supervisor forks it, and none is loaded after.

The workers are forks of the supervisor (hasup.supervision.system), so a module imported before the
fork is one copy of memory for the whole node, its pages shared copy-on-write and its objects frozen
out of the collector's reach (gc.freeze).  A module imported after the fork is a private copy in
that worker, and worse: CPython fills the free slots of the supervisor's half-used memory pages
first, so a worker's import also turns many of the shared pages private, in the worker and in the
supervisor alike.  Measured on a node (bench/failover.py --footprint-only), importing each worker's
libraries in the worker instead (psycopg2 in postgres alone, the etcd client in election alone,
falcon and gunicorn in api alone) took the sum of RSS from 244 to 167 MiB but left the sum of PSS
where it was (69.2 against 69.6 MiB), and made each restart of a worker import its libraries
again (about 0.13 s for election or api).  docs/design.md §1 has the process tree.

One interpreter reproduces the tree: it imports what the `hasup` command imports before it hands over
to the supervisor, then forks one child per worker as the supervisor does, and each child reports
what its worker module made it load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("election", "postgres", "watchdog", "api", "vip")
# The heavy libraries, by who uses them: all loaded once, before any fork.
LIBRARIES = {"psycopg2", "etcd", "urllib3", "falcon", "gunicorn", "yaml", "setproctitle"}

PROBE = """
import importlib, json, os, sys

import hasup.cli
import hasup.supervision.host_checks  # hasup.cli.start imports these two before it hands over
import hasup.supervisor

before = set(sys.modules)
found = {"supervisor": sorted(before)}
for role in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        run = importlib.import_module("hasup.workers." + role).run
        assert callable(run)
        os.write(w, json.dumps(sorted(set(sys.modules) - before)).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as answer:
        found[role] = json.loads(answer.read())
    os.waitpid(pid, 0)
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    out = subprocess.run([sys.executable, "-c", PROBE, *ROLES], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True)
    return {process: set(names) for process, names in json.loads(out.stdout).items()}


def test_the_supervisor_loads_every_worker_and_its_libraries_before_it_forks(loaded: dict[str, set[str]]) -> None:
    tops = {name.split(".")[0] for name in loaded["supervisor"]}
    assert sorted(LIBRARIES - tops) == []
    assert sorted({f"hasup.workers.{role}" for role in ROLES} - loaded["supervisor"]) == []


def test_no_process_loads_dnspython_for_python_etcd(loaded: dict[str, set[str]]) -> None:
    """hasup.dcs.dnsless: python-etcd wants it for SRV discovery only, which hasup does not offer."""
    assert "etcd" in loaded["supervisor"]
    assert sorted(name for name in loaded["supervisor"] if name.startswith("dns.") and name != "dns.version") == []


def test_dnspython_imported_after_python_etcd_is_the_real_one() -> None:
    pytest.importorskip("patroni")  # Patroni's etcd module, as the comparison benchmarks load it
    probe = ("import hasup.dcs.etcd, dns.resolver\n"
             "from patroni.dcs import etcd\n"
             "print(dns.resolver.Resolver.__name__, etcd.DnsCachingResolver.__name__)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True)
    assert out.stdout.split() == ["Resolver", "DnsCachingResolver"]


@pytest.mark.parametrize("role", ROLES)
def test_a_worker_imports_nothing_after_the_fork(loaded: dict[str, set[str]], role: str) -> None:
    assert sorted(loaded[role]) == []
