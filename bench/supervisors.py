"""hasup or Patroni under the same harness, for figures measured side by side in one run.

The harness starts whatever HASUP_BIN names with the node's configuration file
as its only argument; Patroni takes the same file (hasup reads Patroni's
YAML), so running Patroni is pointing HASUP_BIN at the venv's `patroni`.

One difference needs the benchmark's help.  Patroni starts PostgreSQL through
a helper process that exits, so the postmaster is re-parented to the nearest
subreaper: in production init, which reaps it at once; under the harness the
benchmark process.  Patroni waits for a stopped postmaster's pid to vanish,
and an unreaped zombie never does: its shutdown or demotion would hang for
ever.  So while Patroni runs, the benchmark reaps its orphans as init would.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
import threading
from collections.abc import Iterator

KINDS = ("hasup", "patroni")
REAP_EVERY = 0.1  # seconds: how soon an orphaned postmaster is reaped, as init would


def binary(kind: str) -> str:
    """The console script in the venv that runs the benchmarks (where `make install` put both)."""
    return os.path.join(os.path.dirname(sys.executable), kind)


def installed() -> list[str]:
    return [k for k in KINDS if os.path.exists(binary(k))]


def chosen(arg: str) -> list[str]:
    """`all` (every installed one) or a comma-separated list; an unknown or missing one is an error."""
    if arg == "all":
        return installed()
    kinds = arg.split(",")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"--supervisor: {', '.join(unknown)} unknown (known: all, {', '.join(KINDS)})")
    missing = [k for k in kinds if not os.path.exists(binary(k))]
    if missing:
        raise SystemExit(f"--supervisor: {', '.join(missing)} not installed next to {sys.executable}")
    return kinds


def describe(kind: str) -> dict[str, str]:
    try:
        version = importlib.metadata.version(kind)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"name": kind, "version": version}


@contextlib.contextmanager
def reaping() -> Iterator[None]:
    """Reap the benchmark's zombie orphans every REAP_EVERY until the block ends (see the module docstring)."""
    from tests.harness import reap_zombies  # the harness, only when a cluster runs

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(REAP_EVERY):
            reap_zombies()
    thread = threading.Thread(target=loop, daemon=True, name="reaper")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def running(kind: str) -> Iterator[None]:
    """Nodes started inside this block run `kind`."""
    previous = os.environ.get("HASUP_BIN")
    os.environ["HASUP_BIN"] = binary(kind)
    try:
        with reaping() if kind == "patroni" else contextlib.nullcontext():
            yield
    finally:
        if previous is None:
            os.environ.pop("HASUP_BIN", None)
        else:
            os.environ["HASUP_BIN"] = previous
