"""Rendering PostgreSQL's configuration files: postgresql.conf, pg_hba.conf, pgpass, recovery.

Load order inside PostgreSQL (lowest first): postgresql.base.conf or
custom_conf (included from the top of our postgresql.conf), our
postgresql.conf, postgresql.auto.conf, then the postmaster command line,
which carries only the few COMMAND_LINE parameters (no value there is secret).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from hasup.config import Config, Credentials, DynamicConfig
from hasup.config.values import parameter_problem, shown

# Parameters hasup owns, their defaults and minimums (docs/operations.md, "PostgreSQL parameters hasup
# controls").  They must match on every node, so only the dynamic config may change them.
CONTROLLED_DEFAULTS: dict[str, Any] = {
    "max_connections": 100,
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "max_worker_processes": 8,
    "max_prepared_transactions": 0,
    "max_locks_per_transaction": 64,
    "track_commit_timestamp": "off",
    "wal_level": "replica",
    "wal_log_hints": "on",
    "hot_standby": "on",
    "wal_keep_size": "128MB",
}
CONTROLLED_MINIMUMS = {
    "max_connections": 25, "max_wal_senders": 3, "max_replication_slots": 4, "max_worker_processes": 2,
    "max_prepared_transactions": 0, "max_locks_per_transaction": 32,
}
# Written to postgresql.conf only, not the command line.
CONF_ONLY = {"wal_keep_size"}
NOT_SETTABLE = {"listen_addresses", "port", "cluster_name", "hba_file", "ident_file", "primary_conninfo",
                "primary_slot_name", "recovery_target_timeline"}
# The only parameters on the postmaster's command line, as in Patroni: the ones every node must
# agree on or that say where it listens, so that ALTER SYSTEM (postgresql.auto.conf) cannot override
# them. None holds a secret. Everything else goes only into postgresql.conf (0600): any local user
# can read a command line through ps or /proc/<pid>/cmdline.
COMMAND_LINE = (frozenset(CONTROLLED_DEFAULTS) - CONF_ONLY) | {"listen_addresses", "port", "cluster_name"}


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def effective_parameters(cfg: Config, dynamic: DynamicConfig) -> tuple[dict[str, Any], list[str]]:
    """Parameters PostgreSQL runs with, and warnings for values that were overridden."""
    warnings: list[str] = []
    params: dict[str, Any] = {}
    spelling: dict[str, str] = {}  # lower-case name -> its key in params
    # Dynamic first, local over it, except the controlled ones which are dynamic-only. The loaders
    # have checked names and values already; checking again here keeps anything that bypassed them
    # out of postgresql.conf, where one bad line stops PostgreSQL from starting.
    for source in (dynamic.parameters, cfg.postgresql.parameters):
        for k, v in (source or {}).items():
            problem = parameter_problem(k, v)
            if problem is not None:
                warnings.append(f"postgresql.parameters: {shown(k)}: {problem}; ignored")
                continue
            if v is None:
                continue  # null means unset; rendered it would be the string 'None'
            # PostgreSQL's names are case-insensitive: `Port` is `port`.
            name = k.lower()
            if name in NOT_SETTABLE:
                warnings.append(f"postgresql.parameters.{k}: managed by hasup, ignored")
                continue
            if source is cfg.postgresql.parameters and name in CONTROLLED_DEFAULTS:
                if dynamic.parameters.get(name) is None:
                    warnings.append(f"postgresql.parameters.{k}: set it in the dynamic configuration; "
                                    "local value ignored")
                continue
            # One line per parameter: a later source's spelling replaces an earlier one's.
            earlier = spelling.pop(name, None)
            if earlier is not None:
                del params[earlier]
            spelling[name] = key = name if name in CONTROLLED_DEFAULTS else k
            params[key] = v
    for k, default in CONTROLLED_DEFAULTS.items():
        v = params.get(k)
        if v is None:
            params[k] = default
        elif k in CONTROLLED_MINIMUMS:
            n = _as_int(v)
            if n is None or n < CONTROLLED_MINIMUMS[k]:
                warnings.append(f"postgresql.parameters.{k}: {v!r} is below the minimum "
                                f"{CONTROLLED_MINIMUMS[k]}; using {default}")
                params[k] = default
    if str(params.get("wal_level")) == "hot_standby":
        params["wal_level"] = "replica"
    hosts = cfg.postgresql.listen_hosts
    params["listen_addresses"] = ",".join(hosts)
    params["port"] = cfg.postgresql.port
    params["cluster_name"] = cfg.scope
    return params, warnings


# Inside a quoted postgresql.conf value a raw line break ends the file's line (a syntax error that
# stops PostgreSQL), so control characters go as the escapes its lexer decodes.
_CONF_ESCAPES = {"\\": "\\\\", "'": "''", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def quote(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    text = "".join(_CONF_ESCAPES.get(c, c) for c in str(value))
    return "'" + text + "'"


def command_line_options(params: Mapping[str, Any]) -> list[str]:
    """The postmaster's `--name=value` options: only the COMMAND_LINE parameters (see there)."""
    return [f"--{k}={v if not isinstance(v, bool) else ('on' if v else 'off')}"
            for k, v in sorted(params.items()) if k in COMMAND_LINE]


