"""A write prober: inserts a sequence every 20 ms into whichever node accepts writes.

Each acknowledged value is recorded with its time and node; an error or a
timeout is never counted as acknowledged.  Used by tests and benchmarks.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psycopg2

from tests.harness import SUPERUSER_PASSWORD, Node

INTERVAL = 0.02


@dataclass
class Prober:
    nodes: list[Node]
    acked: list[tuple[int, float, str]] = field(default_factory=list)
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    seq: int = 0
    first: int = 1

    def _connect(self, node: Node):  # type: ignore[no-untyped-def]
        conn = psycopg2.connect(host="127.0.0.1", port=node.pg_port, user="postgres", password=SUPERUSER_PASSWORD,
                                dbname="postgres", connect_timeout=1, options="-c statement_timeout=1000",
                                keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=2)
        conn.autocommit = True
        return conn

    def run(self) -> None:
        conn, current = None, None
        candidates = list(self.nodes)
        next_at = time.monotonic()
        while not self.stop.is_set():
            next_at += INTERVAL
            self.seq += 1
            value = self.seq
            done = False
            for node in ([current] if current else []) + [n for n in candidates if n is not current]:
                try:
                    if conn is None or node is not current:
                        if conn is not None:
                            conn.close()
                        conn, current = None, None
                        conn, current = self._connect(node), node
                    with conn.cursor() as cur:
                        cur.execute("INSERT INTO bench_writes VALUES (%s)", (value,))
                    self.acked.append((value, time.monotonic(), node.name))
                    done = True
                    break
                except psycopg2.Error:
                    self.errors += 1
                    if conn is not None:
                        try:
                            conn.close()
                        except psycopg2.Error:
                            pass
                    conn, current = None, None
            if not done:
                time.sleep(0.005)
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()
        if conn is not None:
            conn.close()


def longest_gap(acked: list[tuple[int, float, str]], start: float, end: float) -> float:
    times = [t for _, t, _ in acked if start <= t <= end]
    if len(times) < 2:
        return end - start
    return max(b - a for a, b in zip(times, times[1:], strict=False))


def writer_runs(acked: list[tuple[int, float, str]]) -> list[str]:
    """The nodes that acknowledged writes, in order, one entry per uninterrupted run.

    A node appearing twice accepted writes again after another node had:
    two nodes were writable at once (or a demoted primary came back).
    """
    runs: list[str] = []
    for _, _, name in acked:
        if not runs or runs[-1] != name:
            runs.append(name)
    return runs


def lost_writes(prober: Prober, node: Node) -> list[int]:
    """Acknowledged values that `node` (the healed cluster's leader) does not have."""
    present = {r[0] for r in node.sql("SELECT v FROM bench_writes WHERE v >= %s", prober.first)}
    return [v for v, _, _ in prober.acked if v not in present]


def start_prober(nodes: list[Node], first: int) -> tuple[Prober, threading.Thread]:
    prober = Prober(nodes, seq=first - 1, first=first)
    thread = threading.Thread(target=prober.run, daemon=True, name="prober")
    thread.start()
    return prober, thread
