"""A small etcd v3 client over etcd's JSON gateway (`POST /v3/<service>/<method>`).

Why the gateway and not gRPC: it is plain HTTP(S), so urllib3 (already a dependency) gives TLS
with client certificates, per-request deadlines and no background threads; it serves every
etcd from 3.4 to 3.6 (3.3 under `/v3beta`); and it costs no extra process memory (a gRPC
stack would add more than the rest of the election worker).  docs/etcd.md says more.

Every call is bounded: one attempt per member at most `per_attempt()` long, the whole call
within its budget, failed members tried last (Endpoints).  Everything etcd answers is parsed
here, with bounds, before anything above sees it.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
import urllib3.exceptions

from hasup.config import EtcdConfig
from hasup.dcs.endpoints import DISCOVERY_INTERVAL, Endpoints, Exhausted, configured, within_budget
from hasup.dcs.tls import pool_manager, reason_of

log = logging.getLogger(__name__)

MAX_RESPONSE = 16 * 1024 * 1024  # a cluster read with a few corrupt megabyte values still fits
MAX_INT64 = 2**63 - 1
# gRPC codes another member (or the same one a moment later) may answer differently:
# cancelled, deadline exceeded, resource exhausted, aborted, internal, unavailable.
RETRYABLE_CODES = frozenset({1, 4, 8, 10, 13, 14})
UNAUTHENTICATED = 16
AUTH_NOT_ENABLED = "authentication is not enabled"


class Etcd3Error(Exception):
    """etcd refused the request itself (another member would too): a bad argument, no permission..."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class RetryableError(Exception):
    """This member could not serve the request now; another may."""


class AuthExpired(Exception):
    """The token was refused: authenticate again."""


class CallFailed(Exception):
    """No member answered within the budget."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    mod_revision: int
    create_revision: int
    lease: int


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: object) -> str:
    if not isinstance(text, str):
        return ""
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", errors="replace")
    except ValueError:
        return ""


def prefix_end(prefix: str) -> str:
    """The range_end that selects every key starting with prefix (its last byte plus one)."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


