"""The chaos workload: one writer per node, each inserting unique values every ~10 ms into its node only.

Every attempt becomes an Op of tests/chaos/history.py.  Timeouts are client
side and cannot be outlived by a frozen server: the connection is
asynchronous and every wait is a select() with a deadline (a SIGSTOPped
PostgreSQL still has its kernel accept and ACK, so server-side timeouts,
TCP keepalives and tcp_user_timeout would never fire).

Classifying outcomes, conservatively:
- connecting failed: FAILED (the INSERT was never sent);
- the server answered ERROR and the session lives on: FAILED (the
  single-statement transaction was rolled back, e.g. read-only);
- acknowledged, but with PostgreSQL's warning that the wait for synchronous
  replication was cancelled: INDETERMINATE (committed locally only);
- a deadline passed, the connection broke or the server sent FATAL:
  INDETERMINATE (a FATAL during the synchronous wait follows a local commit);
- otherwise OK.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions

from hasup.postgresql.probe import ProbeFailed, wait_async
from tests.chaos.history import Op, Outcome
from tests.harness import SUPERUSER_PASSWORD, Node
from tests.harness.netns import in_netns

TABLE = "chaos_writes"
INTERVAL = 0.01  # the workload's own pacing
CONNECT_DEADLINE = 1.0
STATEMENT_DEADLINE = 1.5  # client side; the server's statement_timeout is 1 s
SYNC_WAIT_CANCELLED = "canceling wait for synchronous replication"


def connect_async(node: Node, application_name: str, deadline: float, options: str | None = None) -> Any:
    """An asynchronous connection to the node's PostgreSQL, made within `deadline` seconds or not at all:
    a frozen server costs a timeout, never a hung thread."""
    extra = {"options": options} if options else {}
    conn = psycopg2.connect(host=node.host, port=node.pg_port, user="postgres", password=SUPERUSER_PASSWORD,
                            dbname="postgres", application_name=application_name, async_=1, **extra)
    try:
        wait_async(conn, time.monotonic() + deadline)
    except BaseException:
        conn.close()
        raise
    return conn


def close_quietly(conn: Any) -> None:
    if conn is not None:
        try:
            conn.close()
        except psycopg2.Error:
            pass


def start_in_node(node: Node, target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread running target inside the node's network namespace (a client on the same host)."""
    ns = node.netns

    def body() -> None:
        if ns:
            in_netns(ns, target)
        else:
            target()
    thread = threading.Thread(target=body, daemon=True, name=name)
    thread.start()
    return thread


def stop_all(stop: threading.Event, threads: list[threading.Thread], timeout: float) -> None:
    stop.set()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), f"{thread.name} did not stop"


@dataclass
class Writer:
    """Writes through one node, from inside that node's network namespace (a client on the same host)."""

    node: Node
    values: itertools.count[int]
    lock: threading.Lock
    ops: list[Op]
    stop: threading.Event
    conn: Any = None

    def _connect(self) -> Any:
        return connect_async(self.node, "hasup-chaos", CONNECT_DEADLINE, "-c statement_timeout=1000")

    def _drop(self) -> None:
        close_quietly(self.conn)
        self.conn = None

    def attempt(self) -> None:
        with self.lock:
            value = next(self.values)
        start = time.monotonic()
        if self.conn is None:
            try:
                self.conn = self._connect()
            except (psycopg2.Error, ProbeFailed, OSError):
                self.ops.append(Op(value, self.node.name, start, time.monotonic(), Outcome.FAILED))
                return
        outcome = self._insert(value)
        self.ops.append(Op(value, self.node.name, start, time.monotonic(), outcome))

    def _insert(self, value: int) -> Outcome:
        conn = self.conn
        del conn.notices[:]
        try:
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {TABLE} VALUES (%s)", (value,))
                wait_async(conn, time.monotonic() + STATEMENT_DEADLINE)
        except psycopg2.Error as exc:
            if exc.pgcode and not conn.closed:
                return Outcome.FAILED
            self._drop()
            return Outcome.INDETERMINATE
        except (ProbeFailed, OSError):  # a deadline passed, or the connection broke
            self._drop()
            return Outcome.INDETERMINATE
        if any(SYNC_WAIT_CANCELLED in n for n in conn.notices):
            return Outcome.INDETERMINATE
        return Outcome.OK

    def run(self) -> None:
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                self.attempt()
                next_at += INTERVAL
                delay = next_at - time.monotonic()
                if delay > 0:
                    self.stop.wait(delay)
                else:
                    next_at = time.monotonic()
        finally:
            self._drop()


@dataclass
class Workload:
    nodes: list[Node]
    first: int = 1
    ops: list[Op] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        values, lock = itertools.count(self.first), threading.Lock()
        for node in self.nodes:
            writer = Writer(node, values, lock, self.ops, self.stop)
            self.threads.append(start_in_node(node, writer.run, f"chaos-writer-{node.name}"))

    def finish(self, timeout: float = 10) -> None:
        stop_all(self.stop, self.threads, timeout)

    def acked(self) -> list[Op]:
        return [op for op in list(self.ops) if op.outcome is Outcome.OK]

    def acked_by(self, name: str, after: float) -> bool:
        return any(op.node == name and op.start > after for op in self.acked())


def create_table(leader: Node) -> None:
    leader.sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (v bigint PRIMARY KEY)")


def final_values(leader: Node) -> frozenset[int]:
    return frozenset(r[0] for r in leader.sql(f"SELECT v FROM {TABLE}"))
