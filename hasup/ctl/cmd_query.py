"""query: run SQL on a member over a direct libpq connection (psycopg2) and print the result."""

from __future__ import annotations

from typing import IO, Any

import click
import psycopg2

from hasup.ctl import output
from hasup.ctl.base import Ctl, CtlError, cli, echo_lines, one_line, pass_ctl, role_option, watch_options, watching
from hasup.ctl.cmd_show import pick_member
from hasup.ctl.views import conn_params
from hasup.dcs.model import Member

CONNECT_TIMEOUT = 5


def run_sql(member: Member, sql: str, params: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(column names, rows) of the last statement; ([], []) when it returns no rows."""
    conn = psycopg2.connect(**{**conn_params(member), **params, "connect_timeout": CONNECT_TIMEOUT,
                               "fallback_application_name": "hasupctl"})
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
            if cur.description is None:
                return [], []
            return [d.name for d in cur.description], [list(r) for r in cur.fetchall()]
    finally:
        conn.close()


def _is_replica(member: Member, params: dict[str, Any]) -> bool:
    _, rows = run_sql(member, "SELECT pg_catalog.pg_is_in_recovery()", params)
    return bool(rows and rows[0][0])


@cli.command()
@click.argument("cluster_name", required=False)
@click.option("-c", "--command", "command", help="the SQL to run")
@click.option("-f", "--file", "sql_file", type=click.File("r"), help="run the SQL in this file (- for stdin)")
@click.option("-U", "--username", help="database user (default: libpq's)")
@click.option("--password", is_flag=True, help="prompt for the password (else libpq's: PGPASSWORD, .pgpass)")
@click.option("-d", "--dbname", help="database (default: the one in the member's conn_url)")
@role_option(None, "run on the first member with this role (default: the leader)")
@click.option("-m", "--member", help="run on this member")
@click.option("--format", "fmt", type=click.Choice(output.FORMATS), default="tsv", help="output format (default tsv)")
@click.option("--delimiter", default="\t", help="column delimiter of the tsv format")
@watch_options
@pass_ctl
def query(ctl: Ctl, cluster_name: str | None, command: str | None, sql_file: IO[str] | None, username: str | None,
          password: bool, dbname: str | None, role: str | None, member: str | None, fmt: str, delimiter: str,
          watch: float | None, watch_2s: bool, watch_count: int | None) -> None:
    """Run SQL on the leader or on a member chosen by role or name."""
    if command and sql_file:
        raise CtlError("--command and --file are mutually exclusive options")
    sql = command if command else sql_file.read() if sql_file else None
    if not sql:
        raise CtlError("give the SQL with --command or --file")
    scope = ctl.scope(cluster_name)
    params: dict[str, Any] = {}
    if username:
        params["user"] = username
    if password:
        params["password"] = click.prompt("Password", hide_input=True, type=str)
    if dbname:
        params["dbname"] = dbname
    for _ in watching(watch, watch_2s, watch_count):
        target = pick_member(ctl.cluster(scope), scope, role, member)
        try:
            if role in ("replica", "standby") and not _is_replica(target, params):
                raise CtlError(f"member {target.name} is not in recovery")
            columns, rows = run_sql(target, sql, params)
        except psycopg2.Error as exc:
            raise CtlError(f"{target.name}: {one_line(exc)}") from None
        if not columns:
            continue
        if fmt == "tsv":
            echo_lines([delimiter.join(columns)] + [delimiter.join(output.cell(v) for v in r) for r in rows])
        else:
            echo_lines(output.render(columns, rows, fmt))
