"""The api's gunicorn worker: a request reaches a thread only once it has fully arrived.

gunicorn's gthread worker gives a connection to a request thread as soon as it
is readable, and the thread then blocks until the headers are complete: eight
clients sending one byte a second hold all eight threads and health checks go
unanswered -- an idle HAProxy, a port scanner or a half-open TLS
client could blind the load balancer.

This worker keeps gthread's thread pool and its request handling
(ThreadWorker.handle_request) and replaces the loop.  The loop, in the
worker's main thread, never blocks on a client:

- it accepts every pending connection; at the connection limit it first
  closes the one that has waited longest without delivering a request;
- it runs TLS handshakes without blocking;
- it reads each request's header block and a body of up to limits.MAX_BODY
  into a buffer, within HEADER_TIMEOUT for the headers and REQUEST_TIMEOUT
  for the whole request (then answering 408), and answers 431 to an
  oversized header block itself;
- it answers a plain health check (parse_plain: GET, HEAD or OPTIONS, CRLF
  lines, no body, nothing unusual in its headers) for which the subclass's
  fast_answer has an answer made from memory, without gunicorn's parser or
  the app: that is most of what a load balancer sends;
- it hands a complete request to the thread pool, where gunicorn's parser
  reads it from that buffer without touching the socket; or, for a request
  the subclass's inline_request accepts (a health check the app answers from
  memory), runs gunicorn's request handling and the app itself and sends the
  answer in one non-blocking write, leaving only what the socket does not
  take at once to a thread;
- it takes a kept-alive connection back to wait for its next request, and
  closes connections by half-closing and draining them in the loop (a
  fast-answered client that asked to close and sent nothing more is closed
  at once: nothing unread, so no reset can destroy the answer).

A new connection is read at once, before it enters the poller: a health
checker's request usually arrives with its connection, and is then answered
without a poller round trip.  The worker runs without gunicorn's arbiter
(hasup/workers/api.py): its heartbeat is the in-memory time of the last turn.

A request announcing a larger body, or a chunked one, goes to a thread with
its headers only: the app answers 413 or 411 without reading the body
(hasup/api/app.py), and the connection is closed after the answer instead of
being drained.
"""

from __future__ import annotations

import email.utils
import errno
import json
import os
import re
import resource
import selectors
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from http import HTTPStatus
from typing import Any, NamedTuple

import gunicorn
from gunicorn import http
from gunicorn import sock as gsock
from gunicorn.workers.gthread import ThreadWorker

from hasup.api import limits
from hasup.api.tls import ContextCache

# What fast_answer gives for (method, path, query): status code, header (name, value) pairs, body;
# None leaves the request to gunicorn and the app.
FastAnswer = tuple[int, list[tuple[str, str]], bytes]

HEADER_TIMEOUT = 10.0  # accept (or a kept-alive request's first byte) to the end of its header block
REQUEST_TIMEOUT = 30.0  # the same to the end of its body: 1 MiB in 30 s is 35 KiB/s
IO_TIMEOUT = 10.0  # a request thread's socket timeout: it only writes the answer, to a client that may not read
LINGER = 2.0  # a closed connection drains what the client still sends for this long, so it sees our answer
# ... and at most this much: enough for a client that sends a refused body (413) in full before it
# reads the answer, as urllib and requests do.
LINGER_DRAIN = 8 * 1024 * 1024
MAX_HEAD = 64 * 1024  # bytes of header block; Patroni's clients send well under 1 KiB
READ_CHUNK = 64 * 1024
BUFFER_BUDGET = 16 * 1024 * 1024  # bytes of unfinished requests held by one worker (docs/rest-api.md, "Slow clients")
ACCEPT_BATCH = 64  # connections accepted per wake-up, so one listener cannot starve the loop
FD_RESERVE = 64  # descriptors kept for the listeners, the poller, pipes, logging and etcd clients
SWEEP_EVERY = 0.25  # how late a deadline may be noticed
WAKE_AT_LEAST = 1.0  # the loop turns at least this often while it holds connections
# ... and this often with none: nothing is due, signals and the thread pool's hand-backs wake it, and the
# api's reader thread takes a loop that has not turned for LOOP_TIMEOUT (30 s) for a stuck one.
IDLE_WAKE = 10.0

_WAIT, _READY, _TOO_BIG = range(3)

