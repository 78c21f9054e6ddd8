"""The api worker: a gunicorn master (plus one request worker) serving the falcon app.

Process layout (docs/design.md §1):
    hasup: api <scope>/<name>          gunicorn master; a reader thread owns the supervisor pipe
      hasup: api worker <scope>/<name> request threads; read the shared snapshot, nothing else

The master's reader thread receives PgState/ClusterView/WatchdogState, renders
a snapshot and writes it into a SnapshotBuffer mapped before gunicorn forks,
so the worker's request threads read it without any I/O.  Only the master
ever writes on the supervisor pipe.  The request worker is hasup's own
(hasup/api/gworker.py): its loop reads whole requests before a thread sees
them, so slow or idle clients cannot take the threads health checks need.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import gunicorn.util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger as GunicornLogger
from setproctitle import setproctitle

from hasup import ipc
from hasup.api import tls
from hasup.api.access import AccessControl
from hasup.api.admin import Admin, EtcdAdmin, LazyAdmin
from hasup.api.app import ApiSettings, answers_inline, create_app
from hasup.api.gworker import HasupWorker
from hasup.api.relay import RelayClient, RelayServer
from hasup.api.snapshot import Identity, SnapshotBuffer, SnapshotCache, encode_snapshot, make_snapshot
from hasup.timing import RERENDER
from hasup.worker import PipeLogHandler, WorkerContext, answer_ping, setup_worker

log = logging.getLogger(__name__)

POLL = 0.5  # reader thread wake-up: bounds how late it notices an orphaned master
GRACEFUL_TIMEOUT = 5  # SIGTERM to the api process must end it promptly
THREADS = 8  # request threads in the gunicorn worker
MAX_CONNECTIONS = 1000  # open client connections per worker; past it the longest-waiting idle one is closed
HEALTH_RESERVE = 2  # threads admin endpoints may never take (see ApiSettings.admin_slots)
# Environment a gunicorn master would act on but that belongs to the supervisor:
# NOTIFY_SOCKET would let it tell systemd "READY" for the whole service.
_FOREIGN_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "GUNICORN_PID",
                "GUNICORN_FD", "GUNICORN_CMD_ARGS")


class ApiWorker(HasupWorker):
    """The request worker, answering the health checks in its loop (hasup/api/app.py INLINE_PATHS)."""

    inline_request = staticmethod(answers_inline)


def worker_title(ctx: WorkerContext) -> str:
    return f"hasup: api worker {ctx.config.scope}/{ctx.config.name}"


class SnapshotRenderer:
    """Keeps the latest of each snapshot message and publishes them as one snapshot."""

    def __init__(self, identity: Identity, buffer: SnapshotBuffer) -> None:
        self.identity = identity
        self.buffer = buffer
        self.pg: ipc.PgState | None = None
        self.cluster: ipc.ClusterView | None = None
        self.watchdog: ipc.WatchdogState | None = None
        self.log_loss: ipc.LogLoss | None = None  # the supervisor's count of lost log records, for /metrics
        self.rendered_at = 0.0
        # When each kind last arrived ("start": when we began), for /liveness and staleness bounds.
        self.received: dict[str, float] = {"start": time.monotonic()}

    def absorb(self, message: ipc.Message) -> bool:
        """Keep message if it is one we serve from; True if it was."""
        if isinstance(message, ipc.PgState):
            self.pg, kind = message, "pg"
        elif isinstance(message, ipc.ClusterView):
            self.cluster, kind = message, "cluster"
        elif isinstance(message, ipc.WatchdogState):
            self.watchdog, kind = message, "watchdog"
        elif isinstance(message, ipc.LogLoss):
            self.log_loss = message
            return True  # a count, not a fact with an age: nothing for the staleness bounds
        else:
            return False
        self.received[kind] = time.monotonic()
        return True

    def render(self) -> None:
        snap = make_snapshot(self.identity, self.pg, self.cluster, self.watchdog, received=self.received)
        snap["supervisor"] = {"log_records_lost": self.log_loss.lost if self.log_loss is not None else 0}
        try:
            self.buffer.write(encode_snapshot(snap, self.buffer.capacity))
        except ValueError as exc:  # too big even trimmed: keep serving the previous one
            log.error("snapshot not published: %s", exc)
        self.rendered_at = time.monotonic()


class ChannelReader(threading.Thread):
    """The master's thread that owns the supervisor pipe's receiving side.

    Sending is shared with the logging handler (gunicorn logs from the
    master's main thread), so every send and flush holds that handler's lock:
    two threads flushing one Channel could write a frame twice.
    """

    def __init__(self, ctx: WorkerContext, renderer: SnapshotRenderer, relay: RelayServer,
                 stop: Callable[[], None], send_lock: Any) -> None:
        super().__init__(name="hasup-api-reader", daemon=True)
        self.ctx = ctx
        self.renderer = renderer
        self.relay = relay
        self.stop_server = stop
        self.send_lock = send_lock

    def catch_up(self) -> None:
        """Take in what already waits on the pipe and publish it, before gunicorn forks the request worker.

        A restarted api finds the supervisor's replay of the latest snapshots there (hasup.supervision.routing):
        served from its first request, /primary answers from them instead of 503 until election's next cycle.
        Runs before this thread starts, so it is still the only reader."""
        try:
            envelopes = self.ctx.channel.receive()
        except ipc.PeerClosed:
            return  # run() finds out again and stops the server
        changed = False
        for env in envelopes:
            with self.send_lock:
                if answer_ping(self.ctx, env):
                    continue
            changed |= self.renderer.absorb(env.message)
        if changed:
            self.renderer.render()

    def run(self) -> None:
        try:
            self._loop()
        except ipc.PeerClosed:
            log.warning("supervisor pipe closed, stopping the api")
        except Exception:
            log.exception("api reader thread failed, stopping the api")
        self.stop_server()

    def _loop(self) -> None:
        channel = self.ctx.channel
        with selectors.DefaultSelector() as sel:
            sel.register(channel, selectors.EVENT_READ)
            self.relay.attach(sel)
            while not self.ctx.orphaned():
                with self.send_lock:
                    wants_write = channel.wants_write()
                sel.modify(channel, selectors.EVENT_READ | (selectors.EVENT_WRITE if wants_write else 0))
                changed = False
                for key, _events in sel.select(POLL):
                    if key.data is self.relay:
                        for request in self.relay.handle(key.fileobj):
                            with self.send_lock:
                                channel.send(request)
                        continue
                    # Only this thread receives, so receive() needs no lock.
                    for env in channel.receive():
                        with self.send_lock:
                            if answer_ping(self.ctx, env):
                                continue
                        if isinstance(env.message, ipc.AdminReply):
                            self.relay.answer(env.message)
                        else:
                            changed |= self.renderer.absorb(env.message)
                self.relay.expire(time.monotonic())
                with self.send_lock:
                    channel.flush()
                if changed or time.monotonic() - self.renderer.rendered_at >= RERENDER:
                    self.renderer.render()
        log.warning("supervisor gone (re-parented), stopping the api")


class _RootLogger(GunicornLogger):
    """gunicorn's logger, minus its own stderr handler: records go to the root logger.

    In the master the root logger is the supervisor pipe (setup_worker); in a
    request worker it is stderr (see _detach_child).
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in list(self.error_log.handlers):
            if getattr(handler, "_gunicorn", False):
                self.error_log.removeHandler(handler)
        self.error_log.propagate = True


class _Arbiter(Arbiter):
    def handle_usr2(self) -> None:
        # USR2 would re-exec sys.argv: a second hasup supervisor, not a new gunicorn.
        self.log.warning("SIGUSR2 ignored: the api cannot re-exec itself")


class ApiServer(BaseApplication):
    """gunicorn configured in code (no config file, no command line, no environment)."""

    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.application

    def run(self) -> None:
        _Arbiter(self).run()


def _install_titles(master: str, worker: str) -> None:
    """Make gunicorn's own title changes land on ours.

    gunicorn calls gunicorn.util._setproctitle("master [...]") in the master
    (start, reload) and ("worker [...]") in each freshly forked worker, by
    module attribute lookup, so replacing the attribute covers every call.
    """
    def set_title(title: str) -> None:
        setproctitle(worker if title.startswith("worker") else master)

    gunicorn.util._setproctitle = set_title


def _detach_child(ctx: WorkerContext, title: str) -> None:
    """First thing in any process the api master forks (gunicorn's request workers).

    Runs inside os.fork(), before gunicorn's first log line in the child:
    that line would otherwise go down the master's pipe, and a second writer
    (or a half-sent frame copied from the master's outbox) corrupts the stream.
    """
    ctx.channel.close()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.WARNING)
    stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(name)s: %(message)s"))
    root.addHandler(stderr)
    root.setLevel(logging.WARNING)
    setproctitle(title)


