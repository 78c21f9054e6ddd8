"""Replica build benchmark: how long a new replica takes to stream, built by pg_basebackup from the
leader or by a create_replica_methods script restoring a base backup kept in a directory (WAL from
the archive the leader fills through archive_command).

A two-node cluster; node1 leads and archives, and is loaded with pgbench's tables (--size-mb of
data).  A base backup (without WAL) is taken once into a directory.  Then, per run and per method,
node2 starts with an empty data directory and the time from its start to its row in the leader's
pg_stat_replication with state 'streaming' is recorded (the method's own time, from node2's log,
too).  Writes keep arriving on the leader meanwhile (pgbench at a low rate), so the restore has
WAL to replay.

    python bench/replica_build.py --size-mb 1024 --runs 1

Writes bench/results/replica-build-hasup.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import record  # noqa: E402
from tests.harness import (  # noqa: E402
    PG_BIN,
    REPLICATION_PASSWORD,
    SUPERUSER_PASSWORD,
    TestCluster,
    become_subreaper,
    wait_for,
)

MB_PER_SCALE = 15  # pgbench_accounts and its index take about 15 MB per scale unit
RESTORE = """#!/bin/sh
for arg; do
    case "$arg" in
        --datadir=*) DATADIR="${arg#--datadir=}" ;;
        --backup=*) BACKUP="${arg#--backup=}" ;;
    esac
done
cp -a "$BACKUP"/. "$DATADIR"/
"""
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def as_owner(tc: TestCluster, argv: list[str], env: dict[str, str], timeout: float) -> None:
    kwargs: dict[str, Any] = {"user": tc.owner[0], "group": tc.owner[1], "extra_groups": []} if tc.owner else {}
    subprocess.run(argv, check=True, timeout=timeout, env={**os.environ, **env}, capture_output=True, **kwargs)


def logged_at(line: str) -> float:
    stamp = LOG_TIME.match(line)
    return time.mktime(time.strptime(stamp.group(1)[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp.group(1)[20:]) / 1000 \
        if stamp else 0.0


def method_seconds(log: str, began: str, ended: str) -> float | None:
    """Seconds between the last line containing `began` and the first `ended` after it, from the log."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if began in line]
    if not starts:
        return None
    start = starts[-1]
    end = next((i for i in range(start, len(lines)) if ended in lines[i]), None)
    if end is None:
        return None
    return round(logged_at(lines[end]) - logged_at(lines[start]), 2)


def build_once(tc: TestCluster, method: str, extra: dict[str, Any], timeout: float) -> dict[str, Any]:
    node1, node2 = tc.nodes
    node2.stop(timeout=60)
    shutil.rmtree(node2.data_dir, ignore_errors=True)
    if os.path.exists(node2.log_path):
        os.unlink(node2.log_path)
    node2.extra = extra
    started = time.monotonic()
    node2.start()

    def streaming() -> bool:
        rows = node1.sql("SELECT 1 FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'",
                         node2.name)
        return bool(rows)
    wait_for(streaming, timeout, f"node2 streaming after {method}", interval=0.1)
    seconds = round(time.monotonic() - started, 2)
    log = node2.log_text()
    if method == "basebackup":
        build = method_seconds(log, "trying to bootstrap from leader", "replica created by basebackup")
    else:
        build = method_seconds(log, f"creating replica by method {method}", f"replica created by method {method}")
    size = node2.sql("SELECT pg_database_size(current_database())")[0][0]
    print(f"{method}: streaming {seconds}s after start (building the data directory {build}s)", flush=True)
    return {"method": method, "to_streaming_s": seconds, "build_s": build, "database_bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="size of the loaded data (pgbench tables)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds a build may take")
    args = ap.parse_args()
    become_subreaper()
    scale = max(1, args.size_mb // MB_PER_SCALE)
    settings = {"size_mb": args.size_mb, "pgbench_scale": scale, "runs": args.runs, "nodes": 2,
                "basebackup_options": ["--checkpoint=fast"], "backup": "pg_basebackup -X none -c fast, copied by cp -a",
                "restore_command": "cp from a local archive directory", "writes_during_build": "pgbench -R 50 -c 2"}
    head = record.header("replica_build", "basebackup-vs-restore", {"name": "hasup"}, settings)
    runs: list[dict[str, Any]] = []
    with TestCluster(2) as tc:
        node1, node2 = tc.nodes
        archive = os.path.join(tc.base, "archive")
        backup = os.path.join(tc.base, "backup")
        os.makedirs(archive)
        if tc.owner:
            os.chown(archive, *tc.owner)
        restore = os.path.join(tc.base, "restore.sh")
        with open(restore, "w") as f:
            f.write(RESTORE)
        os.chmod(restore, 0o755)
        node1.extra = {"postgresql.parameters.archive_mode": "on",
                       "postgresql.parameters.archive_command": f"test ! -f {archive}/%f && cp %p {archive}/%f",
                       "postgresql.parameters.max_wal_size": "1GB"}
        node1.start()
        tc.wait_leader(120)
        env = {"PGPASSWORD": SUPERUSER_PASSWORD}
        conn = ["-h", "127.0.0.1", "-p", str(node1.pg_port), "-U", "postgres"]
        print(f"loading pgbench scale {scale} (about {args.size_mb} MB)", flush=True)
        as_owner(tc, [f"{PG_BIN}/pgbench", "-i", "-q", "-s", str(scale), *conn, "postgres"], env, 3600)
        as_owner(tc, [f"{PG_BIN}/pg_basebackup", "-D", backup, "-X", "none", "-c", "fast", "-h", "127.0.0.1",
                      "-p", str(node1.pg_port), "-U", "replicator"], {"PGPASSWORD": REPLICATION_PASSWORD}, 3600)
        owner = {"user": tc.owner[0], "group": tc.owner[1], "extra_groups": []} if tc.owner else {}
        writes = subprocess.Popen([f"{PG_BIN}/pgbench", "-R", "50", "-c", "2", "-T", "36000", "-n", *conn,
                                   "postgres"], env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, **owner)  # type: ignore[call-overload]
        try:
            for _ in range(args.runs):
                runs.append(build_once(tc, "basebackup", {}, args.timeout))
                runs.append(build_once(tc, "restore", {
                    "postgresql.create_replica_methods": ["restore"],
                    "postgresql.restore": {"command": restore, "backup": backup},
                    "postgresql.recovery_conf": {"restore_command": f"cp {archive}/%f %p"},
                }, args.timeout))
        finally:
            writes.terminate()
            writes.wait(30)
    record.save("replica-build-hasup.json", head, {"runs": runs})


if __name__ == "__main__":
    main()
