"""Runs `postgresql.pre_promote` and `postgresql.before_stop`, the scripts a promote or a stop waits for.

Unlike the callbacks (hasup/postgresql/callbacks.py), which nobody waits for, a hook's outcome
matters to the action that runs it: a pre_promote that fails vetoes the promotion, and a
before_stop runs to its end before PostgreSQL is told to stop.  So the action's thread runs the
hook and waits, but never longer than its timeout (`postgresql.callback_timeout`), and never
after the action is cancelled (a shutdown): either kills the hook's whole process group.  As in
Patroni, the command line is split shell-style and run without arguments.

Each hook runs in a session of its own (its group is killable whole, and a signal meant for
hasup's group never reaches it), with the callbacks' environment (no secrets), and its output
(stdout and stderr) is read through a pipe of which only the last OUTPUT_KEPT bytes are kept, for
the log: a chatty script costs no memory and cannot fill a disk.
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hasup.postgresql.callbacks import callback_env

log = logging.getLogger(__name__)

OUTPUT_KEPT = 4096  # bytes of a hook's output kept for the log (the last ones: where errors are)
POLL = 0.1  # seconds between looks at a cancel request while the hook is silent
REAP_FOR = 2.0  # how long a killed hook is waited for before it is left to the kernel


@dataclass(frozen=True)
class HookResult:
    ok: bool
    code: int | None  # exit status; negative: killed by that signal; None: never ran or killed by us
    reason: str  # one line for the log and a reply: "exited with status 1", "killed after 60 s", ...
    output: str = ""  # the tail of what it printed


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, close_fds=True, start_new_session=True)


def run_hook(name: str, command: str, timeout: float, cancel: threading.Event | None = None,
             environ: Mapping[str, str] = os.environ, clock: Callable[[], float] = time.monotonic,
             spawn: Callable[[list[str], dict[str, str]], subprocess.Popen[bytes]] = _spawn) -> HookResult:
    """Run `command` and wait for it, at most `timeout` seconds and no longer than `cancel` stays clear."""
    started = clock()
    try:
        proc = spawn(shlex.split(command), callback_env(environ))
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        result = HookResult(False, None, f"could not be started: {exc}")
        log.error("%s script could not be started: %s", name, exc)
        return result
    log.info("%s script started (pid %d)", name, proc.pid)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    tail = b""
    why_killed = ""
    open_pipe = True
    while True:
        code = proc.poll()
        if code is not None:
            break
        now = clock()
        if now - started >= timeout:
            why_killed = f"still running after {timeout:g} s"
        elif cancel is not None and cancel.is_set():
            why_killed = "cancelled"
        if why_killed:
            _kill_group(proc)
            break
        wait = min(POLL, timeout - (now - started))
        if not open_pipe:
            time.sleep(wait)  # a grandchild kept the output open past its parent's pipe end: poll the exit
            continue
        ready, _, _ = select.select([fd], [], [], wait)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_pipe = False
            tail = (tail + chunk)[-OUTPUT_KEPT:]
    # What the hook printed last; a background child of it keeping the pipe open must not hold us here.
    while open_pipe and select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        tail = (tail + chunk)[-OUTPUT_KEPT:]
    proc.stdout.close()
    output = tail.decode(errors="replace").strip()
    took = clock() - started
    if why_killed:
        result = HookResult(False, None, f"{why_killed}: killed its process group")
        log.warning("%s script (pid %d) %s", name, proc.pid, result.reason)
    elif proc.returncode == 0:
        result = HookResult(True, 0, "exited with status 0", output)
        log.info("%s script (pid %d) finished after %.1f s", name, proc.pid, took)
    elif proc.returncode > 0:
        result = HookResult(False, proc.returncode, f"exited with status {proc.returncode}", output)
        log.warning("%s script (pid %d) %s after %.1f s", name, proc.pid, result.reason, took)
    else:
        result = HookResult(False, proc.returncode, f"was killed by signal {-proc.returncode}", output)
        log.warning("%s script (pid %d) %s after %.1f s", name, proc.pid, result.reason, took)
    if output and not result.ok:
        log.warning("%s script output (last %d bytes): %s", name, OUTPUT_KEPT, " | ".join(output.splitlines()))
    return HookResult(result.ok, result.code, result.reason, output)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The group id is the leader's pid (start_new_session), ours until we reap it, which we have not.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(REAP_FOR)
    except subprocess.TimeoutExpired:
        log.warning("hook script (pid %d) killed but not gone after %g s (stuck in the kernel?)", proc.pid, REAP_FOR)
