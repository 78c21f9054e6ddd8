"""hasup's gunicorn worker (hasup/api/gworker.py) in a real gunicorn, with a small WSGI app.

Slow and idle clients must not take the request threads; what reaches a
thread is a whole request; deadlines, the header cap, the connection limit,
keep-alive, pipelining, 100-continue and TLS keep working.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pytest

from hasup.api import gworker, limits
from hasup.workers.api import ApiServer
from tests.harness import wait_for
from tests.harness.pki import Pki, make_pki
from tests.unit.test_api_worker import alive, free_port

THREADS = 2
ANSWER_WITHIN = 0.5
LARGE = 8 * 1024 * 1024  # bytes of /large's answer: far more than a socket takes without the client reading


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Echoes what it read; refuses bodies as the falcon app does, without reading them."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length > limits.MAX_BODY:
        status, body = "413 Payload Too Large", b'{"error": "too large"}'
    elif environ.get("HTTP_TRANSFER_ENCODING"):
        status, body = "411 Length Required", b'{"error": "Content-Length required"}'
    elif environ["PATH_INFO"] == "/large":
        status, body = "200 OK", b"L" * LARGE
    else:
        data = environ["wsgi.input"].read(length) if length else b""
        status = "200 OK"
        body = json.dumps({"path": environ["PATH_INFO"], "got": len(data), "tls": environ["wsgi.url_scheme"]}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class InlineWorker(gworker.HasupWorker):
    """Answers every GET in its loop, as the api's worker answers health checks (hasup/workers/api.py)."""

    inline_request = staticmethod(lambda method, path: method == b"GET")


class FastWorker(InlineWorker):
    """Also answers plain GETs and HEADs without gunicorn's parser or the app, as the api's worker answers
    health checks (hasup/api/app.py InlineAnswers); the answers are the app's."""

    scheme = "http"

    def fast_answer(self, method: bytes, path: bytes, query: bytes) -> gworker.FastAnswer | None:
        if method not in (b"GET", b"HEAD"):
            return None
        if path == b"/large":
            body = b"L" * LARGE
        else:
            body = json.dumps({"path": path.decode(), "got": 0, "tls": self.scheme, "fast": True}).encode()
        return 200, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body


class FastTlsWorker(FastWorker):
    scheme = "https"


@dataclass
class Server:
    port: int
    pid: int
    context: ssl.SSLContext | None = None
    inline: bool = False  # GETs are answered in the loop
    kind: str = ""  # the fixture's parameter

    def connect(self, tls: bool | None = None, timeout: float = 5.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if self.context is not None and tls is not False:
            return self.context.wrap_socket(sock, server_hostname="127.0.0.1")
        return sock


@contextlib.contextmanager
def serving(pki: Pki | None = None, **patch: Any) -> Iterator[Server]:
    """gunicorn's worker (a HasupWorker, no arbiter) in a child process; module constants patched there."""
    port = free_port()
    options: dict[str, Any] = {"bind": [f"127.0.0.1:{port}"], "worker_class": gworker.HasupWorker,
                               "threads": THREADS, "graceful_timeout": 2, "loglevel": "warning",
                               "accesslog": None, "control_socket_disable": True}
    options.update(patch.pop("options", {}))
    if pki is not None:
        options.update({"certfile": pki.server_cert, "keyfile": pki.server_key,
                        "ssl_context": lambda conf, _factory: server_context(pki)})
    pid = os.fork()
    if pid == 0:  # the server: never return into pytest
        code = 1
        try:
            for name, value in patch.items():
                setattr(gworker, name, value)
            ApiServer(app, options).run()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        finally:
            os._exit(code)
    context = None
    if pki is not None:
        context = ssl.create_default_context(cafile=pki.ca)
    server = Server(port, pid, context)
    try:
        wait_for(lambda: request(server, "GET /ready HTTP/1.0\r\n\r\n")[0] == 200, 20, "gunicorn to answer")
        yield server
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
            time.sleep(0.05)  # polling the exit, not synchronising
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key, password=pki.key_password)
    return context