# A request line parse_plain takes: a method of letters, an origin-form target of unreserved and
# sub-delimiter characters (a percent sign only in the query), HTTP/1.0 or 1.1.  Anything else
# (an absolute-form target, an escaped path, a stray space) is for gunicorn's parser to judge.
_PLAIN_LINE = re.compile(rb"([A-Z]{1,16}) (/[-A-Za-z0-9._~!$&'()*+,;=:@/]*)(?:\?([-A-Za-z0-9._~!$&'()*+,;=:@/?%]*))?"
                         rb" HTTP/1\.([01])")
_PLAIN_NAME = re.compile(rb"[A-Za-z0-9-]{1,64}")
_PLAIN_VALUE = re.compile(rb"[\x20-\x7e\t]*")
# Headers that change how a request is framed or answered: their requests go to gunicorn.
_NOT_PLAIN = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"trailer", b"te"))
_SERVER = gunicorn.SERVER.encode()
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class Plain(NamedTuple):
    method: bytes
    path: bytes
    query: bytes
    version: bytes  # b"1.0" or b"1.1"
    keep: bool  # the client asks to keep the connection (its version's default, or its Connection header)


def parse_plain(head: bytes, max_line: int, max_fields: int, max_field: int) -> Plain | None:
    """A plain request without a body, parsed; None for anything else.

    Deliberately narrower than HTTP: CRLF line ends, header names of letters,
    digits and dashes, printable values, no folding, no body, within the
    limits gunicorn's parser is configured with.  A request it declines is
    not refused: gunicorn's parser and the app see it as before.
    """
    lines = head.split(b"\r\n")
    if len(lines) < 3 or lines[-1] or lines[-2] or len(lines) - 3 > max_fields or len(lines[0]) > max_line:
        return None
    first = _PLAIN_LINE.fullmatch(lines[0])
    if first is None:
        return None
    method, path, query, minor = first.groups()
    keep: bool | None = None
    for line in lines[1:-2]:
        name, sep, value = line.partition(b":")
        if not sep or len(line) > max_field or not _PLAIN_NAME.fullmatch(name):
            return None
        value = value.strip(b" \t")
        if not _PLAIN_VALUE.fullmatch(value):
            return None
        name = name.lower()
        if name in _NOT_PLAIN or (name == b"content-length" and value != b"0"):
            return None
        if name == b"connection" and keep is None:  # the first one decides, as in gunicorn
            token = value.lower()
            keep = False if token == b"close" else True if token == b"keep-alive" else None
    return Plain(method, path, query or b"", b"1." + minor, minor == b"1" if keep is None else keep)


def head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line ending a header block, -1 while there is none."""
    ends = [i + n for i, n in ((buf.find(b"\r\n\r\n", start), 4), (buf.find(b"\n\n", start), 2)) if i >= 0]
    return min(ends) if ends else -1


def body_length(head: bytes) -> int | None:
    """Bytes of body the header block announces; None for framing this loop leaves alone.

    None is a chunked body, or a Content-Length that is not one plain
    number: the thread's parser answers those (400, 411), and the connection
    closes after the answer.
    """
    length, seen = 0, False
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit() or len(value) > 18 or (seen and int(value) != length):
                return None
            length, seen = int(value), True
    return length


def _expects_continue(head: bytes) -> bool:
    lines = head.split(b"\n")
    if not lines[0].rstrip().endswith(b"HTTP/1.1"):
        return False
    return any(n.strip().lower() == b"expect" and v.strip().lower() == b"100-continue"
               for n, _, v in (line.partition(b":") for line in lines[1:]))


def connection_limit(wanted: int) -> int:
    """wanted, or fewer if the descriptor limit cannot be raised to hold that many."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - FD_RESERVE))


