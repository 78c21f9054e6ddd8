"""TLS for the REST API: a context from certfile/keyfile/keyfile_password/cafile/verify_client.

Certificates are made with openssl in a temporary directory; the context
serves a tiny HTTPS server, and real clients connect to it.
"""

from __future__ import annotations

import http.client
import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hasup.api import tls
from hasup.config import RestApiConfig

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
KEY_PASSWORD = "key-pass-phrase"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=hasup test CA", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
             "-passout", f"pass:{KEY_PASSWORD}", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
             "-subj", "/CN=client", cwd=d)
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.pem", "-days", "2", cwd=d)
    return d


def restapi(pki: Path, **kw: str) -> RestApiConfig:
    return RestApiConfig("127.0.0.1:0", "127.0.0.1:8008", certfile=str(pki / "server.pem"),
                         keyfile=str(pki / "server.key"), keyfile_password=KEY_PASSWORD, cafile=str(pki / "ca.pem"),
                         **kw)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 -- the stdlib's naming
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

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


def test_encrypted_key_https_with_the_ca_and_no_plain_http(pki: Path,
                                                          serve: list[http.server.ThreadingHTTPServer]) -> None:
    port = start(serve, tls.make_context(restapi(pki)))
    client = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    assert https_get(port, client) == 200
    with pytest.raises(ssl.SSLError):  # a client that does not trust our CA
        https_get(port, ssl.create_default_context())
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    with pytest.raises((http.client.HTTPException, OSError)):
        plain.request("GET", "/patroni")
        plain.getresponse()
    plain.close()


def test_wrong_key_password_fails_loudly(pki: Path) -> None:
    with pytest.raises(ssl.SSLError):
        tls.make_context(replace(restapi(pki), keyfile_password="wrong"))


def test_verify_client_required(pki: Path, serve: list[http.server.ThreadingHTTPServer]) -> None:
    port = start(serve, tls.make_context(restapi(pki, verify_client="required")))
    anonymous = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        https_get(port, anonymous)
    with_cert = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with_cert.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    assert https_get(port, with_cert) == 200


def test_gunicorn_options(pki: Path) -> None:
    assert tls.gunicorn_options(RestApiConfig("h:1", "h:1")) == {}
    options = tls.gunicorn_options(restapi(pki))
    assert options["certfile"].endswith("server.pem") and options["keyfile"].endswith("server.key")
    assert "keyfile_password" not in options and KEY_PASSWORD not in repr(options)
    context = options["ssl_context"](None, lambda: ssl.create_default_context())
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_NONE

