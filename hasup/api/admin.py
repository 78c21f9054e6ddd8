"""What the admin endpoints need outside the snapshot: etcd, the peers, the supervisor, election.

`Admin` is the interface the falcon resources call; `EtcdAdmin` implements it
with an etcd store of its own (made in each gunicorn worker process, after
the fork: python-etcd's connection pool must not be shared across a fork)
and a relay to election through the api master; tests pass fakes.  Every
call may block (etcd for up to retry_timeout, a restart for as long as
PostgreSQL takes), so the app runs them under its admin semaphore, never
on the health-check path.
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from hasup import peers
from hasup.api import limits
from hasup.api.relay import RelayClient
from hasup.config import Config
from hasup.config.dynamic import check_dcs
from hasup.config.schema import Reader
from hasup.dcs import parse
from hasup.dcs.backends import open_store
from hasup.dcs.model import Cluster, Member
from hasup.dcs.store import DCSError, Store, compact
from hasup.peers import PeerStatus

__all__ = ["Admin", "DCSError", "EtcdAdmin", "LazyAdmin", "config_problems", "patch_config", "stored_problems"]


class Admin(Protocol):
    def get_cluster(self) -> Cluster: ...  # raises DCSError

    def set_config(self, config: dict[str, Any], index: int | None) -> bool: ...  # False: CAS failed

    def set_failover(self, value: dict[str, Any], index: int | None) -> bool: ...

    def clear_failover(self, index: int | None) -> bool: ...

    def fetch_status(self, member: Member) -> PeerStatus | None: ...

    def reload(self) -> None: ...

    def operate(self, action: str, params: dict[str, Any]) -> tuple[int, str]: ...

    def sleep(self, seconds: float) -> None: ...

    def clock(self) -> float: ...


class EtcdAdmin:
    """The real one: etcd through a store (v2 or v3), peers over HTTP, SIGHUP to the supervisor."""

    def __init__(self, config: Config, supervisor_pid: int, retry_timeout: Callable[[], float],
                 relay: RelayClient | None = None) -> None:
        self.config = config
        self.supervisor_pid = supervisor_pid
        self._retry_timeout = retry_timeout
        self._relay = relay
        # One store per request thread: a store keeps its client and endpoint
        # rotation as plain attributes, and one slow read must not queue the others.
        self._local = threading.local()

    def _store(self) -> Store:
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = open_store(self.config.etcd, self.config.namespace, self.config.scope)
            self._local.store = store
        store.retry_timeout = self._retry_timeout()
        return store

    def get_cluster(self) -> Cluster:
        return self._store().get_cluster()

    def set_config(self, config: dict[str, Any], index: int | None) -> bool:
        return self._store().set_config(config, index)

    def set_failover(self, value: dict[str, Any], index: int | None) -> bool:
        return self._store().set_failover(value, index)

    def clear_failover(self, index: int | None) -> bool:
        return self._store().clear_failover(index)

    def fetch_status(self, member: Member) -> PeerStatus | None:
        return peers.fetch_status(member, context=peers.client_context(self.config.restapi))

    def reload(self) -> None:
        if self.supervisor_pid > 0:
            os.kill(self.supervisor_pid, signal.SIGHUP)

    def operate(self, action: str, params: dict[str, Any]) -> tuple[int, str]:
        """Ask election to carry out an operator's request; (HTTP status, message)."""
        if self._relay is None:
            return 503, "the admin interface is not available"
        return self._relay.call(action, params, self.operation_timeout(action, params))

    def operation_timeout(self, action: str, params: dict[str, Any]) -> float:
        """How long the caller waits: an immediate restart answers only once PostgreSQL is back."""
        if action == "restart" and not params.get("schedule"):
            pg_ctl = float(self.config.postgresql.pg_ctl_timeout)
            # A fast stop (pg_ctl_timeout, then immediate and kill: ~15 s more), then the start.
            hook = self.config.postgresql.stop_hook_time  # before_stop runs first
            return pg_ctl + 15.0 + float(params.get("timeout") or pg_ctl) + 10.0 + hook
        return self._retry_timeout() + 10.0

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def clock(self) -> float:
        return time.monotonic()


class LazyAdmin:
    """Builds its Admin on first use in the calling process, so each gunicorn worker gets its own."""

    def __init__(self, factory: Callable[[], Admin]) -> None:
        self._factory = factory
        self._made: tuple[int, Admin] | None = None
        self._lock = threading.Lock()

    def get(self) -> Admin:
        with self._lock:
            if self._made is None or self._made[0] != os.getpid():
                self._made = (os.getpid(), self._factory())
            return self._made[1]

    def reset(self) -> None:
        with self._lock:
            self._made = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


# -- /config -----------------------------------------------------------------------------


def patch_config(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Patroni's PATCH merge: null deletes, mappings merge recursively, anything else replaces."""
    result = copy.deepcopy(dict(current))
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = patch_config(result[key], value)
        elif isinstance(value, Mapping):
            result[key] = patch_config({}, value)  # nulls inside a new mapping delete nothing
        else:
            result[key] = copy.deepcopy(value)
    return result


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """Lines naming each key of a dynamic configuration that hasup cannot use as given.

    The same strict checks as bootstrap.dcs (types, minimums, settings hasup
    refuses); keys hasup does not read are not problems, and timing values
    that break loop_wait + 2*retry_timeout <= ttl are kept (nodes adjust them).
    """
    reader = Reader()
    check_dcs(reader, config, "config")
    return list(reader.problems)


def stored_problems(current: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Lines naming why new must not replace current as the configuration in etcd; [] when it may.

    In order: what every node must be able to carry (its size as stored and
    its nesting, hasup/api/limits.py), the configuration file's rules
    (config_problems), and last the etcd reader's own check
    (hasup/dcs/parse.py), so that nothing is written that every node would
    then refuse to read.  A problem the stored value already has is not held
    against a change that does not make it worse.
    """
    problems = []
    text = compact(new)  # as the store writes it
    if len(text) > limits.MAX_CONFIG_CHARS and len(text) > len(compact(current)):
        problems.append(f"config: {len(text)} characters as stored, more than the {limits.MAX_CONFIG_CHARS} "
                        "every node carries")
    depth = limits.depth_of(new)
    if depth > limits.MAX_DEPTH and depth > limits.depth_of(current):
        problems.append(f"config: nested deeper than {limits.MAX_DEPTH} levels")
    if problems:
        return problems  # the rules below walk the value: only one a node can carry
    known = set(config_problems(current))
    problems = [p for p in config_problems(new) if p not in known]
    if not problems:
        read = parse.parse_config(text)
        if isinstance(read, parse.Bad):
            problems.append(f"config: {read.reason} (no node would read it)")
    return problems