def int64(value: object) -> int:
    """An int64 as the gateway writes it (a string; absent means 0); anything else is 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if 0 <= value <= MAX_INT64 else 0
    if isinstance(value, str) and 0 < len(value) <= 20 and value.isdigit():
        number = int(value)
        return number if number <= MAX_INT64 else 0
    return 0


def parse_kv(raw: object) -> KeyValue | None:
    if not isinstance(raw, dict):
        return None
    key = unb64(raw.get("key"))
    if not key:
        return None
    return KeyValue(key, unb64(raw.get("value")), int64(raw.get("mod_revision")), int64(raw.get("create_revision")),
                    int64(raw.get("lease")))


def header_revision(doc: dict[str, Any]) -> int:
    header = doc.get("header")
    return int64(header.get("revision")) if isinstance(header, dict) else 0


def _api_prefix(version: object) -> str:
    """`/v3` from etcd 3.4 on; 3.3 served the gateway under `/v3beta`, older ones under `/v3alpha`."""
    if isinstance(version, dict):
        match = re.match(r"^(\d+)\.(\d+)", str(version.get("etcdcluster") or version.get("etcdserver") or ""))
        if match:
            major, minor = int(match.group(1)), int(match.group(2))
            if (major, minor) < (3, 3):
                return "/v3alpha"
            if (major, minor) == (3, 3):
                return "/v3beta"
    return "/v3"


def _error_of(status: int, doc: object) -> Exception:
    """The exception for a non-200 answer or an answer carrying an error."""
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):  # errors inside a stream are wrapped once more
            doc = err
    if not isinstance(doc, dict):
        return RetryableError(f"HTTP {status} without a JSON error")
    message = " ".join(str(doc.get("message") or doc.get("error") or "").split())[:300] or f"HTTP {status}"
    code = doc.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else 0
    if code == UNAUTHENTICATED or "invalid auth token" in message or "token expired" in message:
        return AuthExpired(message)
    if code in RETRYABLE_CODES or "leader changed" in message or "no leader" in message or status >= 500 and not code:
        return RetryableError(message)
    return Etcd3Error(message, code)


def _read_bounded(resp: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = resp.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise RetryableError(f"answer larger than {limit} bytes")
        chunks.append(chunk)


def _parse(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


class Etcd3Client:
    """Calls on the etcd v3 API; safe for one caller at a time (each store has its own)."""

    def __init__(self, cfg: EtcdConfig, endpoints: Endpoints | None = None, discover: bool = True) -> None:
        self.cfg = cfg
        self.discover = discover  # False: another client sharing these endpoints reads the member list
        self.endpoints = endpoints or configured(cfg)
        self.http = pool_manager(cfg)
        self._prefixes: dict[str, str] = {}
        self._token: str | None = None
        self._auth_lock = threading.Lock()
        self._discovered_at: float | None = None

    # -- one request -----------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = self._token
        return headers

    def _post(self, url: str, path: str, body: dict[str, Any], timeout: float,
              headers: dict[str, str] | None = None, connect: float | None = None) -> Any:
        connect = min(timeout, max(1.0, timeout / 2)) if connect is None else min(timeout, connect)
        return self.http.request("POST", url + path, body=json.dumps(body).encode(),
                                 headers=headers or self._headers(), preload_content=False, retries=False,
                                 timeout=urllib3.Timeout(connect=connect, read=timeout))

    def _prefix(self, url: str, timeout: float) -> str:
        prefix = self._prefixes.get(url)
        if prefix is None:
            resp = self.http.request("GET", url + "/version", preload_content=False, retries=False,
                                     timeout=urllib3.Timeout(connect=min(timeout, 1.0), read=timeout))
            try:
                doc = _parse(_read_bounded(resp, 4096)) if resp.status == 200 else None
            finally:
                resp.release_conn()
            prefix = self._prefixes[url] = _api_prefix(doc)
        return prefix

    def _request(self, url: str, method: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        prefix = self._prefix(url, timeout)
        if self.cfg.username and self._token is None:
            self._authenticate(url, prefix, max(0.2, timeout - (time.monotonic() - started)))
        resp = self._post(url, prefix + method, body, max(0.2, timeout - (time.monotonic() - started)))
        try:
            raw = _read_bounded(resp, MAX_RESPONSE)
        finally:
            resp.release_conn()
        doc = _parse(raw)
        if resp.status != 200 or not isinstance(doc, dict) or "error" in doc and "result" not in doc:
            exc = _error_of(resp.status, doc)
            if isinstance(exc, AuthExpired):
                self._token = None
            raise exc
        return doc

    def _authenticate(self, url: str, prefix: str, timeout: float) -> None:
        with self._auth_lock:
            body = {"name": self.cfg.username, "password": self.cfg.password or ""}
            resp = self._post(url, prefix + "/auth/authenticate", body, timeout,
                              headers={"Content-Type": "application/json"})
            try:
                doc = _parse(_read_bounded(resp, 65536))
            finally:
                resp.release_conn()
            if resp.status == 200 and isinstance(doc, dict) and isinstance(doc.get("token"), str):
                self._token = doc["token"][:4096]
                return
            exc = _error_of(resp.status, doc)
            if isinstance(exc, Etcd3Error) and AUTH_NOT_ENABLED in str(exc):
                self._token = ""  # etcd does not check users: carry on without a token
                return
            if isinstance(exc, AuthExpired | Etcd3Error):
                raise Etcd3Error(f"authentication as {self.cfg.username!r} refused: {exc}")
            raise exc

    # -- calls with retries across members -------------------------------------------------

    def call(self, method: str, body: dict[str, Any], budget: float) -> dict[str, Any]:
        """POST body to /v3<method> on the first member that answers; raises CallFailed or Etcd3Error."""
        started = time.monotonic()
        try:
            doc = within_budget(self.endpoints, budget, lambda url, t: self._request(url, method, body, t),
                                _classify)
        except Exhausted as exc:
            raise CallFailed(f"etcd is not responding properly: {exc}") from None
        self._maybe_discover(budget - (time.monotonic() - started))
        return doc

    def _maybe_discover(self, budget: float) -> None:
        """Add the members the cluster advertises (as Patroni does), now and then, never past budget."""
        now = time.monotonic()
        if not self.discover or self._discovered_at is not None and now - self._discovered_at < DISCOVERY_INTERVAL \
                or budget < 1.0:
            return
        self._discovered_at = now
        try:
            doc = within_budget(self.endpoints, min(budget, 2.0),
                                lambda url, t: self._request(url, "/cluster/member/list", {}, t), _classify)
        except (Exhausted, Etcd3Error):
            return
        members = doc.get("members")
        if isinstance(members, list):
            self.endpoints.add(u for m in members[:16] if isinstance(m, dict) and isinstance(m.get("clientURLs"), list)
                               for u in m["clientURLs"][:4] if isinstance(u, str) and len(u) < 256)

    # -- watch ---------------------------------------------------------------------------

    def _open_watch(self, url: str, key: str, start_revision: int, timeout: float, range_end: str | None) -> Any:
        """The stream of a new watch on url, or None when the member could not start it (marked failed)."""
        try:
            prefix = self._prefix(url, min(timeout, 2.0))
            if self.cfg.username and self._token is None:
                self._authenticate(url, prefix, min(timeout, 2.0))
            request = {"key": b64(key), "start_revision": str(start_revision)}
            if range_end is not None:
                request["range_end"] = range_end
            body = {"create_request": request}
            headers = {**self._headers(), "Grpc-Metadata-Hasleader": "true"}
            # A long stream still connects within seconds: a member that does not answer is left at once.
            resp = self._post(url, prefix + "/watch", body, timeout, headers=headers, connect=2.0)
        except Exception as exc:  # classified below: a watch that cannot start is a failed member
            reason = _classify(exc)
            if reason is None:
                raise
            self.endpoints.failed(url, reason)
            return None
        if resp.status != 200:
            self.endpoints.failed(url, f"watch answered HTTP {resp.status}")
            resp.close()
            resp.release_conn()
            return None
        return resp

    def watch(self, key: str, start_revision: int, timeout: float, range_end: str | None = None,
              wanted: Callable[[str], bool] | None = None) -> str:
        """Wait for a change at or after start_revision: 'changed', 'compacted' or 'timeout'.

        Watches key, or the range [key, range_end) (base64) when given, and reports only changes
        of keys that `wanted` accepts (all when None)."""
        def on_events(events: list[Event], _revision: int) -> bool:
            return any(wanted is None or wanted(e.kv.key) for e in events)
        outcome = self.stream(key, start_revision, timeout, range_end, on_events)
        return outcome if outcome in ("changed", "compacted") else "timeout"

    def stream(self, key: str, start_revision: int, timeout: float, range_end: str | None,
               on_events: Callable[[list[Event], int], bool],
               on_open: Callable[[str, Any], None] | None = None) -> str:
        """Follow a watch from start_revision for up to timeout, handing each batch of events and the
        revision they bring the watcher up to to on_events, until on_events returns True ('changed'),
        etcd ends it ('compacted', 'canceled') or it fails or times out ('timeout').

        One member is asked (the healthiest); a member without a raft leader cancels the watch (the
        `hasleader` metadata) rather than keep a watch that would never fire.  on_open(url, response)
        learns which member serves the stream and the response, which another thread may shut down."""
        url = self.endpoints.order()[0]
        deadline = time.monotonic() + timeout
        resp = self._open_watch(url, key, start_revision, timeout, range_end)
        if resp is None:
            return "timeout"
        try:
            if on_open is not None:
                on_open(url, resp)
            for message in _messages(resp, deadline):
                result = message.get("result") if isinstance(message.get("result"), dict) else None
                if result is None:
                    if "error" in message:
                        log.debug("etcd watch on %s ended: %s", url, str(message.get("error"))[:200])
                        return "timeout"
                    continue
                if int64(result.get("compact_revision")):
                    return "compacted"
                if result.get("canceled"):
                    return "canceled"
                raw = result.get("events")
                events = [e for e in map(parse_event, raw) if e is not None] if isinstance(raw, list) else []
                if events and on_events(events, header_revision(result)):
                    return "changed"
            return "timeout"
        except Exception as exc:  # a reset or timed-out stream ends this watch; the caller reads again
            reason = _classify(exc)
            if reason is None:
                raise
            if time.monotonic() < deadline - 0.5:
                self.endpoints.failed(url, f"watch: {reason}")
            return "timeout"
        finally:
            resp.close()  # the stream never ends by itself: this connection cannot be reused
            resp.release_conn()


@dataclass(frozen=True)
class Event:
    deleted: bool
    kv: KeyValue


def parse_event(raw: object) -> Event | None:
    """One watch event: a put (the type is left out, being protobuf's default) or a delete."""
    if not isinstance(raw, dict):
        return None
    kv = parse_kv(raw.get("kv"))
    return Event(raw.get("type") == "DELETE", kv) if kv is not None else None


def _messages(resp: Any, deadline: float) -> Iterator[dict[str, Any]]:
    """The JSON objects of a gateway stream, one by one, until the deadline or the end of the stream."""
    decoder = json.JSONDecoder()
    buffer = ""
    while time.monotonic() < deadline:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
        if not chunk:
            return
        buffer += chunk.decode("utf-8", errors="replace")
        if len(buffer) > MAX_RESPONSE:
            raise RetryableError("watch message too large")
        while True:
            buffer = buffer.lstrip()
            if not buffer:
                break
            try:
                doc, end = decoder.raw_decode(buffer)
            except ValueError:
                break  # incomplete: wait for more
            buffer = buffer[end:]
            if isinstance(doc, dict):
                yield doc


def _classify(exc: BaseException) -> str | None:
    """A reason when another member is worth asking; None for errors every member would repeat."""
    if isinstance(exc, Etcd3Error):
        return None
    if isinstance(exc, RetryableError | AuthExpired):
        return str(exc)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError | ValueError):
        return reason_of(exc)
    return None
