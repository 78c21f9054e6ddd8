"""The REST API of a live node over TLS, with Basic auth (docs/rest-api.md, "TLS" and "Access control").

One single-node cluster serves https through its real gunicorn, with an
encrypted key (restapi.keyfile_password), authentication and extra headers:
curl trusts it only with the CA, plain http gets no HTTP answer,
schemathesis finds the live answers true to hasup/api/openapi.yaml (safe
methods; unsafe ones without credentials get 401), and, after one restart
with verify_client: required, only a client with a certificate gets in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hasup import peers
from hasup.api.app import AUTH_CHECKED
from hasup.config import RestApiConfig
from hasup.dcs.model import Member
from tests.harness import Node, TestCluster, wait_for
from tests.harness.pki import Pki, make_pki
from tests.unit.test_openapi import load_doc

pytestmark = pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("curl")), reason="needs openssl, curl")

USER, PASSWORD = "admin", "api-secret-77ab"
HTTP_HEADERS = {"X-Hasup-Test": "every-answer"}
HTTPS_HEADERS = {"Strict-Transport-Security": "max-age=31536000"}
SAFE = ("GET", "HEAD", "OPTIONS")


@dataclass
class Live:
    cluster: TestCluster
    node: Node
    pki: Pki


@pytest.fixture(scope="module")
def live():
    c = TestCluster(1)
    try:
        pki = make_pki(os.path.join(c.base, "pki"))
        pki.chown(c.owner)  # the node runs as the test user and reads its own key
        c.nodes[0].extra.update({
            "restapi.certfile": pki.server_cert, "restapi.keyfile": pki.server_key,
            "restapi.keyfile_password": pki.key_password, "restapi.cafile": pki.ca,
            "restapi.authentication.username": USER, "restapi.authentication.password": PASSWORD,
            "restapi.http_extra_headers": HTTP_HEADERS, "restapi.https_extra_headers": HTTPS_HEADERS,
        })
        c.etcd.start()
        c.start_all()
        wait_for(lambda: c.nodes[0].api("/patroni")[0] == 200, 30, "the api over https")
        yield Live(c, c.nodes[0], pki)
    finally:
        c.destroy()


def curl(*args: str) -> tuple[int, int | None, dict[str, str], str]:
    """(curl's exit code, HTTP status or None, response headers, body) of one request."""
    proc = subprocess.run(["curl", "-sS", "-i", "--noproxy", "*", "--max-time", "5", *args],
                          capture_output=True, timeout=30)
    head, _, body = proc.stdout.decode(errors="replace").partition("\r\n\r\n")
    lines = head.split("\r\n")
    code = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else None
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:]) if k}
    return proc.returncode, code, headers, body


def test_curl_with_the_ca_gets_the_status_json_and_every_extra_header(live):
    node, pki = live.node, live.pki
    rc, code, headers, body = curl("--cacert", pki.ca, f"https://127.0.0.1:{node.api_port}/patroni")
    assert (rc, code) == (0, 200), body
    status = json.loads(body)
    assert status["patroni"]["name"] == node.name and status["role"] == "primary"
    for name, value in {**HTTP_HEADERS, **HTTPS_HEADERS}.items():
        assert headers.get(name.lower()) == value, (name, headers)
    assert PASSWORD not in body and pki.key_password not in body


def test_plain_http_to_the_tls_port_gets_no_http_answer(live):
    node = live.node
    rc, code, _, _ = curl(f"http://127.0.0.1:{node.api_port}/patroni")
    assert rc != 0 and code is None


def test_curl_without_the_ca_fails_verification(live):
    node = live.node
    rc, code, _, _ = curl(f"https://127.0.0.1:{node.api_port}/patroni")
    assert (rc, code) == (60, None)  # 60: the peer's certificate cannot be authenticated


def test_member_key_advertises_https_and_the_harness_speaks_it(live):
    node = live.node
    assert live.cluster.member(node.name)["api_url"] == f"https://127.0.0.1:{node.api_port}/patroni"
    assert node.api_base.startswith("https://")
    code, status = node.api("/primary")
    assert code == 200 and status["role"] == "primary"


def test_unsafe_requests_over_tls_need_credentials(live):
    node, pki = live.node, live.pki
    url = f"https://127.0.0.1:{node.api_port}/reload"
    rc, code, headers, _ = curl("--cacert", pki.ca, "-X", "POST", url)
    assert (rc, code) == (0, 401) and headers.get("www-authenticate", "").startswith("Basic")
    rc, code, _, body = curl("--cacert", pki.ca, "-u", f"{USER}:{PASSWORD}", "-X", "POST", url)
    assert (rc, code) == (0, 202), body


# -- schemathesis against the live node --------------------------------------------------------------

LIVE_SCHEMA = schemathesis.openapi.from_dict(load_doc())
CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def auth_checked(method: str, path: str) -> bool:
    return (method.upper(), path.strip("/").split("/", 1)[0]) in AUTH_CHECKED


@LIVE_SCHEMA.parametrize()
@settings(max_examples=3, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_live_node_conforms_to_the_document(case: schemathesis.Case, live: Live) -> None:
    # Safe methods are checked in full; unsafe ones go out without credentials, so nothing changes: the
    # endpoints Patroni guards must say 401, and the others (501, unsupported) must match the document.
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    node, pki = live.node, live.pki
    with requests.Session() as session:
        session.trust_env = False  # no proxy from the environment
        response = case.call(base_url=node.api_base, session=session, verify=pki.ca, timeout=10)
    if case.method.upper() not in SAFE and auth_checked(case.method, case.path):
        assert response.status_code == 401, (case.method, case.path, response.status_code)
    case.validate_response(response, checks=CHECKS)
    assert response.status_code != 500


# -- verify_client: required (last: it restarts the node) ---------------------------------------------


def test_verify_client_required_lets_in_only_clients_with_a_certificate(live):
    node, pki = live.node, live.pki
    node.stop()
    node.extra["restapi.verify_client"] = "required"
    node.start()
    # The harness shows the node's own certificate (tests/harness Node.api_context).
    def back_as_primary() -> bool:
        code, body = node.api("/patroni")
        return code == 200 and isinstance(body, dict) \
            and (body.get("role"), body.get("state")) == ("primary", "running")

    wait_for(back_as_primary, 60, "the api back with verify_client: required, and PostgreSQL running as primary")
    with open(node.config_path) as f:
        assert yaml.safe_load(f)["restapi"]["verify_client"] == "required"
    url = f"https://127.0.0.1:{node.api_port}/patroni"
    rc, code, _, _ = curl("--cacert", pki.ca, url)
    assert rc != 0 and code is None  # the handshake itself demands a certificate
    rc, code, _, body = curl("--cacert", pki.ca, "--cert", pki.client_cert, "--key", pki.client_key, url)
    assert (rc, code) == (0, 200) and json.loads(body)["patroni"]["name"] == node.name
    # A peer asking this node (election's leader race, switchover checks) gets in with its restapi files.
    member = Member(node.name, live.cluster.member(node.name))
    restapi = node.config()["restapi"]
    mine = RestApiConfig("127.0.0.1:1", "127.0.0.1:1", certfile=restapi["certfile"], keyfile=restapi["keyfile"],
                         keyfile_password=restapi["keyfile_password"], cafile=restapi["cafile"])
    status = peers.fetch_status(member, context=peers.client_context(mine))
    assert status is not None and status.role == "primary"
