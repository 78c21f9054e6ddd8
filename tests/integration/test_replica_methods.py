"""Restoring from backups: a replica built by a create_replica_methods script (a base backup kept in a
directory, WAL from the archive the primary fills through archive_command) after a hanging method was
killed at its timeout; then a new cluster bootstrapped by a custom bootstrap.method from the same
backup and archive, recovered to a restore point, promoted to a new timeline.

One two-node cluster: node1 bootstraps by initdb and archives; node2 joins by the methods.  The
bootstrap-method cluster is one more node (its own scope) on the same etcd.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.harness import PG_BIN, REPLICATION_PASSWORD, Node, TestCluster, alive, wait_for

HANG = """#!/bin/sh
# A backup tool that hangs: it and the helper it started must both be gone after the timeout.
sleep 600 &
echo $$ $! > "{pids}"
wait
"""

# Restores the base backup named by --backup into --datadir; records the arguments it was given.
RESTORE = """#!/bin/sh
for arg; do
    case "$arg" in
        --datadir=*) DATADIR="${arg#--datadir=}" ;;
        --backup=*) BACKUP="${arg#--backup=}" ;;
    esac
done
printf '%s\\n' "$@" > "$DATADIR/../restore-args"
cp -a "$BACKUP"/. "$DATADIR"/
"""

# restore_command: fetches a WAL file from the archive and notes which one it served.
FETCH = """#!/bin/sh
cp "{archive}/$1" "$2" && echo "$1" >> "$(dirname "$2")/../../fetched-wal"
"""


def _script(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


class Setup:
    def __init__(self, tc: TestCluster) -> None:
        self.tc = tc
        base = tc.base
        self.archive = os.path.join(base, "archive")
        self.backup = os.path.join(base, "backup")
        os.makedirs(self.archive)
        if tc.owner:
            os.chown(self.archive, *tc.owner)
        self.pids_file = os.path.join(base, "hang.pids")
        self.hang = _script(os.path.join(base, "hang.sh"), HANG.format(pids=self.pids_file))
        self.restore = _script(os.path.join(base, "restore.sh"), RESTORE)
        self.fetch = _script(os.path.join(base, "fetch.sh"), FETCH.format(archive=self.archive))

    def as_owner(self, argv: list[str], **env: str) -> None:
        owner = self.tc.owner
        kwargs = {"user": owner[0], "group": owner[1], "extra_groups": []} if owner else {}
        subprocess.run(argv, check=True, timeout=120, env={**os.environ, **env}, capture_output=True, **kwargs)


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with TestCluster(2) as tc:
        s = Setup(tc)
        node1, node2 = tc.nodes
        node1.extra = {"postgresql.parameters.archive_mode": "on",
                       "postgresql.parameters.archive_command": f"test ! -f {s.archive}/%f && cp %p {s.archive}/%f"}
        node2.extra = {
            "postgresql.create_replica_methods": ["hang", "restore", "basebackup"],
            "postgresql.hang": {"command": s.hang, "hasup_timeout": 3, "keep_data": False},
            "postgresql.restore": {"command": s.restore, "backup": s.backup},
            "postgresql.recovery_conf": {"restore_command": f"{s.fetch} %f %p"},
        }
        node1.start()
        tc.wait_leader(90)
        yield s


def test_a_replica_built_by_a_restore_method_streams_after_a_hung_method_is_killed(setup: Setup) -> None:
    tc = setup.tc
    node1, node2 = tc.nodes
    node1.sql("CREATE TABLE restored (id int PRIMARY KEY, phase text)")
    node1.sql("INSERT INTO restored VALUES (1, 'before backup')")
    # Without WAL in the backup, the replica can become consistent only through restore_command.
    setup.as_owner([f"{PG_BIN}/pg_basebackup", "-D", setup.backup, "-X", "none", "-c", "fast", "-h", "127.0.0.1",
                    "-p", str(node1.pg_port), "-U", "replicator"], PGPASSWORD=REPLICATION_PASSWORD)
    node1.sql("INSERT INTO restored VALUES (2, 'after backup')")
    node1.sql("SELECT pg_switch_wal()")
    node2.start()
    tc.wait_streaming(node1, [node2], 120)
    # The hanging method was killed with the helper it started, then the restore method ran.
    with open(setup.pids_file) as f:
        pids = [int(p) for p in f.read().split()]
    assert len(pids) == 2 and not any(alive(p) for p in pids)
    log = node2.log_text()
    assert "replica method hang still running after 3s: killing its process group" in log
    assert "replica created by method restore" in log and "replica created by basebackup" not in log
    with open(os.path.join(node2.dir, "restore-args")) as f:
        args = f.read().splitlines()
    assert f"--backup={setup.backup}" in args and "--role=replica" in args and f"--scope={tc.scope}" in args
    assert f"--datadir={node2.data_dir}" in args
    connstring = next(a for a in args if a.startswith("--connstring="))
    assert f"port={node1.pg_port}" in connstring and "user=replicator" in connstring and "password" not in connstring
    with open(os.path.join(node2.dir, "fetched-wal")) as f:
        assert f.read().split(), "the replica fetched no WAL from the archive"
    node1.sql("INSERT INTO restored VALUES (3, 'streamed')")
    wait_for(lambda: node2.sql("SELECT count(*) FROM restored")[0][0] == 3, 30, "node2 to replay every row")
    assert node2.sql("SELECT pg_is_in_recovery()")[0][0]
    assert node2.sql("SELECT current_setting('restore_command')")[0][0] == f"{setup.fetch} %f %p"


def test_a_cluster_bootstrapped_by_a_custom_method_is_recovered_to_its_target_on_a_new_timeline(
        setup: Setup) -> None:
    tc = setup.tc
    node1 = tc.nodes[0]
    if not os.path.exists(os.path.join(setup.backup, "PG_VERSION")):
        pytest.skip("needs the base backup of the replica test")
    node1.sql("CREATE TABLE pitr (id int, phase text)")
    node1.sql("INSERT INTO pitr VALUES (1, 'before target')")
    node1.sql("SELECT pg_create_restore_point('pitr_target')")
    node1.sql("INSERT INTO pitr VALUES (2, 'after target')")
    switched = node1.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    source_timeline = node1.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0]
    wait_for(lambda: (node1.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "") >= switched, 30,
             f"node1 to archive {switched}")
    scope = tc.scope + "pitr"
    restored = Node("pitr1", tc.base, scope, tc.etcd.port, tc.owner, tc.dcs)
    restored.extra = {
        "bootstrap.method": "pitr",
        "bootstrap.pitr": {"command": setup.restore, "backup": setup.backup, "recovery_conf": {
            "restore_command": f"cp {setup.archive}/%f %p", "recovery_target_name": "pitr_target",
            "recovery_target_action": "promote"}},
        "bootstrap.post_bootstrap": f"{PG_BIN}/psql -v ON_ERROR_STOP=1 -c 'CREATE TABLE pitr_post_bootstrap ()' -d",
    }
    try:
        restored.start()

        def leading() -> bool:
            if tc.etcd.value(f"/service/{scope}/leader") != "pitr1":
                return False
            return not restored.sql("SELECT pg_is_in_recovery()")[0][0]
        wait_for(leading, 120, "the restored cluster's node to lead")
        assert restored.sql("SELECT phase FROM pitr ORDER BY id") == [("before target",)]
        timeline = restored.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0]
        assert timeline > source_timeline
        assert restored.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'pitr_post_bootstrap'")[0][0] == 1
        log = restored.log_text()
        assert "bootstrapped by method pitr" in log
        assert restored.status()["state"] == "running" and restored.status()["role"] in ("primary", "master")
    finally:
        restored.stop(timeout=30)
