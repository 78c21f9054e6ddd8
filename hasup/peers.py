"""Asking other members how they are (their /patroni), as the leader race needs.

Peers that serve https are verified against restapi.cafile (the system CAs
when it is unset), and this node shows its own restapi certificate, for
peers that require client certificates (docs/rest-api.md, "TLS").
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hasup.config import RestApiConfig
from hasup.dcs import parse
from hasup.dcs.model import Member

log = logging.getLogger(__name__)

# Peers on the other side of a partition must not hold up the race for long.
PEER_TIMEOUT = 2.0
MAX_BODY = 64 * 1024  # a /patroni answer is about 1 KiB; one with many replication rows a few
MAX_PARALLEL = parse.MAX_MEMBERS  # all at once: silent members queued ahead must not starve a live one
SCHEMES = ("http", "https")



@dataclass(frozen=True)
class PeerStatus:
    """A peer's /patroni answer, as used in the leader race (None entries: unreachable)."""

    name: str
    role: str
    state: str
    wal_position: int
    timeline: int | None = None
    nofailover: bool = False
    failover_priority: int = 1
    watchdog_failed: bool = False


def _position(value: Any) -> int | None:
    """A WAL position from a peer's JSON: None when missing; ValueError when not one."""
    if value is None:
        return None
    if not parse.is_int(value, 0, parse.LSN_END):
        raise ValueError("not a WAL position")
    return int(value)


def parse_status(name: str, body: Any) -> PeerStatus | None:
    """A peer's /patroni answer as the leader race reads it; None (not healthy) when it is not one.

    Total: any JSON value in, never an exception out.  Fields the race does not read are not checked."""
    if not isinstance(body, dict):
        return None
    xlog = body.get("xlog")
    tags = body.get("tags")
    role, state, timeline = body.get("role", "unknown"), body.get("state", "unknown"), body.get("timeline")
    if not (xlog is None or isinstance(xlog, dict)) or not (tags is None or isinstance(tags, dict)) \
            or not isinstance(role, str) or not isinstance(state, str) or len(role) > parse.MAX_SHORT \
            or len(state) > parse.MAX_SHORT:
        return None
    xlog, tags = xlog or {}, tags or {}
    try:
        location, received = _position(xlog.get("location")), _position(xlog.get("received_location"))
        replayed = _position(xlog.get("replayed_location"))
    except ValueError:
        return None
    if location is not None:
        wal = location
    elif xlog.get("paused"):
        # Replay paused (by an operator, on purpose): what it received is not what it could serve.
        wal = replayed or 0
    else:
        wal = max(received or 0, replayed or 0)
    priority = tags.get("failover_priority", 1)
    return PeerStatus(
        name=name,
        role=role,
        state=state,
        wal_position=wal,
        timeline=timeline if parse.is_int(timeline, 0, parse.MAX_TIMELINE + 1) else None,
        nofailover=bool(tags.get("nofailover")) or priority == 0,
        failover_priority=priority if parse.is_int(priority, -(2**31), 2**31) else 1,
        watchdog_failed=bool(body.get("watchdog_failed")),
    )


def client_context(restapi: RestApiConfig) -> ssl.SSLContext | None:
    """The context for https peers; None when this node has no TLS settings (urllib's default then)."""
    if not restapi.certfile and not restapi.cafile:
        return None
    try:
        context = ssl.create_default_context(cafile=restapi.cafile or None)
    except (OSError, ssl.SSLError) as exc:
        log.warning("restapi.cafile %s unusable for talking to peers: %s", restapi.cafile, exc)
        context = ssl.create_default_context()
    if restapi.certfile:
        try:
            context.load_cert_chain(restapi.certfile, restapi.keyfile or None, password=restapi.keyfile_password)
        except (OSError, ssl.SSLError) as exc:  # the api worker reports the same problem loudly
            log.warning("no client certificate for peers: %s", exc)
    return context


