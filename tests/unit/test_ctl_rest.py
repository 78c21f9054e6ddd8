"""hasupctl's REST client: endpoint URLs, Basic auth, answers as messages, TLS with ctl's CA and client cert."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator

import pytest

from hasup.api import tls
from hasup.config import RestApiConfig
from hasup.ctl.rest import Response, RestClient, RestError, endpoint_url
from hasup.ctl.settings import CtlSettings, RestTls
from hasup.dcs.model import Member
from tests.harness.pki import Pki, make_pki
from tests.unit.ctl_fakes import fake_apis


def test_endpoint_url_replaces_the_path() -> None:
    assert endpoint_url("http://10.0.0.1:8008/patroni", "restart") == "http://10.0.0.1:8008/restart"
    assert endpoint_url("https://h:1/patroni?x=1", "/config") == "https://h:1/config"


def test_messages_from_json_errors_and_plain_text() -> None:
    assert Response(409, '{"error": "the configuration changed meanwhile"}').message == \
        "the configuration changed meanwhile"
    assert Response(503, "restart conditions\nare not satisfied").message == "restart conditions are not satisfied"
    assert Response(200, "[1]").json() == [1] and Response(200, "x").json() is None


def test_auth_header_body_and_status_codes_are_passed_through() -> None:
    with fake_apis("a") as apis:
        api = apis["a"]
        api.answers[("POST", "/restart")] = (503, "restart failed")
        client = RestClient(CtlSettings(username="u", password="p:w"))
        resp = client.request(Member("a", {"api_url": api.url}), "post", "restart", {"restart_pending": True})
        assert (resp.status, resp.message) == (503, "restart failed")
        (req,) = api.requests
        assert req.body == {"restart_pending": True} and req.authorization == "Basic dTpwOnc="
        # Without credentials there is no header at all.
        RestClient(CtlSettings()).request(Member("a", {"api_url": api.url}), "GET", "patroni")
        assert api.requests[1].authorization is None


def test_unreachable_members_raise_one_line() -> None:
    client = RestClient(CtlSettings())
    with pytest.raises(RestError, match="member x publishes no api_url"):
        client.request(Member("x", {}), "GET", "patroni")
    with pytest.raises(RestError, match="cannot reach member y at http://127.0.0.1:1/patroni"):
        client.request(Member("y", {"api_url": "http://127.0.0.1:1/patroni"}), "GET", "patroni")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def https_member(certs: Pki) -> Iterator[Member]:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 -- the stdlib's naming
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    restapi = RestApiConfig("127.0.0.1:0", "127.0.0.1:8008", certfile=certs.server_cert, keyfile=certs.server_key,
                            keyfile_password=certs.key_password, cafile=certs.ca, verify_client="required")
    server.socket = tls.make_context(restapi).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield Member("tls", {"api_url": f"https://127.0.0.1:{server.server_address[1]}/patroni"})
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_tls_with_ctl_cacert_and_client_certificate(certs: Pki, https_member: Member) -> None:
    good = RestTls(cacert=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key)
    assert RestClient(CtlSettings(tls=good)).request(https_member, "GET", "patroni").text == "ok"
    no_cert = RestTls(cacert=certs.ca)
    with pytest.raises(RestError, match="cannot reach member tls"):
        RestClient(CtlSettings(tls=no_cert)).request(https_member, "GET", "patroni")
    untrusted = RestTls(certfile=certs.client_cert, keyfile=certs.client_key)
    with pytest.raises(RestError, match="CERTIFICATE_VERIFY_FAILED"):
        RestClient(CtlSettings(tls=untrusted)).request(https_member, "GET", "patroni")
    insecure = RestTls(certfile=certs.client_cert, keyfile=certs.client_key, insecure=True)
    assert RestClient(CtlSettings(tls=insecure)).request(https_member, "GET", "patroni").status == 200
