"""TLS for the REST API: a context from certfile/keyfile/keyfile_password/cafile/verify_client.

Certificates are made with openssl (tests/harness/pki.py); the context
serves a tiny HTTPS server, and real clients connect to it.
"""

from __future__ import annotations

import http.client
import http.server
import shutil
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from hasup import peers
from hasup.api import tls
from hasup.config import RestApiConfig
from hasup.dcs.model import Member
from tests.harness.pki import Pki, make_pki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def restapi(pki: Pki, **kw: str) -> RestApiConfig:
    return RestApiConfig("127.0.0.1:0", "127.0.0.1:8008", certfile=pki.server_cert, keyfile=pki.server_key,
                         keyfile_password=pki.key_password, cafile=pki.ca, **kw)


STATUS_BODY = b'{"state": "running", "role": "replica", "xlog": {"received_location": 7, "replayed_location": 5}}'


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 -- the stdlib's naming
        self.send_response(200)
        self.end_headers()
        self.wfile.write(STATUS_BODY)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def serve() -> Iterator[list[http.server.ThreadingHTTPServer]]:
    servers: list[http.server.ThreadingHTTPServer] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def start(servers: list[http.server.ThreadingHTTPServer], context: ssl.SSLContext) -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    servers.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def https_get(port: int, context: ssl.SSLContext) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        conn.request("GET", "/patroni")
        return conn.getresponse().status
    finally:
        conn.close()


def test_encrypted_key_https_with_the_ca_and_no_plain_http(pki: Pki,
                                                          serve: list[http.server.ThreadingHTTPServer]) -> None:
    port = start(serve, tls.make_context(restapi(pki)))
    client = ssl.create_default_context(cafile=pki.ca)
    assert https_get(port, client) == 200
    with pytest.raises(ssl.SSLError):  # a client that does not trust our CA
        https_get(port, ssl.create_default_context())
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    with pytest.raises((http.client.HTTPException, OSError)):
        plain.request("GET", "/patroni")
        plain.getresponse()
    plain.close()


def test_wrong_key_password_fails_loudly(pki: Pki) -> None:
    with pytest.raises(ssl.SSLError):
        tls.make_context(replace(restapi(pki), keyfile_password="wrong"))


def test_verify_client_required(pki: Pki, serve: list[http.server.ThreadingHTTPServer]) -> None:
    port = start(serve, tls.make_context(restapi(pki, verify_client="required")))
    anonymous = ssl.create_default_context(cafile=pki.ca)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        https_get(port, anonymous)
    with_cert = ssl.create_default_context(cafile=pki.ca)
    with_cert.load_cert_chain(pki.client_cert, pki.client_key)
    assert https_get(port, with_cert) == 200


def test_gunicorn_options(pki: Pki) -> None:
    assert tls.gunicorn_options(RestApiConfig("h:1", "h:1")) == {}
    options = tls.gunicorn_options(restapi(pki))
    assert options["certfile"].endswith("server.pem") and options["keyfile"].endswith("server.key")
    assert "keyfile_password" not in options and pki.key_password not in repr(options)
    context = options["ssl_context"](None, lambda: ssl.create_default_context())
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_NONE



def test_peers_are_asked_over_tls_with_our_ca_and_certificate(pki: Pki,
                                                              serve: list[http.server.ThreadingHTTPServer]) -> None:
    port = start(serve, tls.make_context(restapi(pki, verify_client="required")))
    member = Member("n2", {"api_url": f"https://127.0.0.1:{port}/patroni"})
    # Our own restapi certificate is the client certificate, as Patroni falls back to it.
    status = peers.fetch_status(member, context=peers.client_context(restapi(pki)))
    assert status is not None and (status.role, status.wal_position) == ("replica", 7)
    assert peers.fetch_status(member) is None  # without our CA the peer looks unreachable
    no_cert = peers.client_context(replace(restapi(pki), certfile=None, keyfile=None))
    assert no_cert is not None and peers.fetch_status(member, context=no_cert) is None
    assert peers.fetch_all([member], peers.client_context(restapi(pki)))["n2"] is not None
    assert peers.client_context(RestApiConfig("h:1", "h:1")) is None
