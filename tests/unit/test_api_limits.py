"""Request bounds (docs/rest-api.md, "Request limits"): body size, JSON depth and numbers, configuration, queries.

Through falcon.testing with the fake Admin of test_api_admin: a refused
request answers 4xx with a JSON reason, and nothing reaches the store.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as s

from hasup.api import limits
from hasup.api.health import parse_lag
from tests.unit.test_api_admin import AUTH, FakeAdmin, client, cluster, post
from tests.unit.test_api_app import REPLICA

MIB = 1024 * 1024


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


def send(method: str, path: str, raw: bytes, admin: FakeAdmin, headers: dict[str, str] | None = None) -> Any:
    return client(admin=admin).simulate_request(method, path, body=raw,
                                                headers={"Authorization": AUTH, **(headers or {})})


def assert_json_refusal(result: Any, code: int) -> str:
    assert result.status_code == code, (result.status_code, result.text[:200])
    assert result.headers["content-type"].startswith("application/json")
    reason = result.json["error"]
    assert isinstance(reason, str) and reason
    return reason


# -- ttl 1e400, a 600-deep object, a 2 MB value ----------------------------------------------------


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
def test_config_writes_that_cannot_be_applied_are_refused_before_etcd(method: str) -> None:
    admin = FakeAdmin()
    before = json.dumps(admin.cluster.config)
    cases = [
        (b'{"ttl": 1e400}', 400, "out of range"),
        (json.dumps({"postgresql": nested(600)}).encode(), 400, "nested deeper than 64"),
        (json.dumps({"postgresql": {"parameters": {"application_name": "x" * (2 * MIB)}}}).encode(), 413,
         "larger than"),
    ]
    for raw, code, words in cases:
        reason = assert_json_refusal(send(method, "/config", raw, admin), code)
        assert words in reason
    assert admin.writes == []
    assert json.dumps(admin.cluster.config) == before


def test_a_body_over_the_cap_is_413_on_any_path_before_the_access_check() -> None:
    admin = FakeAdmin()
    big = b"{" + b" " * (limits.MAX_BODY + 1) + b"}"
    for method, path in (("POST", "/switchover"), ("POST", "/restart"), ("PATCH", "/config"), ("GET", "/primary")):
        result = client(admin=admin).simulate_request(method, path, body=big)  # no credentials at all
        assert_json_refusal(result, 413)
    assert admin.writes == [] and admin.operations == []
    # Exactly at the cap is a body like any other (here: not JSON).
    at_cap = b" " * (limits.MAX_BODY - 2) + b"{}"
    assert send("PATCH", "/config", at_cap, admin).status_code == 400


def test_the_content_length_is_checked_before_anything_reads() -> None:
    class Unread:
        """A wsgi.input that fails if read: the 413 must come from the header alone."""

        def read(self, *_: Any) -> bytes:
            raise AssertionError("the body was read")

        readline = readlines = read

        def __iter__(self) -> Any:
            return iter(())

    admin = FakeAdmin()
    result = client(admin=admin).simulate_request(
        "PATCH", "/config", headers={"Authorization": AUTH, "Content-Length": str(5 * MIB)},
        extras={"wsgi.input": Unread()})
    assert_json_refusal(result, 413)


def test_a_chunked_body_is_411_and_never_read() -> None:
    admin = FakeAdmin()
    result = client(admin=admin).simulate_request(
        "PATCH", "/config", headers={"Authorization": AUTH, "Transfer-Encoding": "chunked"}, body=b"")
    assert assert_json_refusal(result, 411) == "Content-Length required"
    for path in ("/restart", "/reinitialize"):  # an optional body, but a chunked one is not "no body"
        result = client(admin=admin).simulate_request(
            "POST", path, headers={"Authorization": AUTH, "Transfer-Encoding": "chunked"}, body=b"")
        assert assert_json_refusal(result, 411) == "Content-Length required"
    assert admin.writes == [] and admin.operations == []
    no_body = client(admin=admin).simulate_post("/restart", headers={"Authorization": AUTH})
    assert no_body.status_code == 200 and admin.operations == [("restart", {})]  # no body at all: the defaults


@pytest.mark.parametrize("raw, words", [
    (b'{"ttl": NaN}', "NaN"), (b'{"ttl": Infinity}', "Infinity"), (b'{"ttl": -1e999}', "out of range"),
    (b'{"ttl": 1' + b"0" * 400 + b"}", "out of range"), (b'{"ttl": 30', "not valid JSON"),
    (b'{"a": "\xff"}', "not UTF-8"), (b"[" * 100000, "nested deeper"),
    (json.dumps(nested(65)).encode(), "nested deeper"),
])
def test_bodies_json_will_not_hold_are_400(raw: bytes, words: str) -> None:
    admin = FakeAdmin()
    for method, path in (("PATCH", "/config"), ("PUT", "/config"), ("POST", "/switchover"), ("POST", "/failover"),
                         ("POST", "/restart"), ("POST", "/reinitialize")):
        assert words in assert_json_refusal(send(method, path, raw, admin), 400), (method, path)
    assert admin.writes == [] and admin.operations == []


def test_64_levels_are_fine() -> None:
    admin = FakeAdmin()
    raw = json.dumps({"tags_of_my_own": nested(63)}).encode()
    assert send("PATCH", "/config", raw, admin).status_code == 200
    assert limits.depth_of(admin.writes[0][1]) == 64


def test_a_configuration_too_large_to_carry_is_422_even_under_the_body_cap() -> None:
    admin = FakeAdmin()
    value = "x" * (limits.MAX_CONFIG_CHARS + 1)
    for method in ("PATCH", "PUT"):
        result = post(client(admin=admin), "/config", {"postgresql": {"parameters": {"archive_command": value}}},
                      method)
        assert result.status_code == 422 and "characters as stored" in result.json["problems"][0], result.json
    assert admin.writes == []


def test_a_stored_configuration_already_too_large_does_not_block_a_shrinking_patch() -> None:
    huge = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "junk": "x" * (limits.MAX_CONFIG_CHARS + 1)}
    admin = FakeAdmin(cluster(config=huge))
    assert post(client(admin=admin), "/config", {"junk": None}, "PATCH").status_code == 200
    assert "junk" not in admin.writes[0][1]


def test_what_no_node_would_read_back_from_etcd_is_never_written() -> None:
    """The etcd reader (hasup/dcs/parse.py) has the last word: REST never stores what it would refuse."""
    admin = FakeAdmin()
    for raw in (b'{"tags_of_my_own": "a\\u0000b"}', b'{"x": "\\ud800"}', b'{"x": 18446744073709551616}'):
        result = send("PATCH", "/config", raw, admin)
        assert result.status_code == 422 and "no node would read it" in result.json["error"], (raw, result.json)
    assert admin.writes == []


def test_values_over_the_configuration_files_maxima_are_422() -> None:
    admin = FakeAdmin()
    for body, key in (({"ttl": 10 ** 12}, "config.ttl"), ({"loop_wait": 10 ** 15}, "config.loop_wait")):
        result = post(client(admin=admin), "/config", body, "PATCH")
        assert result.status_code == 422, result.json
        assert any(p.startswith(key + ":") for p in result.json["problems"]), result.json
    assert admin.writes == []


# -- query parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("query, want", [
    ("lag=1e400", 200), ("lag=1e400MB", 200), ("lag=abc", 200), ("lag=", 200), ("lag=" + "9" * 5000, 200),
    ("lag=" + "9" * 400 + ".5", 200), ("lag=-1e400", 503), ("lag=1e1", 503), ("lag=1e3kB", 200),
    ("lag=nan", 200), ("lag=inf", 200), ("lag=0x400", 200), ("replication_state=" + "x" * 3000, 503),
    ("tag_" + "z" * 3000 + "=1", 503), ("tag_zone=" + "%ff" * 100, 503), ("tag_zone=a&" * 500 + "x=1", 200),
])
def test_bad_query_values_keep_patronis_codes_and_never_fail(query: str, want: int) -> None:
    # The replica lags 0x60 bytes behind; unparsable lag means unlimited, as in Patroni.
    c = client(REPLICA)
    for path in ("/replica", "/read-only", "/asynchronous"):
        result = c.simulate_get(path, query_string=query)
        assert result.status_code == want, (path, query[:40])
        assert result.json["role"] == "replica"
    for path in ("/readiness", "/health", "/primary"):
        assert c.simulate_get(path, query_string=query).status_code in (200, 503)


@pytest.mark.parametrize("text, want", [
    ("1e400", None), ("-1e400", -(2 ** 64)), ("1e6", 1000000), ("1.5e3kB", 1536000), ("9" * 101, None),
    ("1" + "0" * 99, 10 ** 99),
])
def test_parse_lag_bounds(text: str, want: int | None) -> None:
    assert parse_lag(text) == want


def test_a_long_path_is_just_another_unknown_path() -> None:
    result = client(REPLICA).simulate_get("/" + "/".join(["x" * 50] * 80))
    assert result.status_code == 503 and result.json["role"] == "replica"


# -- the parser itself ---------------------------------------------------------------------------------

JSON_VALUES = s.recursive(
    s.none() | s.booleans() | s.integers(-(10 ** 18), 10 ** 18) | s.floats(allow_nan=False, allow_infinity=False)
    | s.text(max_size=5),
    lambda inner: s.lists(inner, max_size=3) | s.dictionaries(s.text(max_size=3), inner, max_size=3),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_parse_json_round_trips_what_json_writes(value: Any) -> None:
    text = json.dumps(value)
    assert limits.parse_json(text.encode()) == json.loads(text)
    assert limits.nesting_exceeds(text, limits.depth_of(value)) is False
    if limits.depth_of(value):
        assert limits.nesting_exceeds(text, limits.depth_of(value) - 1) is True


@settings(max_examples=500, deadline=None)
@given(s.binary(max_size=200) | s.text(alphabet='[]{}",:\\ 0123456789.eE-+truefalsnNIy', max_size=200))
def test_parse_json_answers_or_refuses_but_never_raises_anything_else(raw: bytes | str) -> None:
    try:
        limits.parse_json(raw)
    except limits.BadJson as exc:
        assert str(exc)


def test_depth_is_measured_without_recursion() -> None:
    deep: Any = []
    for _ in range(20000):
        deep = [deep]
    assert limits.depth_of(deep) == limits.MAX_DEPTH + 1  # stops counting past the limit
    assert limits.depth_of(deep, stop_after=10 ** 6) == 20001
    raw = ("[" * 20000 + "]" * 20000).encode()
    with pytest.raises(limits.BadJson, match="nested deeper"):
        limits.parse_json(raw)
    with pytest.raises(limits.BadJson, match="not valid JSON"):
        limits.parse_json(raw, max_depth=10 ** 6)  # json's own recursion, caught
    assert limits.nesting_exceeds('{"a": "[[[[[[", "b": "\\"[[[["}', 1) is False
