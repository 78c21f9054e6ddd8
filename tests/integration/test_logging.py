"""Logging as configured, on a real node (docs/operator-guide.md, "Logging").

The node writes to log.dir with a small file_size.  A broken `ip` on its PATH
(it answers in a shape no iproute2 prints) makes the vip worker log an
unexpected error with a traceback every second, which drives rotation and
shows traceback_level at work: visible with the default ERROR, gone after a
reload with traceback_level DEBUG.  A follower reads every line as written,
across rotations, to see that every worker's lines arrive and name it.
"""

from __future__ import annotations

import os
import re
import signal
import threading

import yaml

from hasup.supervision.logwriter import LOG_FILE
from tests.harness import TestCluster, wait_for

FILE_SIZE = 4000
FILE_NUM = 2
ROLES = {"supervisor", "election", "postgres", "watchdog", "api", "vip"}
ERROR_LINE = "unexpected error while"
TRACEBACK = "Traceback (most recent call last)"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FAKE_IP = """#!/bin/sh
# Stands in for iproute2: valid JSON in a shape `ip -j addr` never prints.
echo '[{"ifname": "eth0", "addr_info": 5}]'
"""


class Follower(threading.Thread):
    """Reads hasup.log as it grows, reopening it when rotation renames it (like tail -F)."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.lines: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        f = None
        while not self.stop.is_set():
            if f is None:
                try:
                    f = open(self.path, errors="replace")
                except FileNotFoundError:
                    self.stop.wait(0.02)
                    continue
            chunk = f.read()
            if chunk:
                self.lines.extend(chunk.splitlines())
                continue
            try:
                rotated = os.stat(self.path).st_ino != os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:
                self.lines.extend(f.read().splitlines())
                f.close()
                f = None
                continue
            self.stop.wait(0.02)
        if f is not None:
            f.close()

    def roles(self) -> set[str]:
        return {m.group(1) for line in self.lines if (m := re.search(r" \[(\w+)\] ", line))}


def errors_and_tracebacks(lines: list[str]) -> list[bool]:
    """For each vip error line, whether a traceback follows it."""
    out = []
    for i, line in enumerate(lines):
        if ERROR_LINE in line:
            out.append(i + 1 < len(lines) and lines[i + 1].startswith(TRACEBACK))
    return out


def test_rotation_every_worker_and_traceback_level():
    tc = TestCluster(1)
    node = tc.nodes[0]
    log_dir = os.path.join(node.dir, "log")
    fake_bin = os.path.join(tc.base, "fakebin")
    follower = Follower(os.path.join(log_dir, LOG_FILE))
    try:
        os.makedirs(log_dir)
        os.makedirs(fake_bin)
        with open(os.path.join(fake_bin, "ip"), "w") as f:
            f.write(FAKE_IP)
        os.chmod(os.path.join(fake_bin, "ip"), 0o755)
        if tc.owner:
            os.chown(log_dir, *tc.owner)
        node.extra = {"log.dir": log_dir, "log.file_size": FILE_SIZE, "log.file_num": FILE_NUM,
                      "log.level": "INFO", "log.traceback_level": "ERROR", "log.format": FORMAT,
                      # Each worker says it is up at DEBUG, on this logger alone.
                      "log.loggers": {"hasup.worker": "DEBUG"},
                      "vip": {"address": "198.18.0.100/24", "interface": "eth0"}}
        node.env = {"PATH": f"{fake_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        follower.start()
        tc.etcd.start()
        node.start()
        tc.wait_leader(60)
        wait_for(lambda: ROLES <= follower.roles(), 30, f"lines from every worker (seen {follower.roles()})")
        wait_for(lambda: sum(errors_and_tracebacks(follower.lines)) >= 2, 30, "vip errors with tracebacks")
        wait_for(lambda: os.path.exists(os.path.join(log_dir, f"{LOG_FILE}.{FILE_NUM}")), 60,
                 f"rotation up to {LOG_FILE}.{FILE_NUM}")

        # traceback_level DEBUG while log.level is INFO: tracebacks go, the error lines stay.
        with open(node.config_path) as f:
            cfg = yaml.safe_load(f)
        cfg["log"]["traceback_level"] = "DEBUG"
        with open(node.config_path, "w") as f:
            yaml.safe_dump(cfg, f)
        node.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        reloaded = wait_for(lambda: next((i for i, ln in enumerate(follower.lines)
                                          if "configuration reloaded" in ln), None), 20, "the reload")
        # A record already in flight may still carry its traceback; then none may.
        def settled() -> bool:
            after = errors_and_tracebacks(follower.lines[reloaded:])
            quiet = after[1:] if after and after[0] else after
            return len(quiet) >= 3
        wait_for(settled, 30, "error lines after the reload")
        after = errors_and_tracebacks(follower.lines[reloaded:])
        assert not any(after[1:]), after

        node.stop()
    finally:
        follower.stop.set()
        follower.join(5)
        files = sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []
        sizes = {n: os.path.getsize(os.path.join(log_dir, n)) for n in files}
        tc.destroy()
    assert files == [LOG_FILE] + [f"{LOG_FILE}.{i}" for i in range(1, FILE_NUM + 1)]
    assert all(size <= FILE_SIZE for size in sizes.values()), sizes
    # Every line that starts a record names its worker.
    starts = [ln for ln in follower.lines if re.match(r"\d{4}-\d\d-\d\d ", ln)]
    assert starts and all(re.search(r" \[\w+\] ", ln) for ln in starts)
    # log.loggers: DEBUG for hasup.worker only, INFO for the rest.
    debug = [ln for ln in starts if " DEBUG " in ln]
    assert {re.search(r" \[(\w+)\] ", ln).group(1) for ln in debug} >= ROLES - {"supervisor"}  # type: ignore[union-attr]
    assert all(" DEBUG hasup.worker: " in ln for ln in debug), debug
