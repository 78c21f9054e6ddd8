"""The falcon app: Patroni's REST endpoints.

create_app takes its dependencies (a snapshot reader, the node's identity, a
monotonic clock, the access settings and an Admin for etcd and the
supervisor), so tests build it with fakes and call it through falcon.testing.
Health checks, /patroni, /metrics, /liveness and /readiness answer from the
snapshot alone.  Admin endpoints (/config, /cluster, /history, /switchover,
/failover, /restart, /reinitialize) may block on etcd or wait for election:
they run under a semaphore with fewer slots than the server has threads, so
health checks always find a thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import falcon

from hasup import ipc, restarts
from hasup.api import health, limits, metrics, switchover
from hasup.api import status as st
from hasup.api.access import AccessControl
from hasup.api.admin import Admin, DCSError, patch_config, stored_problems
from hasup.api.snapshot import Identity, make_snapshot
from hasup.dcs.model import Cluster

log = logging.getLogger(__name__)

SnapshotReader = Callable[[], dict[str, Any]]
Clock = Callable[[], float]

# Patroni routes on the first path segment: GET /cluster/x is GET /cluster.
HEALTH_PATHS = ("/", "/primary", "/master", "/leader", "/read-write", "/replica", "/read-only",
                "/health", "/standby-leader", "/standby_leader")
# Unsafe methods that pass the access check (docs/rest-api.md, "Access control"), by first path segment:
# Patroni's list.
AUTH_CHECKED = {
    ("PATCH", "config"), ("PUT", "config"), ("POST", "reload"), ("POST", "restart"), ("DELETE", "restart"),
    ("POST", "switchover"), ("POST", "failover"), ("DELETE", "switchover"), ("POST", "reinitialize"),
    ("POST", "failsafe"), ("POST", "sigterm"), ("POST", "citus"),
}
# Paths whose GET, HEAD and OPTIONS answer from the snapshot alone, spelled exactly (no
# percent-encoding, no sub-path): the gunicorn worker answers them in its loop, without a thread
# (hasup/api/gworker.py, inline_request).  Anything else, however it decodes, goes to a thread.
INLINE_PATHS = frozenset(p.encode() for p in (
    *HEALTH_PATHS, "/patroni", "/liveness", "/readiness", "/metrics", "/sync", "/synchronous", "/async",
    "/asynchronous", "/quorum", "/read-only-sync", "/read-only-synchronous", "/read-only-quorum"))
INLINE_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS"))
DEFAULT_ADMIN_SLOTS = 6  # gunicorn runs 8 threads: 2 always stay free for health checks


@dataclass(frozen=True)
class ApiSettings:
    """How the app guards and decorates its answers (from restapi.*)."""

    access: AccessControl = field(default_factory=AccessControl)
    http_extra_headers: dict[str, str] = field(default_factory=dict)
    https_extra_headers: dict[str, str] = field(default_factory=dict)
    tls: bool = False
    admin_slots: int = DEFAULT_ADMIN_SLOTS


def answers_inline(method: bytes, path: bytes) -> bool:
    """The request never waits for etcd, election or a lock: it may be answered without a thread."""
    return method in INLINE_METHODS and path in INLINE_PATHS


def _json(resp: falcon.Response, code: int, body: Any) -> None:
    resp.status = code
    resp.content_type = falcon.MEDIA_JSON
    # default=str as Patroni does: timestamps and the like become strings.
    resp.text = json.dumps(body, default=str)


def wal_position(snap: Mapping[str, Any]) -> int | None:
    """This node's last known WAL position (on a replica the further of received and replayed)."""
    pg = snap.get("pg")
    value = pg.get("wal_position") if isinstance(pg, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64 else None


def _text(resp: falcon.Response, code: int, message: str) -> None:
    """Patroni answers admin requests with a plain message; clients match on its text."""
    resp.status = code
    resp.content_type = falcon.MEDIA_TEXT
    resp.text = message


class _Context:
    """What every resource reads: the current snapshot, the clock, the admin interface."""

    def __init__(self, read_snapshot: SnapshotReader, identity: Identity, clock: Clock,
                 admin: Admin | None, settings: ApiSettings) -> None:
        self._read = read_snapshot
        self._clock = clock
        self._fallback = make_snapshot(identity, None, None, None, now=0.0, now_wall=0.0)
        self.admin = admin
        self.settings = settings
        self._slots = threading.BoundedSemaphore(max(1, settings.admin_slots))

    @contextmanager
    def admin_slot(self) -> Iterator[bool]:
        """True inside when an admin slot was free; never waits for one."""
        got = self._slots.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                self._slots.release()

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
    """GET, HEAD and OPTIONS on any path run the generic health check (HEAD and OPTIONS without a body).

    That is Patroni's behaviour even for /patroni or /cluster (where HEAD says 503);
    resources with a GET of their own override on_get.
    """

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx

    def _health_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        """The generic health check with the status JSON: Patroni's GET on any path without its own handler."""
        snap, now = self.ctx.snapshot(), self.ctx.now()
        status = st.build_status(snap, now)
        _json(resp, health.code_for(req.path, _query(req), snap, status, now), status)

    def _status_only(self, req: falcon.Request, resp: falcon.Response) -> None:
        snap = self.ctx.snapshot()
        resp.status = health.health_code(req.path, _query(req), snap, self.ctx.now())
        resp.text = None

    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        # GET on a path without a handler of its own (/reload, /switchover, ...) is the generic check.
        self._health_get(req, resp)

    def on_head(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        self._status_only(req, resp)

    def on_options(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        self._status_only(req, resp)


class HealthResource(_Resource):
    """/primary, /replica, /health and friends: the status JSON with 200 or 503 (the base's GET)."""


class PatroniResource(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        _json(resp, 200, st.build_status(self.ctx.snapshot(), self.ctx.now()))


class LivenessResource(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        resp.status = health.liveness_code(self.ctx.snapshot(), self.ctx.now())
        resp.text = None


class ReadinessResource(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        resp.status = health.readiness_code(_query(req), self.ctx.snapshot(), self.ctx.now())
        resp.text = None


class MetricsResource(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        resp.status = 200
        resp.content_type = metrics.CONTENT_TYPE
        resp.text = metrics.render(self.ctx.snapshot(), self.ctx.now())


def _view_of(cluster: Cluster) -> dict[str, Any]:
    """A fresh etcd read in the shape of a ClusterView, for the status builders."""
    return {"leader": cluster.leader.name if cluster.leader else None,
            "members": {n: m.data for n, m in cluster.members.items()}, "config": cluster.config or {},
            "history": cluster.history, "optime": cluster.optime, "sync": cluster.sync, "failsafe": cluster.failsafe,
            "failover": cluster.failover, "paused": cluster.paused}


def _read_body(req: falcon.Request, resp: falcon.Response) -> dict[str, Any] | None:
    """The JSON object body, or None with 411/413/400 already answered.

    Without Content-Length (a chunked body) the answer is Patroni's 411 and
    nothing is read; with one, at most limits.MAX_BODY bytes are.
    """
    if req.content_length is None:
        _json(resp, 411, {"error": "Content-Length required"})
        return None
    if req.content_length > limits.MAX_BODY:
        _too_large(resp)
        return None
    raw = req.bounded_stream.read(req.content_length) if req.content_length else b""
    try:
        body = limits.parse_json(raw) if raw else None
    except limits.BadJson as exc:
        _json(resp, 400, {"error": str(exc)})
        return None
    if not isinstance(body, dict):
        _json(resp, 400, {"error": "the body must be a JSON object"})
        return None
    return body


def _too_large(resp: falcon.Response) -> None:
    _json(resp, 413, {"error": f"the request body is larger than {limits.MAX_BODY} bytes"})


class _AdminResource(_Resource):
    """Endpoints that may block on etcd: run only when an admin slot is free."""

    def _run(self, resp: falcon.Response, handler: Callable[[Admin | None], None]) -> None:
        with self.ctx.admin_slot() as got:
            if not got:
                _json(resp, 503, {"error": "too many admin requests in progress"})
                return
            handler(self.ctx.admin)

    def _fresh(self, admin: Admin | None) -> dict[str, Any]:
        """A snapshot whose cluster view is a fresh etcd read, or the snapshot's own when etcd fails."""
        snap = self.ctx.snapshot()
        if admin is None:
            return snap
        try:
            cluster = admin.get_cluster()
        except DCSError as exc:
            log.warning("etcd read for the api failed, answering from the snapshot: %s", exc)
            return snap
        return {**snap, "cluster": _view_of(cluster)}

    def _need_admin(self, admin: Admin | None, resp: falcon.Response) -> Admin | None:
        if admin is None:
            _json(resp, 503, {"error": "the admin interface is not available"})
        return admin


class ClusterResource(_AdminResource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        self._run(resp, lambda admin: _json(resp, 200, st.build_cluster(self._fresh(admin))))


class HistoryResource(_AdminResource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        self._run(resp, lambda admin: _json(resp, 200, st.build_history(self._fresh(admin))))


def _config_body(req: falcon.Request, resp: falcon.Response) -> dict[str, Any] | None:
    """The request's non-empty JSON object, or None with the error response already set."""
    body = _read_body(req, resp)
    if body is not None and not body:
        _json(resp, 400, {"error": "the body must be a non-empty JSON object"})
        return None
    return body


class ConfigResource(_AdminResource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        def handle(admin: Admin | None) -> None:
            config = st.build_config(self._fresh(admin))
            if config is None:
                _json(resp, 502, {"error": "no configuration in the DCS"})
            else:
                _json(resp, 200, config)
        self._run(resp, handle)

    def on_patch(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        body = _config_body(req, resp)
        if body is None:
            return

        def handle(admin: Admin | None) -> None:
            if self._need_admin(admin, resp) is None or admin is None:
                return
            try:
                cluster = admin.get_cluster()
            except DCSError:
                _json(resp, 503, {"error": "failed to read the configuration from DCS"})
                return
            if not cluster.config:
                _json(resp, 503, {"error": "no configuration in the DCS"})
                return
            merged = patch_config(cluster.config, body)
            if self._refused(resp, cluster.config, merged):
                return
            try:
                written = admin.set_config(merged, cluster.config_index or None)
            except DCSError:
                _json(resp, 503, {"error": "failed to write the configuration into DCS"})
                return
            if not written:
                _json(resp, 409, {"error": "the configuration changed meanwhile; try again"})
                return
            log.info("dynamic configuration patched through the api")
            _json(resp, 200, ipc.redact(merged))
        self._run(resp, handle)

    def on_put(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        body = _config_body(req, resp)
        if body is None:
            return

        def handle(admin: Admin | None) -> None:
            if self._need_admin(admin, resp) is None or admin is None:
                return
            try:
                current = admin.get_cluster().config or {}
            except DCSError:
                current = {}
            if self._refused(resp, current, body):
                return
            if body != current:
                try:
                    admin.set_config(body, None)
                except DCSError:
                    _json(resp, 502, {"error": "failed to write the configuration into DCS"})
                    return
                log.info("dynamic configuration replaced through the api")
            _json(resp, 200, ipc.redact(body))
        self._run(resp, handle)

    @staticmethod
    def _refused(resp: falcon.Response, current: dict[str, Any], new: dict[str, Any]) -> bool:
        """Answer 422 when new brings problems current did not have (etcd is then left alone)."""
        problems = stored_problems(current, new)
        if problems:
            _json(resp, 422, {"error": "invalid configuration: " + "; ".join(problems), "problems": problems})
        return bool(problems)


class ReloadResource(_Resource):
    def on_post(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        admin = self.ctx.admin
        if admin is None:
            _json(resp, 503, {"error": "the admin interface is not available"})
            return
        admin.reload()
        _text(resp, 202, "reload scheduled")


class SwitchoverResource(_AdminResource):
    action = "switchover"

    def on_post(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        body = _read_body(req, resp)
        if body is None:
            return

        def handle(admin: Admin | None) -> None:
            if self._need_admin(admin, resp) is None or admin is None:
                return
            code, message = switchover.request(admin, self.action, body, switchover.utcnow())
            if code >= 500 or code == 412:
                log.warning("%s refused: %s", self.action, message)
            _text(resp, code, message)
        self._run(resp, handle)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        if self.action != "switchover":
            _unsupported(req, resp)
            return

        def handle(admin: Admin | None) -> None:
            if self._need_admin(admin, resp) is None or admin is None:
                return
            _text(resp, *switchover.delete_scheduled(admin))
        self._run(resp, handle)


class FailoverResource(SwitchoverResource):
    action = "failover"


def _optional_body(req: falcon.Request, resp: falcon.Response) -> dict[str, Any] | None:
    """Like _read_body, but no body at all means {} (POST /restart and /reinitialize take defaults).

    A chunked body is a body: taking it for none would turn a scheduled restart into an immediate one.
    """
    if not req.content_length and not req.get_header("Transfer-Encoding"):
        return {}
    return _read_body(req, resp)


class _OperatorResource(_AdminResource):
    """Requests election carries out; the answer is election's, relayed by the api master."""

    def _operate(self, resp: falcon.Response, action: str, params: dict[str, Any]) -> None:
        def handle(admin: Admin | None) -> None:
            if self._need_admin(admin, resp) is None or admin is None:
                return
            code, message = admin.operate(action, params)
            if code >= 500:
                log.warning("%s: %s", action, message)
            _text(resp, code, message)
        self._run(resp, handle)


class RestartResource(_OperatorResource):
    def on_post(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        body = _optional_body(req, resp)
        if body is None:
            return
        params, error = restarts.parse_restart(body, switchover.utcnow(), st.is_paused(self.ctx.snapshot()))
        if error is not None:
            _text(resp, *error)
            return
        self._operate(resp, "restart", params)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        self._operate(resp, "cancel_restart", {})


class ReinitializeResource(_OperatorResource):
    def on_post(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        body = _optional_body(req, resp)
        if body is None:
            return
        self._operate(resp, "reinitialize", restarts.parse_reinitialize(body))


class FailsafeResource(_OperatorResource):
    """GET: the failsafe key; POST: a leader cut off from etcd asks whether it may keep leading."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        def handle(admin: Admin | None) -> None:
            view = st.cluster_view(self._fresh(admin)) or {}
            failsafe = view.get("failsafe")
            if isinstance(failsafe, dict):
                _json(resp, 200, failsafe)
            else:
                _json(resp, 502, {"error": "no failsafe key in the DCS"})
        self._run(resp, handle)

    def on_post(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        body = _read_body(req, resp)
        if body is None:
            return
        # Whether failsafe_mode is on is election's to say: it keeps the last configuration it read.
        if not isinstance(body.get("name"), str) or not body["name"]:
            _json(resp, 400, {"error": "the body must name the leader"})
            return
        self._operate(resp, "failsafe", {"name": body["name"]})
        if resp.status_code == 200:
            # Where this member's WAL stands, as Patroni's leader reads it from the answer's lsn header.
            lsn = wal_position(self.ctx.snapshot())
            if lsn is not None:
                resp.set_header("lsn", str(lsn))


class _BodyLimit:
    """413 for any request announcing a body over limits.MAX_BODY, before anything reads it.

    Runs first, so no resource, access check or parser ever sees such a
    body; the gunicorn worker (hasup/api/gworker.py) never buffers one either.
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        length = req.content_length
        if length is not None and length > limits.MAX_BODY:
            _too_large(resp)
            resp.complete = True


class _Guard:
    """Access control on the unsafe endpoints, and the extra headers on every answer."""

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        settings = ctx.settings
        self.headers = dict(settings.http_extra_headers)
        if settings.tls:
            self.headers.update(settings.https_extra_headers)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        segment = req.path.strip("/").split("/", 1)[0]
        if (req.method, segment) not in AUTH_CHECKED:
            return
        view = st.cluster_view(self.ctx.snapshot()) or {}
        members = view.get("members") if isinstance(view.get("members"), dict) else {}
        denied = self.ctx.settings.access.check(req.method, req.remote_addr, req.get_header("Authorization"),
                                                members or {})
        if denied is not None:
            _text(resp, denied.code, denied.message)
            for name, value in denied.headers:
                resp.set_header(name, value)
            resp.complete = True

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        for name, value in self.headers.items():
            resp.set_header(name, value)


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


class InlineAnswers:
    """The answers to GET, HEAD and OPTIONS on INLINE_PATHS, made without falcon.

    The gunicorn worker calls it from its loop for plain requests
    (hasup/api/gworker.py, fast_answer): the same functions the resources
    above call, on the same snapshot, with the same extra headers, for a
    fraction of the cost of building a falcon request and response.
    tests/unit/test_api_app.py holds every answer equal to the app's.
    """

    def __init__(self, read_snapshot: SnapshotReader, identity: Identity, clock: Clock = time.monotonic,
                 settings: ApiSettings | None = None) -> None:
        self.ctx = _Context(read_snapshot, identity, clock, None, settings or ApiSettings())
        self.extra = [(name.lower(), value) for name, value in _Guard(self.ctx).headers.items()]  # as falcon sends them

    def __call__(self, method: bytes, path: bytes, query: bytes) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """(status, headers, body) for method on path with the raw query string; None for other requests."""
        if not answers_inline(method, path):
            return None
        try:
            code, content_type, text = self._answer(method.decode(), path.decode(), query.decode("latin-1"))
        except Exception:  # the app's error handling (a logged 500) is falcon's: let it answer
            log.exception("answering %r %r in the loop failed", method, path)
            return None
        body = text.encode() if text is not None else b""
        return code, [("content-type", content_type), ("content-length", str(len(body))), *self.extra], body

    def _answer(self, method: str, path: str, query_string: str) -> tuple[int, str, str | None]:
        ctx = self.ctx
        query = parse_qs(query_string)
        snap, now = ctx.snapshot(), ctx.now()
        if method != "GET":
            return health.health_code(path, query, snap, now), falcon.MEDIA_JSON, None
        if path == "/liveness":
            return health.liveness_code(snap, now), falcon.MEDIA_JSON, None
        if path == "/readiness":
            return health.readiness_code(query, snap, now), falcon.MEDIA_JSON, None
        if path == "/metrics":
            return 200, metrics.CONTENT_TYPE, metrics.render(snap, now)
        status = st.build_status(snap, now)
        code = 200 if path == "/patroni" else health.code_for(path, query, snap, status, now)
        return code, falcon.MEDIA_JSON, json.dumps(status, default=str)


def create_app(read_snapshot: SnapshotReader, identity: Identity,
               clock: Clock = time.monotonic, *, admin: Admin | None = None,
               settings: ApiSettings | None = None) -> falcon.App:
    """The WSGI app; read_snapshot returns the latest snapshot dict ({} when there is none yet).

    Without admin, /cluster, /history and /config answer from the snapshot and
    the writing endpoints answer 503.
    """
    ctx = _Context(read_snapshot, identity, clock, admin, settings or ApiSettings())
    middleware: list[Any] = [_BodyLimit(), _Guard(ctx)]
    app = falcon.App(middleware=middleware)
    health_resource = HealthResource(ctx)
    routes: dict[str, _Resource] = {p: health_resource for p in HEALTH_PATHS}
    routes.update({"/patroni": PatroniResource(ctx), "/cluster": ClusterResource(ctx),
                   "/history": HistoryResource(ctx), "/config": ConfigResource(ctx),
                   "/liveness": LivenessResource(ctx), "/readiness": ReadinessResource(ctx),
                   "/metrics": MetricsResource(ctx), "/reload": ReloadResource(ctx),
                   "/switchover": SwitchoverResource(ctx), "/failover": FailoverResource(ctx),
                   "/restart": RestartResource(ctx), "/reinitialize": ReinitializeResource(ctx),
                   "/failsafe": FailsafeResource(ctx)})
    for path, resource in routes.items():
        app.add_route(path, resource)
        if path != "/":
            app.add_route(path + "/{_rest:path}", resource)
    app.add_sink(_Sink(health_resource), prefix="/")
    app.add_error_handler(falcon.HTTPMethodNotAllowed, _method_not_allowed)
    app.add_error_handler(Exception, _internal_error)
    app.set_error_serializer(_serialize_error)
    return app