def _send_lock(root: logging.Logger) -> Any:
    for handler in root.handlers:
        if isinstance(handler, PipeLogHandler):
            return handler.lock  # emit() runs under it
    return threading.RLock()


def _gunicorn_level(level: str) -> str:
    # gunicorn's records propagate to the root logger, whose pipe handler has
    # no level of its own: filter them at the source, as configured.
    name = level.strip().lower()
    name = "warning" if name == "warn" else name
    return name if name in ("debug", "info", "warning", "error", "critical") else "info"


def gunicorn_options(ctx: WorkerContext, on_ready: Callable[[Any], None],
                     post_fork: Callable[[Any, Any], None]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bind": [ctx.config.restapi.listen],
        "workers": 1,
        "worker_class": ApiWorker,  # a class, not a dotted name: imported before any fork
        "threads": THREADS,
        "worker_connections": MAX_CONNECTIONS,
        # gunicorn's own limits on what its parser accepts, spelled out: the request line bounds
        # every path and query string the app sees (a 414 past it).
        "limit_request_line": 4094,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "timeout": 30,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": _gunicorn_level(ctx.config.log.level),
        "logger_class": _RootLogger,
        "proc_name": ctx.title,
        "control_socket_disable": True,  # no extra unix socket and thread in the master
        "preload_app": False,
        "reuse_port": False,
        "when_ready": on_ready,
        "post_fork": post_fork,
    }
    if os.path.isdir("/dev/shm"):
        # gunicorn's worker heartbeat file: keep it off a disk that may stall.
        options["worker_tmp_dir"] = "/dev/shm"
    options.update(tls.gunicorn_options(ctx.config.restapi))
    return options


