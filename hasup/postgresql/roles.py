"""Creating roles with their passwords, so that no password reaches PostgreSQL's log.

Two layers. The password is sent as a verifier computed here (hasup.postgresql.scram), never as
the password itself. And the transaction that sets it first turns off, for itself only (SET
LOCAL), everything that would write statement text somewhere: statement logging, duration and
sample logging, the statement of a failed command, parse-tree dumps, pg_stat_statements' record of
utility commands. Each setting is a separate statement: PostgreSQL decides whether to log a query
string before running any of it, so a setting sent in the same string as ALTER ROLE would be late.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from hasup.postgresql.scram import verifier

# (parameter, value for this transaction). Only those the server has are set (pg_settings): older
# servers lack the sampling ones, and pg_stat_statements' only exists when the module is loaded.
QUIET_SETTINGS = (
    ("log_statement", "none"),
    ("log_min_duration_statement", "-1"),
    ("log_min_duration_sample", "-1"),
    ("log_transaction_sample_rate", "0"),
    ("log_min_error_statement", "panic"),  # a failing ALTER ROLE would be logged with its text
    ("debug_print_parse", "off"),  # parse trees carry the literals
    ("debug_print_rewritten", "off"),
    ("debug_print_plan", "off"),
    ("pg_stat_statements.track_utility", "off"),
)


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class Role:
    """A login role to create (if missing) and configure; options are ALTER ROLE keywords."""

    name: str
    password: str | None = field(default=None, repr=False)
    options: tuple[str, ...] = ()


def role_statements(role: Role, encryption: str) -> list[str]:
    """SQL creating `role` if missing and setting LOGIN, its options and its password, the password
    as the verifier the server's `encryption` (its password_encryption) calls for."""
    opts = " ".join(("LOGIN", *role.options))
    password = f" PASSWORD {literal(verifier(role.password, role.name, encryption))}" if role.password else ""
    return [
        "DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = "
        f"{literal(role.name)}) THEN CREATE ROLE {ident(role.name)}; END IF; END$$",
        f"ALTER ROLE {ident(role.name)} WITH {opts}{password}",
    ]


def quiet(cur: Any) -> None:
    """Turn off, for the current transaction, every setting in QUIET_SETTINGS the server has."""
    cur.execute("SELECT name FROM pg_catalog.pg_settings WHERE name = ANY(%s)", ([n for n, _ in QUIET_SETTINGS],))
    present = {row[0] for row in cur.fetchall()}
    for name, value in QUIET_SETTINGS:
        if name in present:
            cur.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, value))


def create_roles(dsn: str, roles: Sequence[Role], grants: Sequence[str] = (), timeout: float = 30.0) -> None:
    """Create and configure `roles`, then run `grants`, in one transaction with logging off (see the
    module's docstring); as the superuser, since the quiet settings are superuser-only."""
    conn = psycopg2.connect(dsn, connect_timeout=max(1, int(timeout)))
    try:
        with conn, conn.cursor() as cur:  # one transaction: committed at the end, rolled back on error
            cur.execute("SELECT pg_catalog.set_config('statement_timeout', %s, true)", (str(int(timeout * 1000)),))
            quiet(cur)
            cur.execute("SELECT pg_catalog.current_setting('password_encryption')")
            row = cur.fetchone()
            encryption = str(row[0]) if row else "scram-sha-256"
            for role in roles:
                for statement in role_statements(role, encryption):
                    cur.execute(statement)
            for statement in grants:
                cur.execute(statement)
    finally:
        conn.close()
