"""The etcd v3 gateway client's parsers: whatever etcd (or something posing as it) answers,
a typed value or a clear error comes out, never a crash."""

from __future__ import annotations

import base64
import io
import json
import time

from hypothesis import given
from hypothesis import strategies as st

from hasup.dcs.etcd3_client import (
    AuthExpired,
    Etcd3Error,
    KeyValue,
    RetryableError,
    _api_prefix,
    _error_of,
    _messages,
    b64,
    header_revision,
    int64,
    parse_kv,
    prefix_end,
    unb64,
)

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=20)


def test_keys_and_values_round_trip_through_base64():
    assert unb64(b64("/service/batman/leader")) == "/service/batman/leader"
    assert unb64("not base64!") == "" and unb64(None) == "" and unb64(12) == ""


def test_prefix_end_selects_exactly_the_prefix():
    end = base64.b64decode(prefix_end("/service/batman/"))
    assert end == b"/service/batman0"
    assert b"/service/batman/zzz" < end and b"/service/batman0" >= end


def test_int64_as_the_gateway_writes_it():
    assert int64("42") == 42 and int64(42) == 42
    assert int64(None) == 0 and int64("") == 0 and int64("-1") == 0 and int64(True) == 0
    assert int64("1e400") == 0 and int64(str(2**63)) == 0 and int64(1.5) == 0 and int64("9" * 400) == 0


def test_a_key_value_is_parsed_with_every_field():
    raw = {"key": b64("/s/c/leader"), "value": b64("node1"), "mod_revision": "7", "create_revision": "5",
           "lease": "694d77aa9e38260f", "version": "2"}
    kv = parse_kv(raw)
    assert kv == KeyValue("/s/c/leader", "node1", 7, 5, 0)  # a hex string is not an int64: no lease
    raw["lease"] = "7587868390432530959"
    assert parse_kv(raw) == KeyValue("/s/c/leader", "node1", 7, 5, 7587868390432530959)
    assert parse_kv({"value": b64("x")}) is None and parse_kv([1]) is None


@given(json_values)
def test_parse_kv_never_raises(value):
    result = parse_kv(value)
    assert result is None or isinstance(result, KeyValue)


@given(json_values)
def test_header_revision_never_raises(value):
    doc = value if isinstance(value, dict) else {"header": value}
    assert header_revision(doc) >= 0


def test_the_api_prefix_follows_the_cluster_version():
    assert _api_prefix({"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}) == "/v3"
    assert _api_prefix({"etcdserver": "3.6.1", "etcdcluster": "3.6.0"}) == "/v3"
    assert _api_prefix({"etcdserver": "3.3.11", "etcdcluster": "3.3.0"}) == "/v3beta"
    assert _api_prefix({"etcdserver": "3.2.0", "etcdcluster": "3.2.0"}) == "/v3alpha"
    assert _api_prefix(None) == "/v3" and _api_prefix({"etcdcluster": ["x"]}) == "/v3"


@given(json_values, st.integers(min_value=100, max_value=599))
def test_error_mapping_never_raises(doc, status):
    assert isinstance(_error_of(status, doc), Etcd3Error | RetryableError | AuthExpired)


def test_errors_are_sorted_by_what_another_member_could_do():
    assert isinstance(_error_of(503, {"error": "etcdserver: leader changed", "code": 14}), RetryableError)
    assert isinstance(_error_of(400, {"message": "etcdserver: request timed out", "code": 4}), RetryableError)
    assert isinstance(_error_of(401, {"error": "etcdserver: invalid auth token", "code": 16}), AuthExpired)
    refused = _error_of(400, {"error": "etcdserver: permission denied", "code": 7})
    assert isinstance(refused, Etcd3Error) and refused.code == 7 and "permission denied" in str(refused)
    assert isinstance(_error_of(502, None), RetryableError)  # a proxy's HTML page
    nested = _error_of(200, {"error": {"grpc_code": 14, "code": 14, "message": "etcdserver: no leader"}})
    assert isinstance(nested, RetryableError)


class Trickle:
    """A response body that arrives in pieces, as a gateway stream does."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)

    def read1(self, _n: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


def test_stream_messages_are_split_whatever_the_chunking():
    one = json.dumps({"result": {"created": True}}).encode()
    two = json.dumps({"result": {"events": [{"type": "DELETE"}]}}).encode()
    body = one + b"\n" + two + b"\n"
    for cut in range(1, len(body)):
        got = list(_messages(Trickle(body[:cut], body[cut:]), time.monotonic() + 5))
        assert got == [json.loads(one), json.loads(two)], cut


def test_a_stream_of_garbage_yields_nothing_and_ends():
    stream = Trickle(b"<html>", b"not json", b"[1, 2]")
    assert list(_messages(stream, time.monotonic() + 5)) == []
    assert list(_messages(io.BytesIO(b'{"result": {}}'), time.monotonic() + 5)) == [{"result": {}}]