def api_settings(ctx: WorkerContext) -> ApiSettings:
    restapi = ctx.config.restapi
    access = AccessControl(restapi.username, restapi.password, restapi.allowlist,
                           restapi.allowlist_include_members)
    return ApiSettings(access=access, http_extra_headers=dict(restapi.http_extra_headers),
                       https_extra_headers=dict(restapi.https_extra_headers), tls=bool(restapi.certfile),
                       admin_slots=THREADS - HEALTH_RESERVE)


def make_admin(ctx: WorkerContext, snapshots: SnapshotCache, relay_address: str) -> LazyAdmin:
    """An Admin built in each gunicorn worker process on first use (never shared across a fork)."""
    def retry_timeout() -> float:
        return float(snapshots().get("retry_timeout") or 10)

    def factory() -> Admin:
        return EtcdAdmin(ctx.config, ctx.supervisor_pid, retry_timeout, RelayClient(relay_address))

    return LazyAdmin(factory)


def run(ctx: WorkerContext) -> None:
    """The api worker's body; returns when gunicorn has stopped."""
    setup_worker(ctx)
    for name in _FOREIGN_ENV:
        os.environ.pop(name, None)
    master_pid = os.getpid()
    master_title, child_title = ctx.title, worker_title(ctx)
    _install_titles(master_title, child_title)

    # Mapped before gunicorn forks, so the request worker shares it.
    buffer = SnapshotBuffer()
    renderer = SnapshotRenderer(Identity.from_config(ctx.config), buffer)
    renderer.render()  # a valid (all unknown) snapshot from the first request on
    snapshots = SnapshotCache(buffer)
    relay = RelayServer()  # bound before gunicorn forks, so its workers know the address
    admin = make_admin(ctx, snapshots, relay.address)
    app = create_app(snapshots, renderer.identity, admin=admin, settings=api_settings(ctx))

    def stop_server() -> None:
        # gunicorn's SIGTERM path: close listeners, stop workers within graceful_timeout, exit.
        os.kill(master_pid, signal.SIGTERM)

    started: list[bool] = []

    def on_ready(arbiter: Any) -> None:
        if started:  # gunicorn calls when_ready once per master; be sure of it
            return
        started.append(True)
        os.register_at_fork(after_in_child=lambda: _detach_child(ctx, child_title))
        ctx.channel.send_now(ipc.ApiListening())  # the listeners are bound: systemd may hear READY=1
        reader = ChannelReader(ctx, renderer, relay, stop_server, _send_lock(logging.getLogger()))
        reader.catch_up()
        reader.start()

    def post_fork(arbiter: Any, worker: Any) -> None:
        # The at-fork hook has already detached this process from the pipe; a
        # worker forked some other way must still never write on it.
        if not ctx.channel.closed:
            _detach_child(ctx, child_title)
        relay.sock.close()  # the master's listener; a worker only connects to it
        admin.reset()  # this process makes its own etcd client on first use

    server = ApiServer(app, gunicorn_options(ctx, on_ready, post_fork))
    code: Any = 1
    try:
        server.run()
        code = 0
    except SystemExit as exc:  # gunicorn ends both its master and its workers with sys.exit
        code = exc.code
    finally:
        if os.getpid() != master_pid:
            # A gunicorn worker unwinding: never return into the supervisor's
            # frames that forked the api process.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else (0 if code is None else 1))
    if code not in (0, None):
        raise SystemExit(code)
