"""The `standby_cluster` section of the dynamic configuration: a cluster that replicates from a remote
primary and has none of its own.

`to_standby_cluster` checks the section with bounds wherever it enters (the file's bootstrap.dcs,
etcd's config key, PATCH /config); the rest is how the section is used: whether it makes a standby
cluster at all, and where its leader streams from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hasup.config.values import Invalid, int_between, to_command, to_str

KEYS = ("host", "port", "primary_slot_name", "create_replica_methods", "restore_command",
        "archive_cleanup_command", "recovery_min_apply_delay")
# Any of these makes the section a standby cluster (as in Patroni); the others only refine it.
DEFINING = ("host", "port", "restore_command")

# What a replica's upstream is called while it streams from standby_cluster's host rather than a member:
# a slash never appears in a member name (hasup.dcs.parse.valid_name), so no member can be mistaken for it.
REMOTE = "/standby_cluster"

MAX_HOST = 1024  # libpq accepts a comma-separated list of hosts
MAX_COMMAND = 4096
MAX_METHODS = 16
_SLOT = re.compile(r"[a-z0-9_]{1,63}")
_METHOD = re.compile(r"[A-Za-z0-9_.-]{1,63}")
# PostgreSQL's time units for recovery_min_apply_delay (an integer is milliseconds).
_DELAY = re.compile(r"\s*[0-9]{1,10}\s*(us|ms|s|min|h|d)?\s*")
_MAX_DELAY_MS = 2**31 - 1  # the parameter is an int32 of milliseconds

_port = int_between(1, 65535)


def _text(key: str, value: Any, limit: int) -> str:
    text = to_str(value)
    if not 0 < len(text) <= limit or not text.isprintable():
        raise Invalid(f"{key}: expected 1 to {limit} printable characters", value)
    return text


def _host(value: Any) -> str:
    text = _text("host", value, MAX_HOST)
    if any(c.isspace() or c in "'\\" for c in text):
        raise Invalid("host: expected a host name or address (no spaces or quotes)", value)
    return text


def _command(key: str, value: Any) -> str:
    text = _text(key, value, MAX_COMMAND)
    try:
        return to_command(text)
    except Invalid as exc:
        raise Invalid(f"{key}: {exc.message}", value) from None


def _delay(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= _MAX_DELAY_MS:
            raise Invalid(f"recovery_min_apply_delay: must be 0 to {_MAX_DELAY_MS} milliseconds", value)
        return value
    if isinstance(value, str) and len(value) <= 32 and _DELAY.fullmatch(value):
        return value.strip()
    raise Invalid("recovery_min_apply_delay: expected milliseconds or a time with a unit (e.g. 5min)", value)


def _methods(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_METHODS \
            or not all(isinstance(m, str) and _METHOD.fullmatch(m) for m in value):
        raise Invalid(f"create_replica_methods: expected a list of up to {MAX_METHODS} method names", value)
    return tuple(value)


def to_standby_cluster(value: Any) -> dict[str, Any]:
    """The section checked key by key; {} when absent or empty (not a standby cluster).

    Unknown keys are kept as given (Patroni's own may grow); each known one must be of its type
    and within its bounds, or the whole section is refused, its message naming the key."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Invalid("expected a mapping", value)
    out: dict[str, Any] = dict(value)
    checks = {
        "host": _host,
        "port": lambda v: _port_of(v),
        "primary_slot_name": _slot,
        "create_replica_methods": _methods,
        "restore_command": lambda v: _command("restore_command", v),
        "archive_cleanup_command": lambda v: _command("archive_cleanup_command", v),
        "recovery_min_apply_delay": _delay,
    }
    for key, check in checks.items():
        if out.get(key) is None:
            out.pop(key, None)
            continue
        checked = check(out[key])
        out[key] = list(checked) if isinstance(checked, tuple) else checked
    if out and not any(out.get(k) for k in DEFINING):
        raise Invalid(f"expected at least one of {', '.join(DEFINING)}", value)
    return out


def _port_of(value: Any) -> int:
    try:
        return _port(value)
    except Invalid as exc:
        raise Invalid(f"port: {exc.message}", value) from None


def _slot(value: Any) -> str:
    if not isinstance(value, str) or not _SLOT.fullmatch(value):
        raise Invalid("primary_slot_name: expected 1 to 63 of a-z, 0-9 and _", value)
    return value


def is_standby(section: Mapping[str, Any] | None) -> bool:
    """The section makes this a standby cluster (it names a host, a port or a restore_command)."""
    return bool(section) and any(section.get(k) for k in DEFINING)  # type: ignore[union-attr]


def remote_address(section: Mapping[str, Any] | None) -> tuple[str, int] | None:
    """Where the standby leader streams from; None when it only restores from an archive."""
    if not section or not (section.get("host") or section.get("port")):
        return None
    port = section.get("port")
    return str(section.get("host") or "127.0.0.1"), int(port) if isinstance(port, int | str) and port else 5432


def remote_url(section: Mapping[str, Any] | None) -> str | None:
    """The remote primary as a conn_url (the shape members publish), for what expects one."""
    address = remote_address(section)
    if address is None:
        return None
    host, port = address
    return f"postgres://{host}:{port}/postgres"


def described(section: Mapping[str, Any] | None) -> str:
    """The remote, for log lines and decisions: host:port, or the archive."""
    address = remote_address(section)
    return f"{address[0]}:{address[1]}" if address else "the archive (restore_command)"
