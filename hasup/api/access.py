"""Who may call the unsafe endpoints (docs/rest-api.md, "Access control"): allowlist, then Basic auth.

GET, HEAD and OPTIONS are never checked; POST, PUT, PATCH and DELETE are.
The password is compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REALM_HEADER = ("WWW-Authenticate", 'Basic realm="Patroni"')
RESOLVE_CACHE_SECONDS = 60.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], list[str]]


@dataclass(frozen=True)
class Denied:
    code: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


def _resolve(host: str) -> list[str]:
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except (OSError, UnicodeError):
        return []


def _networks(entry: str, resolve: Resolver) -> list[Network]:
    entry = entry.strip()
    try:
        return [ipaddress.ip_network(entry, strict=False)]
    except ValueError:
        pass
    found: list[Network] = []
    for address in resolve(entry):
        try:
            found.append(ipaddress.ip_network(address.split("%", 1)[0]))
        except ValueError:
            continue
    return found


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class AccessControl:
    """The checks for one node's configuration; thread-safe, cheap per request."""

    def __init__(self, username: str | None = None, password: str | None = None,
                 allowlist: Iterable[str] = (), include_members: bool = False,
                 resolve: Resolver = _resolve, clock: Callable[[], float] = time.monotonic) -> None:
        self._credentials: bytes | None = None
        if username is not None and password is not None:
            self._credentials = f"{username}:{password}".encode()
        self._allowlist = tuple(allowlist)
        self._include_members = include_members
        self._resolve = resolve
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list[Network]]] = {}

    @property
    def restricted(self) -> bool:
        return bool(self._allowlist) or self._include_members

    def __repr__(self) -> str:  # never the credentials
        return (f"AccessControl(auth={'on' if self._credentials else 'off'}, allowlist={self._allowlist!r}, "
                f"include_members={self._include_members})")

    def _lookup(self, entry: str) -> list[Network]:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(entry)
            if hit is not None and now - hit[0] < RESOLVE_CACHE_SECONDS:
                return hit[1]
        networks = _networks(entry, self._resolve)
        with self._lock:
            self._cache[entry] = (now, networks)
        return networks

    def _allowed(self, client: str | None, members: Mapping[str, Any]) -> bool:
        address = _address(client)
        if address is None:
            return False
        entries = list(self._allowlist)
        if self._include_members:
            for data in members.values():
                url = data.get("api_url") if isinstance(data, dict) else None
                if isinstance(url, str) and url:
                    try:
                        host = urlparse(url).hostname
                    except ValueError:
                        host = None
                    if host:
                        entries.append(host)
        return any(address in network for entry in entries for network in self._lookup(entry)
                   if network.version == address.version)

    def _authenticated(self, header: str) -> bool:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic" or self._credentials is None:
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._credentials)

    def check(self, method: str, client: str | None, authorization: str | None,
              members: Mapping[str, Any]) -> Denied | None:
        """None when the request may proceed, else what to answer."""
        if method.upper() not in UNSAFE_METHODS:
            return None
        if self.restricted and not self._allowed(client, members):
            log.warning("access denied to %s for %s", client, method)
            return Denied(403, "Access is denied")
        if self._credentials is None:
            return None
        if not authorization:
            return Denied(401, "no auth header received", (REALM_HEADER,))
        if not self._authenticated(authorization):
            log.warning("failed authentication from %s", client)
            return Denied(401, "not authenticated", (REALM_HEADER,))
        return None
