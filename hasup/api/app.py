"""The falcon app: Patroni's REST endpoints, answered from the snapshot only.

create_app takes its dependencies (a snapshot reader, the node's identity, a
monotonic clock), so tests build it with fakes and call it through
falcon.testing.  No request path touches PostgreSQL or etcd.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import falcon

from hasup.api import health
from hasup.api import status as st
from hasup.api.snapshot import Identity, make_snapshot

log = logging.getLogger(__name__)

SnapshotReader = Callable[[], dict[str, Any]]
Clock = Callable[[], float]

# Patroni routes on the first path segment: GET /cluster/x is GET /cluster.
HEALTH_PATHS = ("/", "/primary", "/master", "/leader", "/read-write", "/replica", "/read-only",
                "/health", "/standby-leader", "/standby_leader")


def _json(resp: falcon.Response, code: int, body: Any) -> None:
    resp.status = code
    resp.content_type = falcon.MEDIA_JSON
    # default=str as Patroni does: timestamps and the like become strings.
    resp.text = json.dumps(body, default=str)


class _Context:
    """What every resource reads: the current snapshot and the clock."""

    def __init__(self, read_snapshot: SnapshotReader, identity: Identity, clock: Clock) -> None:
        self._read = read_snapshot
        self._clock = clock
        self._fallback = make_snapshot(identity, None, None, None, now=0.0, now_wall=0.0)

    def snapshot(self) -> dict[str, Any]:
        try:
            snap = self._read()
        except Exception:  # a broken reader must degrade to "unknown", not to 500s
            log.exception("reading the snapshot failed")
            snap = {}
        return snap if snap else self._fallback

    def now(self) -> float:
        return self._clock()


def _query(req: falcon.Request) -> dict[str, list[str]]:
    # parse_qs as Patroni does (blank values dropped), not falcon's own parsing.
    return parse_qs(req.query_string)


class _Resource:
    """HEAD and OPTIONS on any path run the generic health check and answer without a body.

    That is Patroni's behaviour even for /patroni or /cluster (where it says 503).
    """

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx

    def _status_only(self, req: falcon.Request, resp: falcon.Response) -> None:
        snap = self.ctx.snapshot()
        resp.status = health.health_code(req.path, _query(req), snap, self.ctx.now())
        resp.text = None

    def on_head(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        self._status_only(req, resp)

    def on_options(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        self._status_only(req, resp)


class HealthResource(_Resource):
    """/primary, /replica, /health and friends: the status JSON with 200 or 503."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        snap, now = self.ctx.snapshot(), self.ctx.now()
        status = st.build_status(snap, now)
        _json(resp, health.code_for(req.path, _query(req), snap, status, now), status)


class PatroniResource(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        _json(resp, 200, st.build_status(self.ctx.snapshot(), self.ctx.now()))


class ClusterResource(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        _json(resp, 200, st.build_cluster(self.ctx.snapshot()))


class HistoryResource(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        _json(resp, 200, st.build_history(self.ctx.snapshot()))


class ConfigResource(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        config = st.build_config(self.ctx.snapshot())
        if config is None:
            _json(resp, 502, {"error": "no configuration in the DCS"})
        else:
            _json(resp, 200, config)


class _Sink:
    """Every path no resource claims: GET is the generic health check, like Patroni's fallback."""

    def __init__(self, health_resource: HealthResource) -> None:
        self.health = health_resource

    def __call__(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        if req.method == "GET":
            self.health.on_get(req, resp)
        elif req.method in ("HEAD", "OPTIONS"):
            self.health.on_head(req, resp)
        else:
            _unsupported(req, resp)


def _unsupported(req: falcon.Request, resp: falcon.Response) -> None:
    _json(resp, 501, {"error": f"Unsupported method ({req.method!r})"})


def _method_not_allowed(req: falcon.Request, resp: falcon.Response, ex: Exception,
                        params: dict[str, Any]) -> None:
    # Patroni's server has no such handler and answers 501; clients test for it.
    _unsupported(req, resp)


def _internal_error(req: falcon.Request, resp: falcon.Response, ex: Exception,
                    params: dict[str, Any]) -> None:
    log.error("unhandled error serving %s %s", req.method, req.path, exc_info=ex)
    _json(resp, 500, {"error": "internal error"})


def _serialize_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps({"error": ex.description or ex.title})


def create_app(read_snapshot: SnapshotReader, identity: Identity,
               clock: Clock = time.monotonic) -> falcon.App:
    """The WSGI app; read_snapshot returns the latest snapshot dict ({} when there is none yet)."""
    ctx = _Context(read_snapshot, identity, clock)
    app = falcon.App()
    health_resource = HealthResource(ctx)
    routes: dict[str, _Resource] = {p: health_resource for p in HEALTH_PATHS}
    routes.update({"/patroni": PatroniResource(ctx), "/cluster": ClusterResource(ctx),
                   "/history": HistoryResource(ctx), "/config": ConfigResource(ctx)})
    for path, resource in routes.items():
        app.add_route(path, resource)
        if path != "/":
            app.add_route(path + "/{_rest:path}", resource)
    app.add_sink(_Sink(health_resource), prefix="/")
    app.add_error_handler(falcon.HTTPMethodNotAllowed, _method_not_allowed)
    app.add_error_handler(Exception, _internal_error)
    app.set_error_serializer(_serialize_error)
    return app
