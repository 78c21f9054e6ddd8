"""What every result file in bench/results carries, so each figure can be traced to the code and machine behind it.

A result is a header plus the benchmark's own payload.  The header names the
benchmark and its mode, the supervisor measured (hasup or Patroni), the
commit (taken before the run: the code that ran), whether `hasup/` differed
from that commit, whether the installed copy the nodes execute matches the
tree, the exact command, the settings, the machine (CPU model, cores, memory,
kernel, Python, PostgreSQL, etcd, the load average when the run began), the
date and how long the run took.  Scripts take the header when they start a
mode and save it with the payload when the mode is done.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
PG_BIN = "/usr/lib/postgresql/15/bin"


def _run(*argv: str) -> str:
    """A command's standard output, or "" when it cannot run: a header never fails a benchmark."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def commit() -> dict[str, Any]:
    """HEAD, and whether hasup/ had changes that HEAD does not hold (then the figures are not HEAD's)."""
    head = _run("git", "-C", ROOT, "rev-parse", "HEAD")
    dirty = _run("git", "-C", ROOT, "status", "--porcelain", "--", "hasup")
    return {"commit": head or None, "hasup_dirty": bool(dirty)}


def _tree_digest(directory: str) -> str:
    """One digest of every .py file under directory, by path relative to it."""
    h = hashlib.sha256()
    for base, dirs, files in sorted(os.walk(directory)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(base, name)
            h.update(os.path.relpath(path, directory).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def installed_matches_tree() -> bool | None:
    """Do the nodes run the code in this tree?  They execute the venv's installed copy (`make install`
    copies it), which a later edit or checkout does not update.  None when no copy is installed here."""
    installed = os.path.join(sysconfig.get_paths()["purelib"], "hasup")
    if not os.path.isdir(installed):
        return None
    return _tree_digest(installed) == _tree_digest(os.path.join(ROOT, "hasup"))


def _field(path: str, key: str, sep: str = ":") -> str:
    """The value of the first `key<sep>value` line of a /proc or /etc file ("" if none)."""
    try:
        with open(path) as f:
            for line in f:
                name, found, value = line.partition(sep)
                if found and name.strip() == key:
                    return value.strip().strip('"')
    except OSError:
        pass
    return ""


def _version_after(text: str, marker: str) -> str:
    first = text.splitlines()[0] if text else ""
    return first.split(marker, 1)[1].strip() if marker in first else first


def machine() -> dict[str, Any]:
    mem_kib = _field("/proc/meminfo", "MemTotal").split()
    etcd = shutil.which("etcd") or ""
    return {
        "cpu_model": _field("/proc/cpuinfo", "model name") or platform.processor(),
        "cores": os.cpu_count(),
        "memory_mib": int(mem_kib[0]) // 1024 if mem_kib else None,
        "kernel": platform.release(),
        "arch": platform.machine(),
        "os": _field("/etc/os-release", "PRETTY_NAME", "="),
        "python": platform.python_version(),
        "postgresql": _version_after(_run(os.path.join(PG_BIN, "postgres"), "--version"), "(PostgreSQL)"),
        "etcd": _version_after(_run(etcd, "--version"), "Version:") if etcd else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def command() -> str:
    """How this script was started, as one would type it from the repository's root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return shlex.join(["python", script, *sys.argv[1:]])


def header(benchmark: str, mode: str, supervisor: dict[str, str], settings: dict[str, Any]) -> dict[str, Any]:
    """Taken when a mode starts: the load average and the commit are those of the run, not of its end."""
    now = datetime.datetime.now(datetime.UTC)
    return {"benchmark": benchmark, "mode": mode, "supervisor": supervisor, **commit(),
            "installed_matches_tree": installed_matches_tree(), "date": now.date().isoformat(),
            "started": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "command": command(), "settings": settings,
            "machine": machine(), "_began": time.monotonic()}


def save(name: str, head: dict[str, Any], payload: dict[str, Any], out: str = RESULTS) -> str:
    """Write head + payload to out/name (with how long the mode took) and return the path."""
    result = {k: v for k, v in head.items() if not k.startswith("_")}
    result["seconds"] = round(time.monotonic() - head["_began"])
    result.update(payload)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"written to {os.path.relpath(path, ROOT)}", flush=True)
    return path


def load_existing(names: Iterable[str], out: str = RESULTS) -> list[dict[str, Any]]:
    """The results among names that out holds, in order; each knows its file's path from the repository root
    as "_path", so a rendered table can name its sources."""
    results = []
    for name in names:
        path = os.path.join(out, name)
        if os.path.exists(path):
            with open(path) as f:
                result = dict(json.load(f))
            result["_path"] = os.path.relpath(os.path.abspath(path), ROOT)
            results.append(result)
    return results


def load(name: str, out: str = RESULTS) -> dict[str, Any]:
    with open(os.path.join(out, name)) as f:
        return dict(json.load(f))
