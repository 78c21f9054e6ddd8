"""Health probes on a connection of their own, bounded by a client-side deadline.

psycopg2's asynchronous mode lets us poll the socket ourselves, so a frozen
server (SIGSTOP, hung I/O) costs at most the deadline, never a hang.  The
query is read-only and takes no transaction id, so strict synchronous
replication cannot block it.
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions

from hasup.dcs import parse

# What a probe reads every second: cheap reads of shared memory, no catalog scan, no file read.  Some
# columns (CHANGE_FIELDS) tell when the costly facts below may have changed: a promotion, a new
# synchronous_standby_names, a walreceiver that (re)connects or moves to a new timeline, a walsender
# that comes, goes or changes state.
QUICK_COLUMNS = """
SELECT pg_catalog.pg_is_in_recovery(),
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
            ELSE pg_catalog.pg_current_wal_flush_lsn() - '0/0' END,
       pg_catalog.pg_last_wal_receive_lsn() - '0/0',
       pg_catalog.pg_last_wal_replay_lsn() - '0/0',
       pg_catalog.to_char(pg_catalog.pg_last_xact_replay_timestamp(), 'YYYY-MM-DD HH24:MI:SS.USOF'),
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_is_wal_replay_paused() END,
       pg_catalog.current_setting('synchronous_standby_names'),
       (SELECT received_tli FROM pg_catalog.pg_stat_get_wal_receiver()),
       (SELECT status FROM pg_catalog.pg_stat_get_wal_receiver()),
       (SELECT pg_catalog.string_agg(pid::text || ' ' || state || ' ' || sync_state || ' ' || sync_priority, ','
                                     ORDER BY pid)
          FROM pg_catalog.pg_stat_get_wal_senders())"""
QUICK_FIELDS = 10
CHANGE_FIELDS = (0, 6, 7, 8, 9)  # in recovery, synchronous_standby_names, the walreceiver, the walsenders
# The rest: a catalog scan (pg_settings), two reads of pg_control, a join over every backend.  Read on
# the first probe of a connection, whenever a column of CHANGE_FIELDS changes, when refresh() asks, and
# at least every `full_every` seconds (the postgres worker: hasup.timing.FULL_PROBE_INTERVAL).
FULL_COLUMNS = QUICK_COLUMNS + """,
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
            ELSE ('x' || pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))
                 ::bit(32)::int END,
       pg_catalog.to_char(pg_catalog.pg_postmaster_start_time(), 'YYYY-MM-DD HH24:MI:SS.USOF'),
       pg_catalog.current_setting('server_version_num')::int,
       (SELECT system_identifier::text FROM pg_catalog.pg_control_system()),
       (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()),
       (SELECT pg_catalog.json_agg(r) FROM (
            SELECT usename, application_name, client_addr::text, state, sync_state, sync_priority
              FROM pg_catalog.pg_stat_replication ORDER BY application_name) r),
       (SELECT pg_catalog.bool_or(pending_restart) FROM pg_catalog.pg_settings)"""
# Prepared once per connection: a probe then costs PostgreSQL no parsing or planning.
PREPARE_SQL = f"PREPARE hasup_quick AS {QUICK_COLUMNS};\nPREPARE hasup_full AS {FULL_COLUMNS}"
PROBE_SQL = FULL_COLUMNS  # the whole probe, as one plain statement


@dataclass(frozen=True)
class ProbeResult:
    in_recovery: bool
    timeline: int | None
    wal_position: int | None
    flush_lsn: int | None
    received_lsn: int | None
    replayed_lsn: int | None
    replayed_timestamp: str | None
    replay_paused: bool | None
    postmaster_start_time: str | None
    server_version: int
    sysid: str
    streaming: bool
    replication: tuple[dict[str, Any], ...]
    pending_restart: bool
    sync_standby_names: str | None = None
    checkpoint_timeline: int | None = None  # the timeline of the latest checkpoint (pg_control)


class ProbeFailed(Exception):
    pass


class ProbeTimedOut(ProbeFailed):
    """No answer within the probe's deadline: hung or frozen, not merely refusing (starting up, say)."""


def wait_async(conn: psycopg2.extensions.connection, deadline: float) -> None:
    """Drive an asynchronous connection until its current operation is done; ProbeTimedOut at the deadline."""
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProbeTimedOut("probe timed out")
        fd = conn.fileno()
        if state == psycopg2.extensions.POLL_READ:
            select.select([fd], [], [], remaining)
        elif state == psycopg2.extensions.POLL_WRITE:
            select.select([], [fd], [], remaining)
        else:
            raise ProbeFailed(f"unexpected poll state {state}")


@dataclass(frozen=True)
class _Full:
    """What the last full probe read that the quick one does not."""

    changes: tuple[Any, ...]  # the quick columns that say these may have changed, as they were then
    primary_tl: int | None
    start_time: str | None
    version: int
    sysid: str
    checkpoint_tl: int | None
    replication: tuple[dict[str, Any], ...]
    pending: bool
    at: float
    checkpointing: bool  # a primary whose last checkpoint is still on the old timeline (just promoted)


