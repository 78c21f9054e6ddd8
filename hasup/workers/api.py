"""The api worker: one process serving the falcon app with gunicorn's worker, without gunicorn's arbiter.

Process layout (docs/design.md §1):
    hasup: api <scope>/<name>   main thread: the request loop (hasup/api/gworker.py) and request threads;
                                a reader thread owns the supervisor pipe

hasup's supervisor already does what gunicorn's arbiter would (start, watch,
restart, stop this process), so gunicorn is used as a library: its
configuration, logger, listeners and worker class run here, in the process the
supervisor forked, and the node has one process fewer.  The reader thread
receives PgState/ClusterView/WatchdogState, renders a snapshot and writes it
into a SnapshotBuffer the request loop reads without any I/O; it answers the
supervisor's heartbeat, and ends the process if the request loop stops turning.  The loop
reads whole requests before a thread sees them, so slow or idle clients cannot
take the threads health checks need.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import selectors
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from gunicorn import sock as gsock
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger

from hasup import ipc
from hasup.api import sched, tls
from hasup.api.access import AccessControl
from hasup.api.admin import Admin, EtcdAdmin, LazyAdmin
from hasup.api.app import ApiSettings, InlineAnswers, answers_inline, create_app
from hasup.api.gworker import HasupWorker
from hasup.api.relay import RelayClient, RelayServer
from hasup.api.snapshot import Identity, SnapshotBuffer, SnapshotCache, encode_snapshot, make_snapshot
from hasup.timing import RERENDER
from hasup.worker import PipeLogHandler, WorkerContext, answer_ping, enable_stack_dumps, setup_worker

log = logging.getLogger(__name__)

# The reader thread wakes for a message, a render or a relayed request's deadline, else this often: it
# bounds how late it notices a request loop that no longer turns.  An orphaned api hears it sooner: the
# supervisor's end of the channel closes, and its death signal wakes the request loop.
POLL = 5.0
GRACEFUL_TIMEOUT = 5  # SIGTERM to the api process must end it promptly
LOOP_TIMEOUT = 30  # the request loop not turning for this long ends the process (gunicorn's worker timeout)
LOOP_SLICE_NS = 300_000  # the request loop's scheduler slice (hasup/api/sched.py); Linux's default is a few ms
THREADS = 8  # request threads in the gunicorn worker
MAX_CONNECTIONS = 1000  # open client connections per worker; past it the longest-waiting idle one is closed
HEALTH_RESERVE = 2  # threads admin endpoints may never take (see ApiSettings.admin_slots)
# Environment gunicorn would act on but that belongs to the supervisor:
# NOTIFY_SOCKET would let it tell systemd "READY" for the whole service.
_FOREIGN_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "GUNICORN_PID",
                "GUNICORN_FD", "GUNICORN_CMD_ARGS")


class ApiWorker(HasupWorker):
    """The request worker, answering the health checks in its loop (hasup/api/app.py INLINE_PATHS)."""

    inline_request = staticmethod(answers_inline)
    stack_fd: int | None = None  # the supervisor's stack file (WorkerContext.stack_fd)

    def run(self) -> None:
        # Latency, not CPU: a woken loop gets a core sooner while pgbench or others keep both busy.
        if not sched.short_slice(LOOP_SLICE_NS):
            log.debug("no short scheduler slice for the request loop (kernel before 6.12?)")
        super().run()

    def init_signals(self) -> None:
        usr2 = signal.getsignal(signal.SIGUSR2)
        super().init_signals()
        # gunicorn's SIGABRT handler would exit quietly; the supervisor's heartbeat escalation
        # wants this process's stacks (hasup/worker.py enable_stack_dumps): re-arm faulthandler.
        faulthandler.disable()
        signal.signal(signal.SIGABRT, signal.SIG_DFL)
        enable_stack_dumps(self.stack_fd)
        # gunicorn's worker leaves these to their default action, which ends the process.  SIGUSR2 is
        # the supervisor's death signal, a wake-up only (hasup/supervisor.py child_hygiene): the loop's
        # parent check ends the process gracefully.  SIGHUP was the arbiter's "reload": nothing to do.
        signal.signal(signal.SIGUSR2, usr2 if callable(usr2) else signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


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


class LoopStuck(Exception):
    pass


class ChannelReader(threading.Thread):
    """The thread that owns the supervisor pipe's receiving side.

    Sending is shared with the logging handler (every thread logs), so every
    send and flush holds that handler's lock: two threads flushing one Channel
    could write a frame twice.
    """

    def __init__(self, ctx: WorkerContext, renderer: SnapshotRenderer, relay: RelayServer,
                 stop: Callable[[], None], send_lock: Any, loop_age: Callable[[], float] = lambda: 0.0) -> None:
        super().__init__(name="hasup-api-reader", daemon=True)
        self.ctx = ctx
        self.loop_age = loop_age  # seconds since the request loop last turned
        self.renderer = renderer
        self.relay = relay
        self.stop_server = stop
        self.send_lock = send_lock

    def catch_up(self) -> None:
        """Take in what already waits on the pipe and publish it, before the request loop starts.

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
        except LoopStuck as exc:
            # Nothing here can unstick the main thread: end the process, the supervisor starts a new one
            # (gunicorn's arbiter would have killed its worker the same way).
            log.error("%s; ending the api process", exc)
            os._exit(70)
        except ipc.PeerClosed:
            log.warning("supervisor pipe closed, stopping the api")
        except Exception:
            log.exception("api reader thread failed, stopping the api")
        self.stop_server()

    def _wait(self) -> float:
        """Seconds until the next render or relay deadline, at most POLL."""
        now = time.monotonic()
        due = self.renderer.rendered_at + RERENDER
        expiry = self.relay.next_expiry()
        if expiry is not None:
            due = min(due, expiry)
        return max(0.0, min(POLL, due - now))

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
                for key, _events in sel.select(self._wait()):
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
                age = self.loop_age()
                if age > LOOP_TIMEOUT:
                    raise LoopStuck(f"the request loop has not turned for {age:.0f} s")
                with self.send_lock:
                    channel.flush()
                if changed or time.monotonic() - self.renderer.rendered_at >= RERENDER:
                    self.renderer.render()
        log.warning("supervisor gone (re-parented), stopping the api")


