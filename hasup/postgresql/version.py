"""Which PostgreSQL major version the binaries and the data directory are, and the oldest hasup runs.

PostgreSQL 13 is the oldest: hasup writes wal_keep_size (13; older servers refuse to start on an
unknown parameter), re-points a running replica by reloading primary_conninfo and primary_slot_name
(reloadable since 13; before, a replica would keep following the old leader), and reads
pg_replication_slots.wal_status (13).
"""

from __future__ import annotations

import os
import re
import subprocess

from hasup.postgresql.control import Binaries

MIN_MAJOR = 13
VERSION_TIMEOUT = 10.0  # seconds for `postgres --version`; it answers in milliseconds
# "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", "postgres (PostgreSQL) 9.6.24", "... 17beta1"
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def parse_version_output(text: str) -> int | None:
    """The major version in `postgres --version` output (9.6 -> 9); None when it names none."""
    m = _VERSION.search(text[:1000])
    return int(m.group(1)) if m and len(m.group(1)) <= 3 else None


def binary_major(bin_dir: str) -> int | None:
    """The major version of the `postgres` hasup would run; None when it cannot be run or read."""
    try:
        out = subprocess.run([Binaries(bin_dir).path("postgres"), "--version"], capture_output=True, text=True,
                             timeout=VERSION_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version_output(out.stdout) if out.returncode == 0 else None


def data_dir_major(data_dir: str) -> int | None:
    """The major version PG_VERSION records (9.6 -> 9); None when there is no readable one."""
    try:
        with open(os.path.join(data_dir, "PG_VERSION"), "rb") as f:
            text = f.read(32).decode("ascii", "replace").strip()
    except OSError:
        return None
    m = re.fullmatch(r"(\d{1,3})(?:\.\d{1,3})?", text)
    return int(m.group(1)) if m else None


def too_old(major: int, what: str) -> str | None:
    """One line when `major` is below the oldest hasup runs."""
    if major >= MIN_MAJOR:
        return None
    return f"{what} is PostgreSQL {major}; hasup needs PostgreSQL {MIN_MAJOR} or later"
