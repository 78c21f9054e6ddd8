"""Fakes for the hasupctl tests: an in-memory etcd store and one small HTTP server per member."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hasup.dcs.model import Cluster, build_cluster
from hasup.dcs.store import DCSError, compact

SCOPE = "main"


class FakeClock:
    """Monotonic time that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds
Answer = tuple[int, Any]  # status, body (str: text/plain; anything else: JSON)


class FakeStore:
    """The cluster's keys as {relative key: (value, modifiedIndex, expiration)}."""

    def __init__(self) -> None:
        self.nodes: dict[str, tuple[str | None, int, str | None]] = {}
        self.index = 10
        self.down = False
        self.deleted = False
        self.writes: list[tuple[str, Any, int | None]] = []

    def put(self, key: str, value: Any) -> None:
        self.index += 1
        text = value if isinstance(value, str) else compact(value)
        self.nodes[key] = (text, self.index, None)

    def value(self, key: str) -> Any:
        raw = self.nodes[key][0]
        return json.loads(raw) if raw else raw

    def get_cluster(self) -> Cluster:
        if self.down:
            raise DCSError("etcd is not responding properly: connection refused")
        return build_cluster(dict(self.nodes), self.index)

    def _cas(self, key: str, value: Any, index: int | None) -> bool:
        self.writes.append((key, value, index))
        if index and key in self.nodes and self.nodes[key][1] != index:
            return False
        self.put(key, value)
        return True

    def set_config(self, config: dict[str, Any], index: int | None = None) -> bool:
        return self._cas("config", config, index)

    def set_failover(self, value: dict[str, Any], index: int | None = None) -> bool:
        return self._cas("failover", value, index)

    def clear_failover(self, index: int | None = None) -> bool:
        return self._cas("failover", {}, index)

    def delete_cluster(self) -> None:
        self.nodes.clear()
        self.deleted = True

    def read_raw(self) -> dict[str, str]:
        if self.down:
            raise DCSError("etcd is not responding properly: connection refused")
        return {k: v for k, (v, _i, _e) in self.nodes.items() if v is not None}

    def put_raw(self, rel: str, value: str) -> None:
        self.writes.append((rel, value, None))
        self.put(rel, value)


@dataclass
class Request:
    method: str
    path: str
    body: Any
    authorization: str | None


@dataclass
class FakeApi:
    """One member's REST API: answers come from `answers`, every request is kept in `requests`."""

    name: str
    answers: dict[tuple[str, str], Answer | Callable[[Request], Answer]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/patroni"

    def calls(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def handle(self, req: Request) -> Answer:
        self.requests.append(req)
        answer = self.answers.get((req.method, req.path))
        if answer is None:
            return 501, {"error": f"Unsupported method ({req.method!r})"}
        return answer(req) if callable(answer) else answer


def _handler(api: FakeApi) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, answer = api.handle(Request(self.command, self.path, body, self.headers.get("Authorization")))
            data = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve  # noqa: N815 -- the stdlib's naming

    return Handler


@contextmanager
def fake_apis(*names: str) -> Iterator[dict[str, FakeApi]]:
    apis = {n: FakeApi(n) for n in names}
    threads = []
    for api in apis.values():
        api.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
        t = threading.Thread(target=api.server.serve_forever, args=(0.02,), daemon=True)
        t.start()
        threads.append(t)
    try:
        yield apis
    finally:
        for api in apis.values():
            assert api.server is not None
            api.server.shutdown()
            api.server.server_close()
        for t in threads:
            t.join(5)


def member_value(name: str, api_url: str | None, port: int, role: str = "replica", state: str = "running",
                 **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"conn_url": f"postgres://127.0.0.1:{port}/postgres", "state": state, "role": role,
                            "version": "4.1.4", "hasup_version": "0.1.0", "timeline": 1}
    if api_url:
        data["api_url"] = api_url
    data.update(extra)
    return data


def three_nodes(store: FakeStore, apis: dict[str, FakeApi] | None = None, leader: str | None = "node1",
                config: dict[str, Any] | None = None, optime: int = 50 * 1024 * 1024) -> None:
    """A running three-member cluster: node1 leads, node2 streams in step, node3 lags by 3 MB."""
    store.put("initialize", "7300000000000000001")
    store.put("config", config if config is not None else {"ttl": 30, "loop_wait": 10, "retry_timeout": 10})
    store.put("history", [[1, 25165824, "no recovery target specified", "2030-01-01T00:00:00+00:00", "node1"]])
    store.put("status", {"optime": optime})
    for i, name in enumerate(("node1", "node2", "node3")):
        url = apis[name].url if apis else f"http://127.0.0.1:{8008 + i}/patroni"
        if name == leader:
            data = member_value(name, url, 5432 + i, role="primary", xlog_location=optime)
        else:
            lag = 0 if name == "node2" else 3 * 1024 * 1024
            data = member_value(name, url, 5432 + i, replication_state="streaming", xlog_location=optime - lag,
                                receive_lsn=optime - lag, replay_lsn=optime - lag)
        store.put(f"members/{name}", data)
    if leader:
        store.put("leader", leader)