class _Conn:
    """A client connection.  The loop owns it between requests; a thread owns it while serving one."""

    def __init__(self, sock: socket.socket, client: Any, server: Any, now: float, tls: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.client = client  # gunicorn's handle_request reads these three
        self.server = server
        self.handshaking = tls
        self.parser: Any = None  # gunicorn's, made for the first request, kept for the next ones
        self.carry = b""  # what followed a fast-answered request (pipelined), for the next one
        self.buf = bytearray()
        self.served = 0
        self.events = 0
        self.closed = False
        self.closing_until = 0.0
        self.drained = 0
        self.next_request(now)

    def next_request(self, now: float) -> None:
        self.waiting_since = now
        # A connection's first request is timed from accept (a client that never speaks is one
        # too); a kept-alive one's from its first byte, after an idle wait of cfg.keepalive.
        self.started = now if self.served == 0 else 0.0
        self.head_end = -1
        self.scanned = 0
        self.need = -1
        self.body_complete = True
        self.continue_sent = False


class _Capture:
    """Stands in for a socket while the app answers in the loop: what gunicorn writes is kept for one send."""

    def __init__(self) -> None:
        self.data = bytearray()

    def sendall(self, data: bytes) -> None:
        self.data += data

    def send(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def gettimeout(self) -> float:
        return 0.0  # gunicorn's error answer then writes without touching the blocking mode

    def close(self) -> None:
        pass  # gunicorn's error path closes the socket; the loop closes the connection itself


class _Writing:
    """A connection as handle_request sees it during an inline answer: its writes go to a _Capture."""

    def __init__(self, conn: _Conn, out: _Capture) -> None:
        self.sock = out
        self.client = conn.client
        self.server = conn.server


class HasupWorker(ThreadWorker):
    """gthread's thread pool behind a loop that reads whole requests first (see the module docstring)."""

    # (method, path) -> whether the app answers this request without blocking (from memory, in
    # microseconds): the loop then answers it itself, with no thread hand-off.  None: never.
    inline_request: Callable[[bytes, bytes], bool] | None = None
    # (method, path, query) of a plain request (parse_plain) -> the answer, made from memory without
    # blocking, or None to leave the request to gunicorn and the app.  None: never.
    fast_answer: Callable[[bytes, bytes, bytes], FastAnswer | None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conns: dict[int, _Conn] = {}
        # Connections the loop owns, longest wait for a request first: the first to go at the limit.
        self._waiting: OrderedDict[int, _Conn] = OrderedDict()
        self._buffered = 0
        self._limit = self.worker_connections
        self._tls: ContextCache | None = None
        self._accepting = False  # the listeners are in the poller
        self._resume_accepting_at = 0.0
        self._next_sweep = 0.0
        self._addresses: dict[int, Any] = {}
        self._inline_depth = 0  # an inline answer's pipelined successor goes to a thread: no recursion
        self._date = (0, b"")  # the Date header of fast answers, made once a second
        self._last_turn = time.monotonic()

    # -- the loop ---------------------------------------------------------------------------

    def notify(self) -> None:
        # Run without gunicorn's arbiter (hasup/workers/api.py), nobody reads gunicorn's heartbeat
        # file: the loop's last turn is kept in memory instead, a system call per turn saved.
        self._last_turn = time.monotonic()

    def loop_age(self) -> float:
        """Seconds since the loop last turned (any thread may ask)."""
        return time.monotonic() - self._last_turn

    def run(self) -> None:
        if self.cfg.is_ssl:
            cfg = self.cfg
            self._tls = ContextCache(lambda: gsock.ssl_context(cfg), (cfg.certfile, cfg.keyfile, cfg.ca_certs),
                                     self.log)
            self._tls.get()  # a broken certificate fails the worker's boot, not its first client
        self._limit = connection_limit(self.worker_connections)
        self.poller.register(self.method_queue.fileno(), selectors.EVENT_READ,
                             lambda _mask: self.method_queue.run_callbacks(None))
        # gunicorn's signal wake-up pipe: SIGTERM (graceful stop) and the supervisor's death signal end
        # the wait at once, so an idle loop need not turn to notice them.
        self.poller.register(self.PIPE[0], selectors.EVENT_READ, self._drain_signal_pipe)
        for listener in self.sockets:
            listener.setblocking(False)
        self._set_accepting(True)
        while self.alive:
            self.notify()
            now = time.monotonic()
            if self._waiting or not self._accepting:
                self._poll(max(0.0, min(WAKE_AT_LEAST, self._next_sweep - now)))
            else:
                self._poll(IDLE_WAKE)
            if not self.is_parent_alive():
                break
            now = time.monotonic()
            if now >= self._next_sweep:
                self._sweep(now)
                self._next_sweep = now + SWEEP_EVERY
        self._stop()

    def _drain_signal_pipe(self, _mask: int) -> None:
        try:
            os.read(self.PIPE[0], 4096)
        except (BlockingIOError, InterruptedError):
            pass

    def _poll(self, timeout: float) -> None:
        for key, mask in self.poller.select(timeout):
            key.data(mask)

    def _set_accepting(self, enabled: bool) -> None:
        if enabled == self._accepting:
            return
        for listener in self.sockets:
            if enabled:
                self.poller.register(listener, selectors.EVENT_READ, partial(self._accept, listener))
            else:
                self.poller.unregister(listener)
        self._accepting = enabled

    def _stop(self) -> None:
        """gunicorn's graceful stop: no new connections, requests in threads finish within graceful_timeout."""
        self._set_accepting(False)
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while True:
            for conn in list(self._waiting.values()):
                self._close(conn)  # nothing of theirs is in progress
            if not self._conns or time.monotonic() >= deadline:
                break
            self.notify()
            self._poll(max(0.0, min(WAKE_AT_LEAST, deadline - time.monotonic())))
        self.tpool.shutdown(wait=False)
        for conn in list(self._conns.values()):
            self._close(conn)
        self.poller.close()
        self.method_queue.close()
        for listener in self.sockets:
            listener.close()

    # -- connections ------------------------------------------------------------------------

    def _accept(self, listener: Any, _mask: int) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, client = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) and self._evict_oldest():
                    continue
                # Out of descriptors with nothing to give up, or an error of the listener itself:
                # pause rather than spin on a listener that stays readable.
                self.log.warning("accept failed, pausing for %.2f s: %s", SWEEP_EVERY, exc)
                self._set_accepting(False)
                self._resume_accepting_at = time.monotonic() + SWEEP_EVERY
                return
            if len(self._conns) >= self._limit:
                self._evict_oldest()
            self._adopt(sock, client, self._address_of(listener))

    def _address_of(self, listener: Any) -> Any:
        """The listener's own address, asked once (a system call per connection otherwise)."""
        address = self._addresses.get(listener.fileno())
        if address is None:
            address = self._addresses[listener.fileno()] = listener.getsockname()
        return address

    def _adopt(self, sock: socket.socket, client: Any, server: Any) -> None:
        sock.setblocking(False)
        if self._tls is not None:
            try:
                sock = self._tls.get().wrap_socket(sock, server_side=True, do_handshake_on_connect=False,
                                                   suppress_ragged_eofs=self.cfg.suppress_ragged_eofs)
            except (OSError, ValueError):  # the client is already gone
                sock.close()
                return
        conn = _Conn(sock, client, server, time.monotonic(), tls=self._tls is not None)
        self._conns[conn.fd] = conn
        self._waiting[conn.fd] = conn
        self.nr_conns += 1
        if conn.handshaking:
            self._want(conn, selectors.EVENT_READ)
        else:
            # A client's request usually arrives with its connection: read it now, and enter the
            # poller only if it has not (saves two epoll calls and a wake-up per connection).
            self._on_ready(conn, 0)

    def _want(self, conn: _Conn, events: int) -> None:
        if conn.events == events:
            return
        if conn.events:
            self.poller.modify(conn.sock, events, partial(self._on_ready, conn))
        else:
            self.poller.register(conn.sock, events, partial(self._on_ready, conn))
        conn.events = events

    def _release(self, conn: _Conn, polled: bool = False) -> bytes:
        """Take conn off the loop (out of the poller unless polled, the waiting list, the budget); its buffered bytes.

        polled keeps it in the poller, for a connection the loop goes on owning.
        """
        if conn.events and not polled:
            self.poller.unregister(conn.sock)
            conn.events = 0
        self._waiting.pop(conn.fd, None)
        data, conn.buf = bytes(conn.buf), bytearray()
        self._buffered -= len(data)
        return data

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        self._release(conn)
        conn.closed = True
        self._conns.pop(conn.fd, None)
        self.nr_conns -= 1
        try:
            conn.sock.close()
        except OSError:
            pass

    def _linger(self, conn: _Conn) -> None:
        """Close without resetting: half-close, then drain what the client still sends, in the loop.

        An unread request byte at close() makes the kernel send a reset, which can destroy our
        answer before the client reads it (RFC 9112 §9.6).
        """
        self._release(conn, polled=conn.events == selectors.EVENT_READ)
        try:
            conn.sock.shutdown(socket.SHUT_WR)  # on a TLS socket this also leaves TLS: the drain reads raw bytes
            if conn.sock.gettimeout() != 0.0:
                conn.sock.setblocking(False)
        except OSError:
            self._close(conn)
            return
        conn.closing_until = time.monotonic() + LINGER
        self._waiting[conn.fd] = conn
        self._waiting.move_to_end(conn.fd, last=False)  # the cheapest to drop at the limit
        self._want(conn, selectors.EVENT_READ)

    def _answer(self, conn: _Conn, code: int, reason: str, message: str) -> None:
        """A short error answer written by the loop (best effort: never blocks), then close."""
        body = json.dumps({"error": message}).encode()
        head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            conn.sock.send(head + body)
        except OSError:
            pass
        self._linger(conn)

    def _evict_oldest(self) -> bool:
        for conn in self._waiting.values():
            self.log.debug("connection limit: closing %s", conn.client)
            self._close(conn)
            return True
        return False

    def _sweep(self, now: float) -> None:
        if not self._accepting and now >= self._resume_accepting_at and self.alive:
            self._set_accepting(True)
        for conn in list(self._waiting.values()):
            if conn.closing_until:
                if now >= conn.closing_until:
                    self._close(conn)
            elif conn.started == 0.0:
                if now - conn.waiting_since >= self.cfg.keepalive:
                    self._close(conn)  # an idle kept-alive connection: the client knows to reconnect
            elif now - conn.started >= (HEADER_TIMEOUT if conn.head_end < 0 else REQUEST_TIMEOUT):
                if conn.buf and not conn.handshaking:
                    self._answer(conn, 408, "Request Timeout", "the request did not arrive in time")
                else:
                    self._close(conn)

    # -- reading a request --------------------------------------------------------------------

    def _on_ready(self, conn: _Conn, _mask: int) -> None:
        if conn.closed:
            return  # closed earlier in the same batch of events
        try:
            if conn.closing_until:
                self._drain(conn)
            elif not conn.handshaking or self._handshake(conn):
                self._read(conn)
        except Exception:  # one client's surprise must not end the worker and every connection with it
            self.log.exception("error reading from %s, closing the connection", conn.client)
            self._close(conn)

    def _handshake(self, conn: _Conn) -> bool:
        assert isinstance(conn.sock, ssl.SSLSocket)
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(conn, selectors.EVENT_READ)
            return False
        except ssl.SSLWantWriteError:
            self._want(conn, selectors.EVENT_WRITE)
            return False
        except OSError as exc:  # ssl.SSLError included: plain HTTP, no client certificate, ...
            self.log.debug("TLS handshake with %s failed: %s", conn.client, exc)
            self._close(conn)
            return False
        conn.handshaking = False
        self._want(conn, selectors.EVENT_READ)
        return True

    def _read(self, conn: _Conn) -> None:
        while True:
            try:
                data = conn.sock.recv(READ_CHUNK)
            except (BlockingIOError, ssl.SSLWantReadError):
                self._want(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._want(conn, selectors.EVENT_WRITE)
                return
            except InterruptedError:
                continue
            except OSError:
                self._close(conn)
                return
            if not data:
                self._close(conn)  # gone, or half-closed before finishing a request: nothing to answer
                return
            if conn.started == 0.0:
                conn.started = time.monotonic()
            conn.buf += data
            self._buffered += len(data)
            if self._progress(conn):
                return

    def _progress(self, conn: _Conn) -> bool:
        """Act on what conn has buffered; True once the loop is done reading it for now."""
        verdict = self._examine(conn)
        if verdict == _READY:
            self._submit(conn)
        elif verdict == _TOO_BIG:
            self._answer(conn, 431, "Request Header Fields Too Large",
                         f"the request's header block is larger than {MAX_HEAD} bytes")
        elif self._buffered > BUFFER_BUDGET:
            self._shed()
        return verdict != _WAIT or conn.closed or bool(conn.closing_until)

    def _examine(self, conn: _Conn) -> int:
        if conn.head_end < 0:
            end = head_end(conn.buf, conn.scanned)
            if end < 0:
                conn.scanned = max(0, len(conn.buf) - 3)
                return _TOO_BIG if len(conn.buf) > MAX_HEAD else _WAIT
            if end > MAX_HEAD:
                return _TOO_BIG
            conn.head_end = end
            head = bytes(conn.buf[:end])
            length = body_length(head)
            if length is None or length > limits.MAX_BODY:
                conn.need, conn.body_complete = end, False
            else:
                conn.need = end + length
                if len(conn.buf) < conn.need and _expects_continue(head):
                    self._send_continue(conn)
        return _READY if len(conn.buf) >= conn.need else _WAIT

    def _send_continue(self, conn: _Conn) -> None:
        """Tell a client waiting for it (curl does, for a body over 1 KiB) to send its body now."""
        interim = b"HTTP/1.1 100 Continue\r\n\r\n"
        try:
            conn.continue_sent = conn.sock.send(interim) == len(interim)
        except OSError:
            pass  # the client sends after its own short wait anyway

    def _shed(self) -> None:
        """Over the buffer budget: drop the unfinished requests that have waited longest."""
        for conn in list(self._waiting.values()):
            if self._buffered <= BUFFER_BUDGET:
                return
            if conn.buf and not conn.closing_until:
                self._answer(conn, 503, "Service Unavailable", "too many unfinished requests")

    def _drain(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained > LINGER_DRAIN:
            self._close(conn)

    # -- serving it in a thread -------------------------------------------------------------------

    def _submit(self, conn: _Conn) -> None:
        if self._inline_depth == 0 and conn.need == conn.head_end and self._answer_fast(conn):
            return
        inline = self._inline_depth == 0 and conn.body_complete and self._answers_inline(conn)
        request = self._release(conn, polled=inline)
        if conn.parser is None:
            conn.parser = http.RequestParser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(request)
        if inline:
            self._serve_inline(conn)
            return
        # Blocking with a bound: the thread writes the answer to a client that may not read it.
        conn.sock.settimeout(IO_TIMEOUT)
        future = self.tpool.submit(self._serve, conn)
        future.add_done_callback(lambda done: self.method_queue.defer(self._served, conn, done))

    def _serve(self, conn: _Conn, out: _Capture | None = None) -> bool:
        """Answer the buffered request (into out when given, else to the socket); True to keep the connection.

        Runs in a request thread, or in the loop for an inline answer.
        """
        req = None
        try:
            req = next(conn.parser)
            if not conn.body_complete:
                req.must_close = True  # the body was never read: answer, then close rather than drain it
            if conn.continue_sent:
                req._expected_100_continue = False
            keep = self.handle_request(req, conn if out is None else _Writing(conn, out))
            # A body the app left unread is in the parser's buffer: draining it reads no socket.
            return bool(keep) and conn.body_complete and bool(conn.parser.finish_body())
        except (StopIteration, http.errors.NoMoreData):
            return False
        except OSError as exc:  # the client went away or stopped reading; ssl.SSLError included
            self.log.debug("connection from %s failed while answering: %s", conn.client, exc)
            return False
        except Exception as exc:
            self.handle_error(req, conn.sock if out is None else out, conn.client, exc)
            return False

    def _answer_fast(self, conn: _Conn) -> bool:
        """Answer a plain request fast_answer knows, in one send from the loop; False to leave it to _submit."""
        fast = self.fast_answer
        if fast is None or self.cfg.accesslog:  # an access log is gunicorn's to write
            return False
        cfg = self.cfg
        plain = parse_plain(bytes(conn.buf[:conn.head_end]), cfg.limit_request_line, cfg.limit_request_fields,
                            cfg.limit_request_field_size)
        if plain is None:
            return False
        answer = fast(plain.method, plain.path, plain.query)
        if answer is None:
            return False
        code, headers, body = answer
        keep = plain.keep and self.alive and cfg.keepalive > 0
        self.nr += 1
        # gunicorn's own status line and first headers (gunicorn/http/wsgi.py default_headers), then the app's.
        lines = [b"HTTP/%s %d %s" % (plain.version, code, _REASONS.get(code, b"Unknown")), b"Server: " + _SERVER,
                 b"Date: " + self._http_date(), b"Connection: keep-alive" if keep else b"Connection: close",
                 *(f"{name}: {value}".encode("latin-1") for name, value in headers), b"", b""]
        data = b"\r\n".join(lines) + (b"" if plain.method == b"HEAD" else body)
        rest = bytes(conn.buf[conn.head_end:])
        self._release(conn, polled=True)
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            sent = 0
        except OSError as exc:
            self.log.debug("connection from %s failed while answering: %s", conn.client, exc)
            self._close(conn)
            return True
        conn.carry = rest
        if sent < len(data):
            self._release(conn)  # the thread owns it now: out of the poller
            conn.sock.settimeout(IO_TIMEOUT)
            future = self.tpool.submit(self._finish_write, conn, data[sent:], keep)
            future.add_done_callback(lambda done: self.method_queue.defer(self._served, conn, done))
        elif not keep and not plain.keep and not rest and not conn.handshaking and self._tls is None:
            # The client asked to close and sent nothing past its request: close at once (nothing
            # unread, so no reset), without the half-close and drain a refused request needs.
            self._close(conn)
        else:
            self._resume(conn, keep)
        return True

    def _http_date(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True).encode())
        return self._date[1]

    def _answers_inline(self, conn: _Conn) -> bool:
        """The request is one inline_request accepts and it carries no body."""
        predicate = self.inline_request
        if predicate is None or conn.need != conn.head_end:
            return False
        line_end = conn.buf.find(b"\n", 0, conn.head_end)
        method, _, rest = bytes(conn.buf[:line_end]).partition(b" ")
        target = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        return predicate(method, target)

    def _serve_inline(self, conn: _Conn) -> None:
        """Answer in the loop: the app runs here and its answer goes out in one non-blocking send.

        Only what the write cannot take at once goes to a request thread, so a
        client that does not read never holds the loop.
        """
        out = _Capture()
        self._inline_depth += 1
        try:
            keep = self._serve(conn, out)
            if conn.closed:
                return
            sent = 0
            if out.data:
                try:
                    sent = conn.sock.send(out.data)
                except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    sent = 0
                except OSError as exc:
                    self.log.debug("connection from %s failed while answering: %s", conn.client, exc)
                    self._close(conn)
                    return
            if sent < len(out.data):
                self._release(conn)  # the thread owns it now: out of the poller
                conn.sock.settimeout(IO_TIMEOUT)
                future = self.tpool.submit(self._finish_write, conn, bytes(out.data[sent:]), keep)
                future.add_done_callback(lambda done: self.method_queue.defer(self._served, conn, done))
                return
            self._resume(conn, keep)
        except Exception:  # as in _on_ready: this connection goes, the worker stays
            self.log.exception("error answering %s in the loop, closing the connection", conn.client)
            self._close(conn)
        finally:
            self._inline_depth -= 1

    def _finish_write(self, conn: _Conn, rest: bytes, keep: bool) -> bool:
        """In a request thread: the part of an inline answer the socket could not take at once."""
        try:
            conn.sock.sendall(rest)
        except OSError as exc:
            self.log.debug("connection from %s failed while answering: %s", conn.client, exc)
            return False
        return keep

    def _served(self, conn: _Conn, future: Future[bool]) -> None:
        """Back in the loop: wait for the connection's next request, or close it."""
        keep = not future.cancelled() and future.exception() is None and future.result()
        if conn.closed:
            return
        try:
            self._resume(conn, keep)
        except Exception:  # as in _on_ready: this connection goes, the worker stays
            self.log.exception("error taking back the connection from %s, closing it", conn.client)
            self._close(conn)

    def _resume(self, conn: _Conn, keep: bool) -> None:
        if not keep:
            self._linger(conn)
            return
        if not self.alive:
            self._close(conn)
            return
        conn.served += 1
        conn.next_request(time.monotonic())
        try:
            if conn.sock.gettimeout() != 0.0:
                conn.sock.setblocking(False)
        except OSError:
            self._close(conn)
            return
        pipelined = conn.carry or (conn.parser.unreader.take_buffered() if conn.parser is not None else b"")
        conn.carry = b""
        conn.buf = bytearray(pipelined)
        self._buffered += len(pipelined)
        self._waiting[conn.fd] = conn
        self._want(conn, selectors.EVENT_READ)
        if pipelined:
            conn.started = conn.waiting_since
            if self._progress(conn):
                return
        pending: Callable[[], int] | None = getattr(conn.sock, "pending", None)
        if pending is not None and pending():
            self._on_ready(conn, 0)  # decrypted bytes already out of the kernel's buffer wake no poller