def read_response(f: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    line = f.readline()
    if not line:
        raise ConnectionError("closed before an answer")
    code = int(line.split()[1])
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = f.read(int(headers.get("content-length", "0")))
    return code, headers, body


def request(server: Server, raw: str | bytes, tls: bool | None = None) -> tuple[int, dict[str, str], bytes]:
    with server.connect(tls) as sock, sock.makefile("rb") as f:
        sock.sendall(raw.encode() if isinstance(raw, str) else raw)
        return read_response(f)


def closed_by_peer(sock: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes; fails if it does not close within `within`."""
    sock.settimeout(within)
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            got += chunk
    return got


class Trickle:
    """Connections that each send the start of a request header and stop (plus idle ones)."""

    def __init__(self, server: Server, count: int, idle: int = 0) -> None:
        self.socks = [server.connect() for _ in range(count)]
        self.idle = [server.connect(tls=False) for _ in range(idle)]
        for sock in self.socks:
            sock.sendall(b"GET /primary HTTP/1.1\r\nHost: x\r\nX-Slow: a")

    def more(self) -> None:
        for sock in self.socks:
            sock.sendall(b"a")

    def close(self) -> None:
        for sock in self.socks + self.idle:
            sock.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module", params=["http", "https", "http, GET inline", "https, GET inline",
                                        "http, GET fast", "https, GET fast"])
def server(request: pytest.FixtureRequest, pki: Pki) -> Iterator[Server]:
    https = request.param.startswith("https")
    options: dict[str, Any] = {}
    if "inline" in request.param:
        options["worker_class"] = InlineWorker
    elif "fast" in request.param:
        options["worker_class"] = FastTlsWorker if https else FastWorker
    with serving(pki if https else None, options=options) as s:
        s.inline, s.kind = bool(options), request.param
        yield s


def timed_get(server: Server, path: str = "/primary") -> float:
    started = time.monotonic()
    code, _, body = request(server, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert code == 200 and json.loads(body)["path"] == path
    return time.monotonic() - started


# -- slow clients ----------------------------------------------------------------------------------


def test_slow_and_idle_clients_never_hold_a_thread(server: Server) -> None:
    slow = Trickle(server, 60, idle=20)  # thirty times the threads
    try:
        for _ in range(3):
            slow.more()
            took = [timed_get(server) for _ in range(10)]
            assert max(took) < ANSWER_WITHIN, took
    finally:
        slow.close()


def test_half_open_tls_handshakes_never_hold_a_thread(server: Server) -> None:
    if server.context is None:
        pytest.skip("TLS only")
    raw = []
    for _ in range(30):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, and silence
        raw.append(sock)
    try:
        took = [timed_get(server) for _ in range(10)]
        assert max(took) < ANSWER_WITHIN, took
    finally:
        for sock in raw:
            sock.close()


def test_plain_http_on_the_tls_port_gets_no_answer(server: Server) -> None:
    if server.context is None:
        pytest.skip("TLS only")
    with server.connect(tls=False) as sock:
        sock.sendall(b"GET /primary HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"HTTP/1.1 200" not in closed_by_peer(sock, 5)


# -- keep-alive, pipelining, bodies ---------------------------------------------------------------


def test_keep_alive_and_pipelined_requests(server: Server) -> None:
    with server.connect() as sock, sock.makefile("rb") as f:
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\nGET /thr")
        answers = [read_response(f) for _ in range(2)]
        assert [json.loads(b)["path"] for _, _, b in answers] == ["/one", "/two"]
        assert all(h["connection"] == "keep-alive" for _, h, _ in answers)
        sock.sendall(b"ee HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        code, _, body = read_response(f)
        assert code == 200 and json.loads(body) == {"path": "/three", "got": 3,  # a body: never the fast path
                                                    "tls": "https" if server.context else "http"}
        sock.sendall(b"GET /last HTTP/1.0\r\n\r\n")  # HTTP/1.0 without keep-alive: answered, then closed
        code, headers, body = read_response(f)
        assert code == 200 and headers["connection"] == "close"
        assert f.read() == b""


def test_a_body_arrives_whole_and_100_continue_is_sent(server: Server) -> None:
    body = b"x" * (300 * 1024)
    code, _, answer = request(server, b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(body), body))
    assert code == 200 and json.loads(answer)["got"] == len(body)
    with server.connect() as sock, sock.makefile("rb") as f:
        sock.sendall(b"PUT /c HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2000\r\n\r\n")
        assert f.readline().startswith(b"HTTP/1.1 100")
        assert f.readline() == b"\r\n"
        sock.sendall(b"y" * 2000)
        code, _, answer = read_response(f)
        assert code == 200 and json.loads(answer)["got"] == 2000


def test_a_body_over_the_cap_is_answered_without_being_read_then_the_connection_closes(server: Server) -> None:
    with server.connect() as sock, sock.makefile("rb") as f:
        sock.sendall(b"PATCH /config HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (5 * limits.MAX_BODY))
        sock.sendall(b"z" * 100000)  # part of it: the answer must come anyway, and intact
        code, headers, _ = read_response(f)
        assert code == 413 and headers["connection"] == "close"
    with server.connect() as sock, sock.makefile("rb") as f:
        sock.sendall(b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        code, headers, _ = read_response(f)
        assert code == 411 and headers["connection"] == "close"


def test_an_answer_the_client_does_not_read_holds_neither_the_loop_nor_its_bytes(server: Server) -> None:
    """Answered inline, what the socket cannot take at once is finished by a thread, intact and in order.

    (Answered by threads, each such client holds one for up to IO_TIMEOUT: two of them hold them all.)
    """
    if not server.inline:
        pytest.skip("answers written in the loop only")
    with server.connect() as stuck, server.connect() as greedy, stuck.makefile("rb") as f:
        stuck.sendall(b"GET /large HTTP/1.1\r\nHost: x\r\n\r\n")  # and reads nothing for now
        greedy.sendall(b"GET /large HTTP/1.1\r\nHost: x\r\n\r\n" * 4)  # pipelined, and never read
        took = [timed_get(server) for _ in range(10)]
        assert max(took) < ANSWER_WITHIN, took
        code, headers, body = read_response(f)
        assert code == 200 and headers["connection"] == "keep-alive" and body == b"L" * LARGE
        stuck.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        code, _, body = read_response(f)
        assert code == 200 and json.loads(body)["path"] == "/after"


# -- deadlines and limits, with short timeouts ------------------------------------------------------------


@pytest.fixture(scope="module")
def tight() -> Iterator[Server]:
    with serving(HEADER_TIMEOUT=1.0, REQUEST_TIMEOUT=2.0, MAX_HEAD=4096,
                 options={"worker_connections": 30, "keepalive": 1}) as s:
        yield s


def test_a_request_that_does_not_arrive_in_time_gets_408(tight: Server) -> None:
    with tight.connect() as trickler, tight.connect() as idle, tight.connect() as slow_body:
        trickler.sendall(b"GET /primary HTTP/1.1\r\nHost")
        slow_body.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        started = time.monotonic()
        assert closed_by_peer(trickler, 5).startswith(b"HTTP/1.1 408 ")
        assert closed_by_peer(idle, 5) == b""  # never said a word: closed without an answer
        assert 0.9 < time.monotonic() - started < 2.5
        assert closed_by_peer(slow_body, 5).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 3.5


def test_an_idle_kept_alive_connection_is_closed_after_keepalive(tight: Server) -> None:
    with tight.connect() as sock, sock.makefile("rb") as f:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(f)[0] == 200
        started = time.monotonic()
        assert closed_by_peer(sock, 5) == b""
        assert time.monotonic() - started < 2.5


def test_an_oversized_header_block_is_431(tight: Server) -> None:
    with tight.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 5000)
        assert closed_by_peer(sock, 5).startswith(b"HTTP/1.1 431 ")


def test_past_the_connection_limit_the_longest_waiting_connection_goes(tight: Server) -> None:
    first = tight.connect()  # accepted first (the listen queue is FIFO): the longest wait
    first.sendall(b"GET /primary HTTP/1.1\r\n")
    others = [tight.connect() for _ in range(29)]
    try:
        for _ in range(5):
            assert timed_get(tight) < ANSWER_WITHIN  # each one over the limit evicts someone
        assert closed_by_peer(first, 2) == b""
    finally:
        first.close()
        for sock in others:
            sock.close()


def test_sigterm_ends_the_worker_promptly_with_slow_clients_connected() -> None:
    with serving() as s:
        slow = Trickle(s, 20, idle=5)
        try:
            os.kill(s.pid, signal.SIGTERM)
            started = time.monotonic()
            wait_for(lambda: not alive(s.pid), 5, "the worker to stop")
            assert time.monotonic() - started < 4
        finally:
            slow.close()


def test_threads_serve_in_parallel_with_the_loop_reading() -> None:
    """Two threads, twenty callers at once, each request sent a byte at a time: all answered, none lost."""
    with serving() as s:
        answers: list[int] = []
        lock = threading.Lock()

        def caller(i: int) -> None:
            raw = f"GET /c{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            with s.connect() as sock, sock.makefile("rb") as f:
                for byte in raw:
                    sock.sendall(bytes([byte]))
                code = read_response(f)[0]
            with lock:
                answers.append(code)

        callers = [threading.Thread(target=caller, args=(i,)) for i in range(20)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(20)
        assert answers == [200] * 20


# -- the fast path's parser --------------------------------------------------------------------------------


def plain(raw: bytes) -> gworker.Plain | None:
    return gworker.parse_plain(raw, 4094, 100, 8190)


def test_parse_plain_takes_what_load_balancers_send() -> None:
    assert plain(b"GET /primary HTTP/1.0\r\n\r\n") == gworker.Plain(b"GET", b"/primary", b"", b"1.0", False)
    assert plain(b"GET /replica?lag=1MB&tag_zone=a%20b HTTP/1.1\r\nHost: 10.0.0.1:8008\r\n"
                 b"User-Agent: HAProxy\r\nConnection: close\r\n\r\n") == \
        gworker.Plain(b"GET", b"/replica", b"lag=1MB&tag_zone=a%20b", b"1.1", False)
    assert plain(b"OPTIONS / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n") == \
        gworker.Plain(b"OPTIONS", b"/", b"", b"1.1", True)
    assert plain(b"HEAD /health HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n") == \
        gworker.Plain(b"HEAD", b"/health", b"", b"1.0", True)
    # The first Connection header decides, as in gunicorn.
    assert plain(b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n").keep is False  # type: ignore[union-attr]


@pytest.mark.parametrize("raw", [
    b"GET /primary HTTP/1.1\n\n",  # bare LF
    b"GET /primary HTTP/1.1\r\nHost: x\n\r\n",
    b"get /primary HTTP/1.1\r\n\r\n",
    b"GET http://x/primary HTTP/1.1\r\n\r\n",  # absolute form
    b"GET /%70rimary HTTP/1.1\r\n\r\n",  # an escaped path
    b"GET /primary#x HTTP/1.1\r\n\r\n",
    b"GET  /primary HTTP/1.1\r\n\r\n",
    b"GET /primary HTTP/2.0\r\n\r\n",
    b"GET /primary\r\n\r\n",
    b"GET /primary HTTP/1.1\r\nX_Under: 1\r\n\r\n",  # gunicorn's own rules for these names
    b"GET /primary HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET /primary HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"GET /primary HTTP/1.1\r\nHost: \x00\r\n\r\n",
    b"GET /primary HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n",
    b"GET /primary HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
    b"GET /primary HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /primary HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
    b"GET /primary HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
    b"GET /primary HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n",  # past limit_request_fields
    b"GET /primary HTTP/1.1\r\nX-A: " + b"a" * 8200 + b"\r\n\r\n",  # past limit_request_field_size
    b"GET /" + b"a" * 4100 + b" HTTP/1.1\r\n\r\n",  # past limit_request_line
])
def test_parse_plain_leaves_anything_unusual_to_gunicorn(raw: bytes) -> None:
    assert plain(raw) is None


def test_the_fast_path_declines_and_gunicorn_answers(server: Server) -> None:
    """A request the fast path does not take is still answered, by the app."""
    code, _, body = request(server, b"GET /odd HTTP/1.1\r\nHost: x\r\nX_Under: 1\r\nConnection: close\r\n\r\n")
    assert code == 200 and json.loads(body)["path"] == "/odd" and "fast" not in json.loads(body)
    code, headers, body = request(server, b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert code == 200 and headers["connection"] == "close"
    assert json.loads(body).get("fast", False) == ("fast" in server.kind)
