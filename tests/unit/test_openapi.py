"""hasup/api/openapi.yaml: a valid OpenAPI 3 document that covers the falcon app, and the app conforms to it."""

from __future__ import annotations

import itertools
from importlib.resources import files
from typing import Any

import falcon.testing
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hasup.api.access import AccessControl
from hasup.api.app import AUTH_CHECKED, ApiSettings, create_app
from tests.unit.test_api_admin import FakeAdmin
from tests.unit.test_api_app import IDENT, LEADER, NOW, REPLICA, pg_replica, snap, view

METHODS = ("get", "head", "options", "post", "put", "patch", "delete")
# Paths no resource claims but the sink's generic health check serves with a meaningful answer.
SINK_HEALTH_PATHS = {"/sync", "/synchronous", "/async", "/asynchronous", "/quorum", "/read-only-sync",
                     "/read-only-synchronous", "/read-only-quorum"}


def load_doc() -> dict[str, Any]:
    text = (files("hasup.api") / "openapi.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


DOC = load_doc()
# A sync replica, so /sync and /read-only-sync answer 200 sometimes.
SYNC_REPLICA = snap(pg_replica(), view(leader="n2", holds_lock=False, sync={"leader": "n2", "sync_standby": "n1"}))
_snapshots = itertools.cycle([LEADER, REPLICA, SYNC_REPLICA, {}])
APP = create_app(lambda: next(_snapshots), IDENT, clock=lambda: NOW, admin=FakeAdmin())
SCHEMA = schemathesis.openapi.from_dict(DOC)
SCHEMA.app = APP


def routed() -> dict[str, set[str]]:
    """{path template: methods with a responder of the resource}, from the falcon router."""
    out: dict[str, set[str]] = {}
    nodes = list(APP._router._roots)
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children or [])
        if node.resource is None:
            continue
        template = node.uri_template.removesuffix("/{_rest:path}") or "/"
        methods = {m.lower() for m, responder in node.method_map.items()
                   if getattr(responder, "__self__", None) is node.resource}
        out.setdefault(template, set()).update(methods)
    return out


def test_document_is_valid_openapi_3() -> None:
    assert DOC["openapi"].startswith("3.0")
    SCHEMA.validate()  # schemathesis's OpenAPI meta-schema check
    operations = list(SCHEMA.get_all_operations())
    assert operations and all(op.ok() for op in operations)


def test_every_route_is_documented() -> None:
    documented = {path: {m for m in item if m in METHODS} for path, item in DOC["paths"].items()}
    routes = routed()
    assert set(routes) | SINK_HEALTH_PATHS == set(documented)
    for path, methods in routes.items():
        assert methods == documented[path], path
    for path in SINK_HEALTH_PATHS:
        assert documented[path] == {"get", "head", "options"}


def test_sink_paths_answer_the_health_check() -> None:
    client = falcon.testing.TestClient(create_app(lambda: SYNC_REPLICA, IDENT, clock=lambda: NOW))
    for path in SINK_HEALTH_PATHS:
        result = client.simulate_get(path)
        assert result.status_code in (200, 503) and result.json["role"] == "replica", path
    assert client.simulate_get("/sync").status_code == 200
    assert client.simulate_get("/async").status_code == 503


def test_undocumented_methods_answer_501() -> None:
    client = falcon.testing.TestClient(create_app(lambda: LEADER, IDENT, clock=lambda: NOW, admin=FakeAdmin()))
    for path, item in DOC["paths"].items():
        for method in set(METHODS) - set(item):
            result = client.simulate_request(method.upper(), path, json={})
            assert result.status_code == 501, (method, path)
            assert result.json == {"error": f"Unsupported method ({method.upper()!r})"}


@pytest.mark.parametrize(("access", "code"), [(AccessControl("admin", "pw"), 401),
                                              (AccessControl(allowlist=["10.9.9.9"]), 403)])
def test_auth_checked_operations_document_the_denial(access: AccessControl, code: int) -> None:
    app = create_app(lambda: LEADER, IDENT, clock=lambda: NOW, admin=FakeAdmin(),
                     settings=ApiSettings(access=access))
    client = falcon.testing.TestClient(app)
    checked = 0
    for path, item in DOC["paths"].items():
        for method in set(item) & {"post", "put", "patch", "delete"}:
            if (method.upper(), path.strip("/")) not in AUTH_CHECKED:
                continue
            checked += 1
            result = client.simulate_request(method.upper(), path, json={"leader": "n1"})
            assert result.status_code == code, (method, path)
            assert str(code) in item[method]["responses"], (method, path)
    assert checked == 10


@SCHEMA.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_app_conforms_to_the_document(case: schemathesis.Case) -> None:
    # status_code_conformance rejects every undocumented code: 500, and any 5xx the document does not list
    # (not_a_server_error is left out because 502/503 are documented answers).
    response = case.call_and_validate(checks=[status_code_conformance, content_type_conformance,
                                              response_headers_conformance, response_schema_conformance])
    assert response.status_code != 500