class _RootLogger(GunicornLogger):
    """gunicorn's logger, minus its own stderr handler: records go to the root logger.

    The root logger is the supervisor pipe (setup_worker).
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in list(self.error_log.handlers):
            if getattr(handler, "_gunicorn", False):
                self.error_log.removeHandler(handler)
        self.error_log.propagate = True


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

    def run(self, ready: Callable[[Any], None] | None = None) -> None:
        """Serve in this process until SIGTERM (or SIGINT, SIGQUIT): gunicorn's worker, without its arbiter.

        ready(worker) runs once the listeners are bound, before the loop starts.
        A listener that cannot be bound ends the process as gunicorn does (exit 1).
        """
        cfg = self.cfg
        logger = cfg.logger_class(cfg)
        listeners = gsock.create_sockets(cfg, logger)
        logger.info("gunicorn listening at %s", ", ".join(str(listener) for listener in listeners))
        worker = cfg.worker_class(0, os.getppid(), listeners, self, cfg.timeout, cfg, logger)
        try:
            if ready is not None:
                ready(worker)
            worker.init_process()  # gunicorn's boot (signals, the app), then the loop until stopped
        finally:
            for listener in listeners:
                listener.close()
            worker.tmp.close()


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


def gunicorn_options(ctx: WorkerContext) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bind": [ctx.config.restapi.listen],
        "worker_class": ApiWorker,
        "threads": THREADS,
        "worker_connections": MAX_CONNECTIONS,
        # gunicorn's own limits on what its parser accepts, spelled out: the request line bounds
        # every path and query string the app sees (a 414 past it).
        "limit_request_line": 4094,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": _gunicorn_level(ctx.config.log.level),
        "logger_class": _RootLogger,
        "proc_name": ctx.title,
        "reuse_port": False,
    }
    if os.path.isdir("/dev/shm"):
        # gunicorn's worker makes a heartbeat file (unused here, see HasupWorker.notify): keep it off a disk
        # that may stall.
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
    """An Admin built on first use."""
    def retry_timeout() -> float:
        return float(snapshots().get("retry_timeout") or 10)

    def factory() -> Admin:
        return EtcdAdmin(ctx.config, ctx.supervisor_pid, retry_timeout, RelayClient(relay_address))

    return LazyAdmin(factory)


def run(ctx: WorkerContext) -> None:
    """The api worker's body; returns when the server has stopped."""
    setup_worker(ctx)
    for name in _FOREIGN_ENV:
        os.environ.pop(name, None)

    buffer = SnapshotBuffer()
    renderer = SnapshotRenderer(Identity.from_config(ctx.config), buffer)
    renderer.render()  # a valid (all unknown) snapshot from the first request on
    snapshots = SnapshotCache(buffer)
    relay = RelayServer()  # request threads reach the supervisor pipe through the reader thread
    admin = make_admin(ctx, snapshots, relay.address)
    settings = api_settings(ctx)
    app = create_app(snapshots, renderer.identity, admin=admin, settings=settings)
    me = os.getpid()

    def stop_server() -> None:
        # The worker's SIGTERM path: close the listeners, finish requests within graceful_timeout, return.
        os.kill(me, signal.SIGTERM)

    def ready(worker: ApiWorker) -> None:
        worker.fast_answer = InlineAnswers(snapshots, renderer.identity, settings=settings)
        worker.stack_fd = ctx.stack_fd
        ctx.channel.send_now(ipc.ApiListening())  # the listeners are bound: systemd may hear READY=1
        reader = ChannelReader(ctx, renderer, relay, stop_server, _send_lock(logging.getLogger()), worker.loop_age)
        reader.catch_up()
        reader.start()

    ApiServer(app, gunicorn_options(ctx)).run(ready)
