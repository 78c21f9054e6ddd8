"""What every worker shares: its context, logging through the supervisor, heartbeats, stack dumps."""

from __future__ import annotations

import faulthandler
import logging
import os
import selectors
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from setproctitle import setproctitle

from hasup import ipc
from hasup.config import Config, ConfigError, build_config
from hasup.supervision.logwriter import apply_levels, tracebacks_visible


@dataclass
class WorkerContext:
    role: str  # election, postgres, watchdog, api
    config: Config
    channel: ipc.Channel  # to the supervisor
    lease_sock: socket.socket | None = None  # election and watchdog only
    supervisor_pid: int = 0
    # Where faulthandler writes this worker's stack on SIGABRT (the supervisor's heartbeat escalation) or a
    # fatal signal; the supervisor logs it when the worker is gone (hasup.supervision.system.StackFile).
    stack_fd: int | None = None
    log_handler: PipeLogHandler | None = None  # set by setup_worker; its count of lost records rides on Pong
    waiter: Waiter = field(default_factory=lambda: Waiter())

    @property
    def title(self) -> str:
        return f"hasup: {self.role} {self.config.scope}/{self.config.name}"

    def orphaned(self) -> bool:
        """The supervisor is gone (we were re-parented)."""
        return os.getppid() != self.supervisor_pid


class PipeLogHandler(logging.Handler):
    """Sends records to the supervisor's log writer; never blocks, drops when the pipe is full."""

    def __init__(self, channel: ipc.Channel, role: str, tracebacks: bool = True) -> None:
        super().__init__()
        self.channel = channel
        self.role = role
        self.tracebacks = tracebacks  # log.traceback_level against log.level
        self.lost = 0  # records dropped here: the pipe's queue was full, or the record could not be sent

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and self.tracebacks:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            if not self.channel.send_now(ipc.LogRecord(record.levelno, record.name, text, record.created,
                                                       self.role)):
                self.lost += 1
        except Exception:  # logging must never take a worker down
            self.lost += 1


def configure_logging(cfg: Config) -> None:
    """Levels, per-logger levels and traceback visibility in this worker (at start and on reload)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PipeLogHandler):
            handler.tracebacks = tracebacks_visible(cfg.log)
    apply_levels(cfg.log)


def enable_stack_dumps(fd: int | None) -> None:
    """Have a fatal signal (SIGABRT above all) write every thread's Python stack to fd before the
    worker dies; without fd, to stderr.  faulthandler writes from the signal handler itself, so the
    stack comes out even when the main thread is stuck in a C call or holds the logging lock."""
    faulthandler.enable(file=fd if fd is not None else 2, all_threads=True)


def setup_worker(ctx: WorkerContext) -> None:
    setproctitle(ctx.title)
    enable_stack_dumps(ctx.stack_fd)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    ctx.log_handler = PipeLogHandler(ctx.channel, ctx.role, tracebacks_visible(ctx.config.log))
    root.addHandler(ctx.log_handler)
    # Client libraries log every retry; hasup logs one line per failed operation instead.
    for noisy in ("urllib3", "etcd"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    apply_levels(ctx.config.log)  # after the defaults above: log.loggers may want them back
    logging.getLogger("hasup.worker").debug("%s worker up (pid %d)", ctx.role, os.getpid())


# Changing these needs a restart: they name the node or where its data and sockets live.
RESTART_ONLY = ("name", "scope", "namespace")


def apply_reload(ctx: WorkerContext, msg: ipc.ConfigChanged) -> bool:
    """Adopt a re-read configuration; False (and the old one kept) when it cannot be used live."""
    try:
        cfg, _warnings = build_config(msg.raw)
    except ConfigError as exc:  # the supervisor validated it already; be safe anyway
        logging.getLogger(__name__).error("reload ignored: %s", "; ".join(exc.problems))
        return False
    old = ctx.config
    changed = [k for k in RESTART_ONLY if getattr(cfg, k) != getattr(old, k)]
    if cfg.postgresql.data_dir != old.postgresql.data_dir or cfg.postgresql.listen != old.postgresql.listen:
        changed.append("postgresql.data_dir/listen")
    if changed:
        logging.getLogger(__name__).warning("reload ignored: %s can only change with a restart", ", ".join(changed))
        return False
    ctx.config = cfg
    if cfg.log != old.log:
        configure_logging(cfg)
    return True


def answer_ping(ctx: WorkerContext, env: ipc.Envelope) -> bool:
    """Answer a heartbeat; True if env was one."""
    if isinstance(env.message, ipc.Ping):
        lost = ctx.log_handler.lost if ctx.log_handler is not None else 0
        ctx.channel.send_now(ipc.Pong(env.message.n, min(lost, ipc.MAX_COUNT)))
        return True
    return False


class Waiter:
    """The selector pump() waits on, kept from one call to the next: an idle worker wakes a few times a
    second, and a fresh epoll set each time cost four system calls a wake.  Made again after a fork, since
    the epoll set itself would be shared with the parent."""

    def __init__(self) -> None:
        self.pid = -1
        self.sel: selectors.BaseSelector | None = None
        self.extra: set[socket.socket | int] = set()

    def ready(self, channel: ipc.Channel, extra: Iterable[socket.socket | int]) -> selectors.BaseSelector:
        if self.sel is None or self.pid != os.getpid():
            if self.sel is not None:
                self.sel.close()  # closes our copy of the parent's epoll descriptor and unregisters nothing
            self.sel, self.pid, self.extra = selectors.DefaultSelector(), os.getpid(), set()
            self.sel.register(channel, selectors.EVENT_READ)
        sel = self.sel
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if channel.wants_write() else 0)
        if sel.get_key(channel).events != events:
            sel.modify(channel, events)
        wanted = set(extra)
        for fd in self.extra - wanted:
            sel.unregister(fd)
        for fd in wanted - self.extra:
            sel.register(fd, selectors.EVENT_READ)
        self.extra = wanted
        return sel

    def close(self) -> None:
        if self.sel is not None:
            self.sel.close()
        self.sel, self.extra = None, set()


def pump(ctx: WorkerContext, timeout: float, extra: Iterable[socket.socket | int] = (),
         on_ready: Callable[[object], None] | None = None) -> list[ipc.Envelope]:
    """Wait up to timeout for supervisor messages (and extra fds); flush our outbox.

    Returns the envelopes received; heartbeats are answered here.  Raises
    ipc.PeerClosed when the supervisor is gone.  Called from the worker's main thread only.
    """
    try:
        sel = ctx.waiter.ready(ctx.channel, extra)
    except (KeyError, ValueError, OSError):  # a closed or reused descriptor: start from a fresh set
        ctx.waiter.close()
        sel = ctx.waiter.ready(ctx.channel, extra)
    received: list[ipc.Envelope] = []
    for key, mask in sel.select(max(0.0, timeout)):
        if key.fileobj is ctx.channel:
            if mask & selectors.EVENT_WRITE:
                ctx.channel.flush()
            if mask & selectors.EVENT_READ:
                for env in ctx.channel.receive():
                    if not answer_ping(ctx, env):
                        received.append(env)
        elif on_ready is not None:
            on_ready(key.fileobj)
    if ctx.channel.wants_write():
        ctx.channel.flush()
    return received
