"""Runs the `postgresql.callbacks` commands without ever waiting for them.

Each callback is `<command, split shell-style> <action> <role> <scope>`, started in a session of
its own so that its whole process group can be killed. Like Patroni, at most one callback runs at
a time, and a new one kills the one still running; `on_reload` has a lane of its own. Unlike
Patroni, each run is also bounded by `postgresql.callback_timeout` (hasup.timing): a hung script
is killed with its group instead of lingering until the next event.

Everything happens on the postgres worker's loop: `fire` starts a process and returns, `poll`
reaps finished ones with a non-blocking waitpid and kills overdue ones, `next_deadline` tells the
loop when to turn next. Neither the loop nor an action thread ever waits for a callback.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from hasup import ipc
from hasup.config import Config
from hasup.postgresql.callback_events import Announcer, Before, Event

log = logging.getLogger(__name__)

MAIN, RELOAD = "main", "reload"
# A killed callback is reaped this soon after SIGKILL, for up to REAP_FOR; one stuck in the kernel
# (state D) after that is reaped at the loop's own pace instead of spinning it.
REAP_INTERVAL = 0.05
REAP_FOR = 2.0
# Variables that may carry secrets (configuration overrides, passwords) never reach a callback.
SECRET_ENV_PREFIXES = ("HASUP_", "PATRONI_")
SECRET_ENV = frozenset({"PGPASSWORD", "NOTIFY_SOCKET"})


class Process(Protocol):
    pid: int

    def poll(self) -> int | None: ...


def spawn(argv: list[str], env: dict[str, str]) -> Process:
    # start_new_session: the callback leads its own process group, which a kill takes whole,
    # and a signal meant for hasup's group never reaches it. close_fds keeps our pipes ours.
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, close_fds=True, start_new_session=True)


def callback_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith(SECRET_ENV_PREFIXES) and k not in SECRET_ENV}


@dataclass
class Run:
    action: str
    role: str
    proc: Process
    started: float
    deadline: float
    killed_at: float = 0.0


class CallbackRunner:
    def __init__(self, spawn: Callable[[list[str], dict[str, str]], Process] = spawn,
                 killpg: Callable[[int, int], None] = os.killpg, clock: Callable[[], float] = time.monotonic,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.spawn = spawn
        self.killpg = killpg
        self.clock = clock
        self.environ = environ
        self.lanes: dict[str, Run] = {}
        self.dying: list[Run] = []  # killed, not yet reaped

    def fire(self, command: str, action: str, role: str, scope: str, timeout: float) -> int | None:
        """Start `command action role scope`; the pid, or None when it could not start."""
        now = self.clock()
        lane = RELOAD if action == "on_reload" else MAIN
        previous = self.lanes.pop(lane, None)
        if previous is not None:
            code = previous.proc.poll()
            if code is None:
                self._kill(previous, f"to run {action}")
            else:
                self._finished(previous, code, now)
        argv = [*shlex.split(command), action, role, scope]
        try:
            proc = self.spawn(argv, callback_env(self.environ))
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("callback %s %s could not be started: %s", action, role, exc)
            return None
        log.info("callback %s %s started (pid %d)", action, role, proc.pid)
        self.lanes[lane] = Run(action, role, proc, now, now + timeout)
        return proc.pid

    def poll(self) -> None:
        now = self.clock()
        for lane, run in list(self.lanes.items()):
            code = run.proc.poll()
            if code is not None:
                del self.lanes[lane]
                self._finished(run, code, now)
            elif now >= run.deadline:
                del self.lanes[lane]
                self._kill(run, f"after {run.deadline - run.started:g} s")
        for run in list(self.dying):
            if run.proc.poll() is not None:
                self.dying.remove(run)

    def next_deadline(self) -> float:
        """When poll() has work next (monotonic); infinity when nothing runs."""
        due = min((run.deadline for run in self.lanes.values()), default=float("inf"))
        now = self.clock()
        if any(now - run.killed_at < REAP_FOR for run in self.dying):
            due = min(due, now + REAP_INTERVAL)
        return due

    def busy(self) -> bool:
        return bool(self.lanes or self.dying)

    def kill_all(self) -> None:
        for lane in list(self.lanes):
            self._kill(self.lanes.pop(lane), "on exit")

    def _kill(self, run: Run, why: str) -> None:
        # The group id is the leader's pid (start_new_session), valid until we reap the leader,
        # which we have not: poll() saw it running. Processes that left the group escape.
        try:
            self.killpg(run.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.warning("callback %s %s (pid %d) still running %s: killed its process group",
                    run.action, run.role, run.proc.pid, why)
        run.killed_at = self.clock()
        self.dying.append(run)

    def _finished(self, run: Run, code: int, now: float) -> None:
        took = now - run.started
        if code == 0:
            log.info("callback %s %s (pid %d) finished after %.1f s", run.action, run.role, run.proc.pid, took)
        elif code > 0:
            log.warning("callback %s %s (pid %d) exited with status %d after %.1f s",
                        run.action, run.role, run.proc.pid, code, took)
        else:
            log.warning("callback %s %s (pid %d) was killed by signal %d after %.1f s",
                        run.action, run.role, run.proc.pid, -code, took)


class Callbacks:
    """The postgres worker's side: what happened in, configured commands started."""

    def __init__(self, config: Callable[[], Config], runner: CallbackRunner | None = None) -> None:
        self.config = config  # read at each event: a reload may change the commands
        self.announcer = Announcer()
        self.runner = runner or CallbackRunner()

    def began(self, req: ipc.Request, state: ipc.PgState | None) -> None:
        """An action starts; `state` is what the worker reported just before."""
        answering = state is not None and state.probe_ok
        self.announcer.began(Before(
            kind=type(req).__name__,
            answering_role=state.role if state is not None and answering else None,
            postmaster_running=state is not None and state.postmaster_pid is not None,
            reported_role=state.role if state is not None else None,
            following=state.upstream if state is not None else None,
            as_primary=req.as_primary if isinstance(req, ipc.Start) else None,
        ))

    def finished(self, reply: ipc.Reply, following: str | None, postmaster_running: bool) -> None:
        self.fire(self.announcer.finished(reply.request, reply.ok, reply.result or {}, following,
                                          postmaster_running))

    def observed(self, state: ipc.PgState) -> None:
        self.fire(self.announcer.observed(state.busy, state.probe_ok, state.postmaster_pid is not None,
                                          state.role))

    def reloaded(self, state: ipc.PgState | None) -> None:
        """PostgreSQL was sent SIGHUP (new parameters, SIGHUP to hasup, POST /reload)."""
        if state is not None and state.postmaster_pid is not None:
            self.fire(self.announcer.reloaded(state.role if state.role in ("primary", "replica") else ""))

    def fire(self, events: list[Event]) -> None:
        cfg = self.config()
        for event in events:
            command = cfg.postgresql.callbacks.get(event.action)
            if command:
                self.runner.fire(command, event.action, event.role, cfg.scope, cfg.postgresql.callback_timeout)

    def poll(self) -> None:
        self.runner.poll()

    def next_deadline(self) -> float:
        return self.runner.next_deadline()
