"""Building a replica's data directory: the create_replica_methods, tried in order.

`basebackup` is pg_basebackup from the member being cloned (hasup.postgresql.lifecycle); any other
method is a user command given in `postgresql.<method>`, run in a process group of its own
(hasup.postgresql.group_run) with a timeout.  A method that fails leaves an empty data directory
(unless its keep_data says otherwise) for the next one.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hasup.config.methods import BASEBACKUP, ReplicaMethod, methods_to_try
from hasup.postgresql.group_run import GroupRunner

log = logging.getLogger(__name__)


def method_argv(method: ReplicaMethod, scope: str, data_dir: str, connstring: str) -> list[str]:
    """The command line of a custom method, as Patroni builds it: the command, then `--key=value`
    for each key of its section (the flags it was given included), then, unless no_params,
    --scope, --role=replica, --datadir and --connstring (a section key of the same name gives way)."""
    base = {"scope": scope, "role": "replica", "datadir": data_dir, "connstring": connstring}
    args: list[tuple[str, str]]
    if method.no_params:
        args = list(method.arguments)
    else:
        args = [(k, base[k] if k in base else v) for k, v in (*method.given_flags, *method.arguments)]
        given = {k for k, _ in args}
        args += [(k, v) for k, v in base.items() if k not in given]
    return [*shlex.split(method.command), *(f"--{k}={v}" for k, v in args)]


@dataclass(frozen=True)
class Attempt:
    method: str
    ok: bool
    message: str


class ReplicaBuilder:
    """Tries each method until one fills the data directory.  The effects come in as callables so that
    the order, the cleaning and the messages are tested without PostgreSQL."""

    def __init__(self, *, scope: str, data_dir: str, runner: GroupRunner,
                 basebackup: Callable[[], str | None], empty: Callable[[], bool], clean: Callable[[], None],
                 cancelled: Callable[[], bool], env: Callable[[], dict[str, str]]) -> None:
        self.scope = scope
        self.data_dir = data_dir
        self.runner = runner
        self.basebackup = basebackup  # None on success, else why it failed
        self.empty = empty
        self.clean = clean
        self.cancelled = cancelled
        self.env = env

    def build(self, names: Sequence[str], methods: Mapping[str, ReplicaMethod], connstring: str | None,
              source: str) -> list[Attempt]:
        """Run the methods in order until one succeeds; the attempts made (the last one ok on success)."""
        attempts: list[Attempt] = []
        for name in methods_to_try(names, methods, connstring is not None):
            if self.cancelled():
                attempts.append(Attempt(name, False, "cancelled"))
                break
            if name == BASEBACKUP:
                problem = self.basebackup()
                attempts.append(Attempt(name, problem is None, problem or ""))
                if problem is None:
                    log.info("replica created by basebackup from %s", source)
                    break
                continue
            method = methods[name]
            attempts.append(self._custom(method, connstring or ""))
            if attempts[-1].ok:
                log.info("replica created by method %s", name)
                break
        return attempts

    def _custom(self, method: ReplicaMethod, connstring: str) -> Attempt:
        if not self.empty():
            if method.keep_data:
                log.info("%s: keeping the data directory as it is (keep_data)", method.name)
            else:
                self.clean()
        argv = method_argv(method, self.scope, self.data_dir, connstring)
        log.info("creating replica by method %s: %s", method.name, shlex.join(argv[:len(shlex.split(method.command))]))
        outcome = self.runner.run(argv, method.timeout, self.env(), f"replica method {method.name}")
        if outcome.ok:
            return Attempt(method.name, True, "")
        message = outcome.describe(method.name)
        log.error("creating replica by method %s failed: %s", method.name, message)
        if not method.keep_data and not self.empty():
            self.clean()
        return Attempt(method.name, False, message)