def render_postgresql_conf(cfg: Config, params: Mapping[str, Any], recovery: Mapping[str, Any]) -> str:
    pg = cfg.postgresql
    base = pg.custom_conf or os.path.join(pg.config_dir, "postgresql.base.conf")
    lines = [
        "# Written by hasup; changes here are overwritten.  Set parameters in the",
        "# hasup configuration (dynamic: hasupctl edit-config) or with ALTER SYSTEM.",
        f"include {quote(base)}",
        "",
    ]
    lines += [f"{k} = {quote(v)}" for k, v in sorted(params.items())]
    lines.append(f"hba_file = {quote(os.path.join(pg.config_dir, 'pg_hba.conf'))}")
    lines.append(f"ident_file = {quote(os.path.join(pg.config_dir, 'pg_ident.conf'))}")
    for k, v in sorted(recovery.items()):
        lines.append(f"{k} = {quote(v)}")
    return "\n".join(lines) + "\n"


def render_pg_hba(cfg: Config, dynamic: DynamicConfig) -> str | None:
    """The whole pg_hba.conf from postgresql.pg_hba (local wins over dynamic), else None (keep the file)."""
    lines = cfg.postgresql.pg_hba if cfg.postgresql.pg_hba is not None else dynamic.pg_hba
    if lines is None:
        return None
    return "# Written by hasup from postgresql.pg_hba\n" + "\n".join(lines) + "\n"


def parse_conn_url(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return u.hostname or "127.0.0.1", u.port or 5432


def libpq_quote(value: str) -> str:
    if value and all(c.isalnum() or c in "._-/:" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def dsn(host: str, port: int, creds: Credentials, dbname: str | None = None, **extra: Any) -> str:
    """A libpq DSN without the password (it comes from the pgpass file)."""
    parts = {"host": host, "port": str(port), "user": creds.username}
    if dbname:
        parts["dbname"] = dbname
    if creds.sslmode:
        parts["sslmode"] = creds.sslmode
    parts.update({k: str(v) for k, v in extra.items() if v is not None})
    return " ".join(f"{k}={libpq_quote(v)}" for k, v in parts.items())


# A replica blanks every recovery target: set in an included file or left by a backup, one would make
# it stop, pause or promote on its own instead of following its leader.
BLANK_TARGETS = {name: "" for name in ("recovery_target", "recovery_target_name", "recovery_target_time",
                                       "recovery_target_xid", "recovery_target_lsn")}


def archive_settings(recovery_conf: Mapping[str, Any]) -> dict[str, Any]:
    """What a replica takes from recovery settings: fetching WAL from an archive (restore_command),
    cleaning it, a replay delay; never a recovery target or where to stream from."""
    return {k: v for k, v in recovery_conf.items()
            if not k.startswith("recovery_target") and k not in ("primary_conninfo", "primary_slot_name")}


def recovery_parameters(cfg: Config, leader_conn_url: str | None, slot: str | None,
                        archive: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Settings that make PostgreSQL a replica (PG >= 12: postgresql.conf + standby.signal): it streams
    from the leader and, with a restore_command in `archive` (default: postgresql.recovery_conf),
    fetches from the archive what it cannot stream."""
    params: dict[str, Any] = {**BLANK_TARGETS,
                              **archive_settings(cfg.postgresql.recovery_conf if archive is None else archive)}
    params["recovery_target_timeline"] = "latest"
    if leader_conn_url:
        host, port = parse_conn_url(leader_conn_url)
        params["primary_conninfo"] = dsn(
            host, port, cfg.postgresql.replication, application_name=cfg.name,
            passfile=cfg.postgresql.pgpass, gssencmode="prefer", target_session_attrs="any")
        if slot:
            params["primary_slot_name"] = slot
    return params


def target_recovery_parameters(recovery_conf: Mapping[str, Any]) -> dict[str, Any]:
    """Settings of an archive recovery to a target (PG >= 12: postgresql.conf + recovery.signal): a
    custom bootstrap's recovery_conf as given, nothing streamed."""
    return {k: v for k, v in recovery_conf.items() if k not in ("primary_conninfo", "primary_slot_name")}


def pgpass_line(host: str, port: int | str, creds: Credentials, database: str = "*") -> str | None:
    if not creds.password:
        return None

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace(":", "\\:")
    return ":".join(esc(str(x)) for x in (host, port, database, creds.username, creds.password))


def write_pgpass(cfg: Config) -> None:
    """One pgpass file (0600) holds every password hasup's connections need."""
    pg = cfg.postgresql
    lines = []
    for creds in (pg.superuser, pg.replication, pg.rewind):
        for db in ("*", "replication") if creds is pg.replication else ("*",):
            line = pgpass_line("*", "*", creds, db)
            if line and line not in lines:
                lines.append(line)
    write_private(pg.pgpass, "".join(line + "\n" for line in lines))


def write_private(path: str, text: str, mode: int = 0o600) -> None:
    """Atomically replace path with text, readable only by us."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".hasup-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