class Prober:
    """Keeps one probe connection open and re-opens it after any failure.

    full_every: the longest the costly facts (ProbeResult's timeline on a primary, replication rows,
    pending_restart, sysid, start time) may go unread while nothing hints at a change; 0 reads them
    every probe.
    """

    def __init__(self, dsn: str, timeout: float, full_every: float = 0.0) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self.full_every = full_every
        self._conn: psycopg2.extensions.connection | None = None
        self._full: _Full | None = None
        self._refresh_at: float | None = None  # read everything at the first probe from then on
        self.full_reads = 0  # how many probes read everything (tests count them)

    def close(self) -> None:
        self._full = None
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def refresh(self, delay: float = 0.0) -> None:
        """Have the first probe `delay` seconds from now read everything (after an action or a reload)."""
        at = time.monotonic() + delay
        self._refresh_at = at if self._refresh_at is None else min(self._refresh_at, at)

    def _run(self, sql: str, deadline: float) -> tuple[Any, ...]:
        assert self._conn is not None
        cur = self._conn.cursor()
        cur.execute(sql)
        wait_async(self._conn, deadline)
        row = cur.fetchone()
        if row is None:
            raise ProbeFailed("probe returned no row")
        return tuple(row)

    def probe(self) -> ProbeResult:
        deadline = time.monotonic() + self.timeout
        try:
            if self._conn is None or self._conn.closed:
                self._full = None
                self._conn = psycopg2.connect(self.dsn, async_=1)
                wait_async(self._conn, deadline)
                cur = self._conn.cursor()
                cur.execute(PREPARE_SQL)
                wait_async(self._conn, deadline)
            full = self._full
            now = time.monotonic()
            row: tuple[Any, ...] | None = None
            due = self._refresh_at is not None and now >= self._refresh_at
            # A fresh primary is read in full until its first checkpoint on the new timeline: Patroni
            # replicas wait for the member key to say so before they rewind (checkpoint_after_promote).
            if full is not None and now - full.at < self.full_every and not due and not full.checkpointing:
                row = self._run("EXECUTE hasup_quick", deadline)
                if changes(row) != full.changes:
                    row = None  # something the full probe reads may have moved: read it now
            if row is None:
                row = self._run("EXECUTE hasup_full", deadline)
                self.full_reads += 1
                if due:
                    self._refresh_at = None  # one asked for later (a reload settling) still stands
                (primary_tl, start_time, version, sysid, checkpoint_tl, replication, pending) = row[QUICK_FIELDS:]
                full = self._full = _Full(
                    changes=changes(row), primary_tl=primary_tl, start_time=start_time,
                    version=int(version), sysid=str(sysid), checkpoint_tl=checkpoint_tl,
                    replication=tuple(replication or ()), pending=bool(pending), at=time.monotonic(),
                    checkpointing=not row[0] and checkpoint_tl is not None and primary_tl is not None
                    and checkpoint_tl != primary_tl)
        except ProbeTimedOut:
            self.close()
            raise
        except (psycopg2.Error, OSError, ProbeFailed) as exc:
            self.close()
            raise ProbeFailed(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from exc
        assert full is not None
        return result_of(row[:QUICK_FIELDS], full)


def changes(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(row[i] for i in CHANGE_FIELDS)


def result_of(quick: tuple[Any, ...], full: _Full) -> ProbeResult:
    """One ProbeResult from this probe's quick columns and the last full read."""
    in_recovery, flush, received, replayed, replay_ts, paused, sync_names, received_tli, wr_status, _senders = quick
    if in_recovery:
        timeline = received_tli or full.checkpoint_tl
        positions = [p for p in (received, replayed) if p is not None]
        wal = int(max(positions)) if positions else None
    else:
        timeline = full.primary_tl
        wal = int(flush) if flush is not None else None
    return ProbeResult(
        in_recovery=bool(in_recovery),
        timeline=int(timeline) if timeline is not None else None,
        wal_position=wal,
        flush_lsn=int(flush) if flush is not None else None,
        received_lsn=int(received) if received is not None else None,
        replayed_lsn=int(replayed) if replayed is not None else None,
        replayed_timestamp=replay_ts,
        replay_paused=paused,
        postmaster_start_time=full.start_time,
        checkpoint_timeline=int(full.checkpoint_tl) if full.checkpoint_tl is not None else None,
        server_version=full.version,
        sysid=full.sysid,
        streaming=wr_status == "streaming",
        replication=full.replication,
        pending_restart=full.pending,
        sync_standby_names=sync_names,
    )


@contextlib.contextmanager
def admin_cursor(dsn: str, timeout: float) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor on a plain connection of its own, with autocommit, bounded by `timeout` to connect and per statement."""
    conn = psycopg2.connect(dsn, connect_timeout=max(1, int(timeout)))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"SET statement_timeout = {int(timeout * 1000)}")
            yield cur
    finally:
        conn.close()


def run_sql(dsn: str, statements: list[str], timeout: float = 30.0) -> None:
    """Run admin statements (bootstrap users, slots) on a plain connection with autocommit."""
    with admin_cursor(dsn, timeout) as cur:
        for sql in statements:
            cur.execute(sql)


# What a node that may rewind against this server needs to know: the timeline it writes on now (from its
# current WAL file's name; NULL in recovery), and the one its pg_control records, which is all pg_rewind
# reads: it lags the first until the first checkpoint after a promotion.
LEADER_TIMELINES_SQL = """
SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
            ELSE ('x' || pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))
                 ::bit(32)::int END,
       (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())"""


@dataclass(frozen=True)
class LeaderTimelines:
    running: int | None  # None: the server runs in recovery (a standby leader)
    checkpointed: int | None

    @property
    def checkpoint_pending(self) -> bool:
        """Promoted, and no checkpoint since: pg_rewind against it would take the old timeline for its own."""
        return self.running is not None and self.checkpointed is not None and self.checkpointed < self.running


def leader_timelines(dsn: str, timeout: float = 5.0) -> LeaderTimelines:
    with admin_cursor(dsn, timeout) as cur:
        cur.execute(LEADER_TIMELINES_SQL)
        row = cur.fetchone()
    # A peer's answer, parsed at the boundary: a timeline in range, or None.
    running, checkpointed = (v if parse.is_int(v, 1, parse.MAX_TIMELINE + 1) else None
                             for v in (*(row or ()), None, None)[:2])
    return LeaderTimelines(running, checkpointed)
