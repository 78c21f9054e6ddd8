"""Addresses in the configuration: host:port pairs, PostgreSQL's listen list, etcd endpoints."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from hasup.config.values import Invalid, to_str

_PORT = re.compile(r"[0-9]{1,5}")


def _port(text: str, value: Any, expected: str) -> int:
    # Not str.isdigit(): it accepts digits such as '²' that int() then refuses.
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise Invalid(expected, value)
    return int(text)


def split_host_port(value: Any, default_port: int | None = None, allow_empty_host: bool = False) -> tuple[str, int]:
    """`host:port`, `[v6addr]:port`, or a bare host when a default port is given."""
    expected = "expected host:port"
    text = to_str(value).strip()
    if text.startswith("["):  # bracketed IPv6, the only unambiguous way to add a port
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise Invalid(expected, value)
        if not rest:
            if default_port is None:
                raise Invalid(expected, value)
            return host, default_port
        return host, _port(rest[1:], value, expected)
    if ":" not in text:
        if default_port is None or not text:
            raise Invalid(expected, value)
        return text, default_port
    host, _, port = text.rpartition(":")
    if (not host and not allow_empty_host) or "/" in host or " " in host:
        raise Invalid(expected, value)
    return host, _port(port, value, expected)


def host_port(allow_empty_host: bool = False) -> Callable[[Any], str]:
    """A converter checking `host:port` and returning it as written (stripped)."""

    def convert(value: Any) -> str:
        split_host_port(value, allow_empty_host=allow_empty_host)
        return to_str(value).strip()

    return convert


def to_pg_listen(value: Any) -> str:
    """postgresql.listen: `host[,host2...]:port`, normalised without spaces or IPv6 brackets.

    The result feeds listen_addresses, which wants bare addresses.
    """
    text = to_str(value).strip()
    head, sep, port = text.rpartition(":")
    if not sep:
        raise Invalid("expected host:port", value)
    hosts = [h.strip() for h in head.split(",")]
    hosts = [h[1:-1] if h.startswith("[") and h.endswith("]") else h for h in hosts]
    if any(not h or " " in h or "/" in h for h in hosts):
        raise Invalid("expected host:port", value)
    return f"{','.join(hosts)}:{_port(port, value, 'expected host:port')}"


def etcd_endpoint(value: Any, default_port: int) -> tuple[str | None, str, int]:
    """One etcd endpoint: `host[:port]`, optionally with an `http(s)://` prefix (returned as scheme)."""
    text = to_str(value).strip()
    scheme: str | None = None
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        text = text.rstrip("/")
        if scheme not in ("http", "https"):
            raise Invalid("expected host:port", value)
    try:
        host, port = split_host_port(text, default_port)
    except Invalid:
        raise Invalid("expected host:port", value) from None
    return scheme, host, port


def etcd_host_list(value: Any) -> list[Any]:
    """etcd.hosts is a YAML list or a comma-separated string."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [part for part in (p.strip() for p in value.split(",")) if part]
    raise Invalid("expected a list or a comma-separated string of host:port", value)