class _DeadlineSocket:
    """A connected socket whose every read waits at most until a fixed deadline: a peer that trickles
    its answer a byte at a time cannot hold a reader past it, as a per-read timeout would let it."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        # As socket.socket does: http.client closes the connection while the response still reads from
        # its file, so the socket closes only once both are done with it.
        self._files = 0
        self._closed = False

    def _arm(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("peer answer past its deadline")
        self._sock.settimeout(remaining)

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buffer, nbytes)

    def sendall(self, data: Any) -> None:
        self._arm()
        self._sock.sendall(data)

    def makefile(self, mode: str) -> io.BufferedReader:
        self._files += 1
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]

    def _decref_socketios(self) -> None:  # socket.SocketIO calls this on close
        self._files -= 1
        if self._closed and self._files <= 0:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if self._files <= 0:
            self._sock.close()


def _connection(url: str, context: ssl.SSLContext | None, deadline: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the host of an http(s) URL, and the path to ask; ValueError for anything else."""
    problem = parse.url_problem(url)
    if problem:
        raise ValueError(problem)
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:  # file:, data:, ftp: ... never asked
        raise ValueError(f"{parts.scheme}: is not http or https")
    timeout = max(0.01, deadline - time.monotonic())
    conn: http.client.HTTPConnection
    if parts.scheme.lower() == "https":
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout,
                                           context=context or ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    return conn, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None,
            context: ssl.SSLContext | None = None, timeout: float = PEER_TIMEOUT,
            limit: int = MAX_BODY) -> tuple[int, bytes]:
    """(status, body) of one request to a peer, in `timeout` seconds all told, the body at most
    `limit` bytes.  Raises OSError (TimeoutError included), http.client.HTTPException or
    ValueError (a URL that is not http(s), a body over the limit)."""
    deadline = time.monotonic() + timeout
    conn, path = _connection(url, context, deadline)
    resp: http.client.HTTPResponse | None = None
    try:
        conn.connect()
        conn.sock = _DeadlineSocket(conn.sock, deadline)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        length = (resp.getheader("Content-Length") or "").strip()
        if length.isascii() and length.isdigit() and len(length) < 20 and int(length) > limit:
            raise ValueError(f"an answer of {length} bytes")
        data = resp.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"an answer over {limit} bytes")
        return resp.status, data
    finally:
        if resp is not None:
            resp.close()
        conn.close()


def fetch_status(member: Member, timeout: float = PEER_TIMEOUT,
                 context: ssl.SSLContext | None = None) -> PeerStatus | None:
    """A member's /patroni answer; None when it cannot be had, in time, small, and well-formed."""
    if not member.api_url:
        return None
    try:
        # Any status: a 503 still carries the status JSON.
        _status, data = request(member.api_url, context=context, timeout=timeout)
        body = parse.decode_json(data.decode("utf-8"), MAX_BODY)
    except (OSError, http.client.HTTPException, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        log.debug("peer %s: %s", member.name, exc)
        return None
    return None if isinstance(body, parse.Bad) else parse_status(member.name, body)


def fetch_all(members: list[Member], context: ssl.SSLContext | None = None,
              timeout: float = PEER_TIMEOUT) -> dict[str, PeerStatus | None]:
    """Every member's answer, asked in parallel, all within about `timeout` seconds (None: no answer)."""
    if not members:
        return {}
    deadline = time.monotonic() + timeout

    def ask(member: Member) -> PeerStatus | None:
        remaining = deadline - time.monotonic()  # one waiting behind others gets what is left
        return fetch_status(member, remaining, context) if remaining > 0 else None

    pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(members)))
    try:
        futures = {m.name: pool.submit(ask, m) for m in members}
        # Each request keeps to the deadline; this wait also covers name resolution, which does not.
        wait(futures.values(), timeout=timeout + 0.5)
        return {name: f.result() if f.done() and f.exception() is None else None for name, f in futures.items()}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _failsafe_url(api_url: str) -> str:
    # Members publish .../patroni; the failsafe endpoint lives beside it.
    base = api_url.rsplit("/", 1)[0] if api_url.rstrip("/").endswith("patroni") else api_url.rstrip("/")
    return base + "/failsafe"


def ping_failsafe(api_url: str, body: dict[str, Any], auth: str | None, context: ssl.SSLContext | None,
                  timeout: float = PEER_TIMEOUT, attempts: int = 2) -> bool:
    """POST /failsafe to one member: True only for its `200 Accepted` (it is not leading and will not)."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
    for _ in range(attempts):
        try:
            status, _answer = request(_failsafe_url(api_url), "POST", data, headers, context, timeout)
        except ValueError as exc:  # not an http(s) URL, or an answer too large: asking again will not help
            log.warning("failsafe: %s cannot be asked: %s", api_url[:parse.MAX_URL], exc)
            return False
        except (OSError, http.client.HTTPException):
            continue
        if status != 200:
            log.warning("failsafe: %s answered %s", api_url, status)
        return status == 200
    return False


def failsafe_confirmed(members: dict[str, str], body: dict[str, Any], auth: str | None,
                       context: ssl.SSLContext | None) -> bool:
    """Every listed member (api_url by name) confirms it is not leading; an empty list confirms trivially."""
    if not members:
        return True
    with ThreadPoolExecutor(max_workers=min(8, len(members))) as pool:
        answers = list(pool.map(lambda url: ping_failsafe(url, body, auth, context), members.values()))
    return all(answers)
