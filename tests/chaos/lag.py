"""The chaos runs' replication-lag sampler: what bounds the loss the checker may call a replication window.

One thread per node, inside that node's network namespace (a client on the
same host, so a partition between hosts does not blind it), asks the node's
PostgreSQL every LAG_INTERVAL for the smallest `flush_lag` among its
streaming standbys: on the primary, how long ago the best-placed replica had
flushed the WAL it just confirmed; on a replica, nothing (no rows, no
sample).  Each answer is a LagSample of tests/chaos/history.py on the
monotonic clock.  As the workload's writers do, it uses an asynchronous
connection with client-side deadlines, so a frozen server costs a timeout,
never a hung thread; a failed sample is simply missing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions

from hasup.postgresql.probe import ProbeFailed, wait_async
from tests.chaos.history import LagSample
from tests.chaos.workload import close_quietly, connect_async, start_in_node, stop_all
from tests.harness import Node

LAG_INTERVAL = 0.25  # seconds between samples on each node
DEADLINE = 1.0  # seconds for connecting, and for each query
QUERY = ("SELECT min(extract(epoch FROM flush_lag))::float8 FROM pg_catalog.pg_stat_replication"
         " WHERE state = 'streaming' AND flush_lag IS NOT NULL")


@dataclass
class NodeSampler:
    node: Node
    samples: list[LagSample]
    stop: threading.Event
    conn: Any = None

    def _connect(self) -> Any:
        return connect_async(self.node, "hasup-chaos-lag", DEADLINE)

    def _drop(self) -> None:
        close_quietly(self.conn)
        self.conn = None

    def sample(self) -> None:
        try:
            if self.conn is None:
                self.conn = self._connect()
            with self.conn.cursor() as cur:
                cur.execute(QUERY)
                wait_async(self.conn, time.monotonic() + DEADLINE)
                row = cur.fetchone()
        except (psycopg2.Error, ProbeFailed, OSError):
            self._drop()
            return
        if row and row[0] is not None:
            self.samples.append(LagSample(self.node.name, time.monotonic(), float(row[0])))

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.sample()
                self.stop.wait(LAG_INTERVAL)
        finally:
            self._drop()


@dataclass
class LagSampler:
    nodes: list[Node]
    samples: list[LagSample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for node in self.nodes:
            sampler = NodeSampler(node, self.samples, self.stop)
            self.threads.append(start_in_node(node, sampler.run, f"chaos-lag-{node.name}"))

    def finish(self, timeout: float = 10) -> None:
        stop_all(self.stop, self.threads, timeout)
