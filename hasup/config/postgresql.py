"""The postgresql section: the server's addresses, directories, roles, parameters and hooks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from hasup.config.addresses import host_port, to_pg_listen
from hasup.config.dynamic import read_parameters
from hasup.config.methods import read_recovery_conf, read_replica_methods
from hasup.config.model import Credentials, PostgresConfig
from hasup.config.schema import BASEBACKUP_FORBIDDEN, CALLBACK_ACTIONS, PG_USED, Reader
from hasup.config.values import (
    DAY,
    HOUR,
    int_between,
    leaf,
    seconds_between,
    shown,
    to_bool,
    to_command,
    to_str,
    to_str_list,
)
from hasup.timing import DEFAULT_CALLBACK_TIMEOUT, DEFAULT_HEALTH_DEADLINE, MIN_HEALTH_DEADLINE


def _credentials(r: Reader, auth: Mapping[str, Any], role: str) -> Credentials | None:
    path = f"postgresql.authentication.{role}"
    sec = r.section(auth, path)
    username = r.require(sec, f"{path}.username", to_str)
    password = r.get(sec, f"{path}.password", to_str, None)
    sslmode = r.get(sec, f"{path}.sslmode", to_str, None)
    r.ignore_rest(sec, path, ("username", "password", "sslmode"))
    return None if username is None else Credentials(username, password, sslmode)


def _authentication(
    r: Reader, sec: Mapping[str, Any]
) -> tuple[Credentials | None, Credentials | None, Credentials | None]:
    auth = r.section(sec, "postgresql.authentication")
    superuser = _credentials(r, auth, "superuser")
    replication = _credentials(r, auth, "replication")
    rewind = _credentials(r, auth, "rewind") if auth.get("rewind") is not None else superuser
    r.ignore_rest(auth, "postgresql.authentication", ("superuser", "replication", "rewind"))
    return superuser, replication, rewind


def read_postgresql(r: Reader, top: Mapping[str, Any]) -> PostgresConfig | None:
    """The postgresql section; None when a required key is missing (every other key is still checked)."""
    sec = r.section(top, "postgresql")
    listen = r.require(sec, "postgresql.listen", to_pg_listen)
    connect_address = r.require(sec, "postgresql.connect_address", host_port())
    data_dir = r.require(sec, "postgresql.data_dir", to_str)
    config_dir = r.get(sec, "postgresql.config_dir", to_str, "") or data_dir or ""
    superuser, replication, rewind = _authentication(r, sec)
    methods, method_settings = read_replica_methods(r, sec, PG_USED)
    # Built even when a required key is missing, so every other key is still checked and reported.
    settings = PostgresConfig(
        listen=listen or "",
        connect_address=connect_address or "",
        data_dir=data_dir or "",
        bin_dir=r.get(sec, "postgresql.bin_dir", to_str, ""),
        config_dir=config_dir,
        pgpass=os.path.expanduser(r.get(sec, "postgresql.pgpass", to_str, "~/pgpass")),
        superuser=superuser or Credentials(""),
        replication=replication or Credentials(""),
        rewind=rewind or Credentials(""),
        parameters=read_parameters(r, sec, "postgresql.parameters"),
        pg_hba=r.get(sec, "postgresql.pg_hba", to_str_list, None),
        pg_ctl_timeout=r.get(sec, "postgresql.pg_ctl_timeout", int_between(1, DAY), 60),
        use_pg_rewind=r.get(sec, "postgresql.use_pg_rewind", to_bool, None),
        custom_conf=r.get(sec, "postgresql.custom_conf", to_str, None),
        database=r.get(sec, "postgresql.database", to_str, "postgres"),
        basebackup=read_options(r, sec, "postgresql.basebackup", BASEBACKUP_FORBIDDEN),
        health_deadline=r.get(sec, "postgresql.health_deadline", seconds_between(MIN_HEALTH_DEADLINE, HOUR),
                              DEFAULT_HEALTH_DEADLINE),
        callbacks=_callbacks(r, sec),
        callback_timeout=r.get(sec, "postgresql.callback_timeout", seconds_between(1, HOUR),
                               DEFAULT_CALLBACK_TIMEOUT),
        pre_promote=r.get(sec, "postgresql.pre_promote", to_command, ""),
        before_stop=r.get(sec, "postgresql.before_stop", to_command, ""),
        remove_data_directory_on_rewind_failure=r.get(
            sec, "postgresql.remove_data_directory_on_rewind_failure", to_bool, False),
        remove_data_directory_on_diverged_timelines=r.get(
            sec, "postgresql.remove_data_directory_on_diverged_timelines", to_bool, False),
        create_replica_methods=methods,
        replica_methods=method_settings,
        recovery_conf=read_recovery_conf(r, sec, "postgresql.recovery_conf", targets=False),
    )
    r.ignore_rest(sec, "postgresql", (*PG_USED, *method_settings), dynamic_only=("use_slots",))
    required = (listen, connect_address, data_dir, superuser, replication, rewind)
    return None if any(v is None for v in required) else settings


def _callbacks(r: Reader, sec: Mapping[str, Any]) -> dict[str, str]:
    section = r.section(sec, "postgresql.callbacks")
    commands = {}
    for action in CALLBACK_ACTIONS:
        command = r.get(section, f"postgresql.callbacks.{action}", to_command, "")
        if command:
            commands[action] = command
    r.ignore_rest(section, "postgresql.callbacks", CALLBACK_ACTIONS)
    return commands


def read_options(r: Reader, section: Mapping[str, Any], path: str, forbidden: frozenset[str]) -> tuple[str, ...]:
    """initdb or pg_basebackup options at `path`, rendered as arguments; each bad entry is a problem."""
    value = section.get(leaf(path))
    if value is None:
        return ()
    options, problems = render_options(value, forbidden)
    for where, message in problems:
        r.problem(path + where, message)
    return options


# -- command-line options (initdb, pg_basebackup) ------------------------------------------


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def render_options(value: Any, forbidden: frozenset[str]) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    """Render `[flag, {name: value}, ...]` (or one mapping) to `--flag`, `--name=value`.

    Returns the options and a list of (index suffix, message) problems, e.g. ("[2]", "...").
    """
    if isinstance(value, dict):
        items: list[Any] = [{k: v} for k, v in value.items()]
        label = [f".{k}" for k in value]
    elif isinstance(value, list):
        items = value
        label = [f"[{i}]" for i in range(len(value))]
    else:
        return (), [("", f"expected a list of options, got {shown(value)}")]
    options: list[str] = []
    problems: list[tuple[str, str]] = []
    for where, item in zip(label, items, strict=True):
        rendered, problem = _render_one(item, forbidden)
        if problem:
            problems.append((where, problem))
        elif rendered:
            options.append(rendered)
    return tuple(options), problems


def _render_one(item: Any, forbidden: frozenset[str]) -> tuple[str | None, str | None]:
    if isinstance(item, str):
        name, argument = item.strip().lstrip("-"), None
    elif isinstance(item, dict) and len(item) == 1:
        key, raw = next(iter(item.items()))
        if not isinstance(key, str) or isinstance(raw, bool) or not isinstance(raw, str | int):
            return None, "expected a string or a one-key mapping of string values"
        name, argument = key.strip().lstrip("-"), _unquote(str(raw))
    else:
        return None, "expected a string or a one-key mapping"
    if not name:
        return None, "empty option"
    if name in forbidden:
        return None, f"option '{name}' is set by hasup and may not be given"
    return (f"--{name}" if argument is None else f"--{name}={argument}"), None
