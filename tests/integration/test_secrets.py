"""Secrets on a real node: no role password in PostgreSQL's log (with every statement logged), none
in hasup's log after a reload with a changed password, and no parameter value on the postmaster's
command line, where any local user can read it.

One node is enough: the roles are created once, by the node that bootstraps the cluster.
"""

from __future__ import annotations

import glob
import os
import signal
import stat

import psycopg2
import pytest

from hasup.postgresql.conf import COMMAND_LINE
from tests.harness import SECRETS, TestCluster, wait_for

REWIND_PASSWORD = "rewind-secret-5e1f"
# Not ASCII, so PostgreSQL SASLprep's it: logging in proves hasup prepared it the same way
# (a soft hyphen is dropped, the ligature becomes "fi", a no-break space a space).
UNICODE_PASSWORD = "unicode-secret-\u00e4\u00ad\ufb01\u00a0z"
PLAIN_PASSWORD = "ascii-secret-'quote'-\\-$$"
CHANGED_PASSWORD = "changed-secret-77aa"
MARKER = "parameter-secret-3b9d"  # the value of a custom parameter: the file may hold it, argv never
ALL_SECRETS = (*SECRETS, REWIND_PASSWORD, UNICODE_PASSWORD, PLAIN_PASSWORD, CHANGED_PASSWORD, MARKER)


@pytest.fixture(scope="module")
def tc():
    c = TestCluster(1)
    node = c.nodes[0]
    parameters = dict(node.config()["postgresql"]["parameters"])
    parameters.update({"log_statement": "all", "log_min_duration_statement": 0, "log_min_error_statement": "info",
                       "hasup_test.marker": MARKER})
    node.extra["postgresql.parameters"] = parameters
    node.extra["postgresql.authentication.rewind"] = {"username": "rewinder", "password": REWIND_PASSWORD}
    users = dict(node.config()["bootstrap"]["users"])
    users.update({"unicode_user": {"password": UNICODE_PASSWORD}, "plain_user": {"password": PLAIN_PASSWORD}})
    node.extra["bootstrap.users"] = users
    with c:  # starts etcd; destroys everything on the way out
        c.start_all()
        yield c


def postgres_logs(node) -> str:
    """Everything PostgreSQL logged: its stderr goes to the node's log; a logging_collector would write
    under the data directory."""
    texts = [node.log_text()]
    texts += [read(path) for path in glob.glob(os.path.join(node.data_dir, "log*", "*"))]
    return "\n".join(texts)


def read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def leaked(text: str) -> list[str]:
    return [secret for secret in ALL_SECRETS if secret in text]


def test_no_password_reaches_postgresqls_log_while_it_logs_every_statement(tc: TestCluster) -> None:
    node = tc.nodes[0]
    text = postgres_logs(node)
    assert "statement: SELECT name FROM pg_catalog.pg_settings" in text  # the role session was logging...
    assert "ALTER ROLE" not in text and "CREATE ROLE" not in text  # ...until it turned logging off
    assert leaked(text) == []


@pytest.mark.parametrize(("user", "password"), [
    ("replicator", SECRETS[1]), ("rewinder", REWIND_PASSWORD), ("app", SECRETS[2]),
    ("unicode_user", UNICODE_PASSWORD), ("plain_user", PLAIN_PASSWORD),
])
def test_every_role_logs_in_with_its_password_through_scram(tc: TestCluster, user: str, password: str) -> None:
    node = tc.nodes[0]
    [(secret,)] = node.sql("SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = %s", user)
    assert secret.startswith("SCRAM-SHA-256$4096:")
    conn = psycopg2.connect(host=node.host, port=node.pg_port, user=user, password=password, dbname="postgres",
                            connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == (user,)
    finally:
        conn.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host=node.host, port=node.pg_port, user=user, password=password + "x", dbname="postgres",
                         connect_timeout=5).close()


def test_the_postmaster_command_line_holds_no_parameter_value(tc: TestCluster) -> None:
    node = tc.nodes[0]
    pid = node.postmaster_pid()
    assert pid is not None
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    assert leaked(" ".join(argv)) == []
    options = [arg for arg in argv if arg.startswith("--")]
    assert "-c" not in argv
    assert {arg[2:].partition("=")[0] for arg in options} - {"config-file"} <= COMMAND_LINE
    assert node.sql("SHOW hasup_test.marker") == [(MARKER,)]  # it is set, from the file
    conf = os.path.join(node.data_dir, "postgresql.conf")
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(node.dir, "pgpass")).st_mode) == 0o600


def test_a_reload_with_a_changed_password_logs_no_password(tc: TestCluster) -> None:
    node = tc.nodes[0]
    node.extra["postgresql.authentication.replication"] = {"username": "replicator", "password": CHANGED_PASSWORD}
    node.prepare()  # rewrite hasup.yml
    before = node.log_text().count("configuration reloaded")
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: node.log_text().count("configuration reloaded") > before, 30, "the reload")
    wait_for(lambda: CHANGED_PASSWORD in read(os.path.join(node.dir, "pgpass")), 30, "the new pgpass file")
    node.sql("SELECT 1")  # a statement after the reload, logged
    assert leaked(postgres_logs(node)) == []
