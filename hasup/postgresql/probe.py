"""Health probes on a connection of their own, bounded by a client-side deadline.

psycopg2's asynchronous mode lets us poll the socket ourselves, so a frozen
server (SIGSTOP, hung I/O) costs at most the deadline, never a hang.  The
query is read-only and takes no transaction id, so strict synchronous
replication cannot block it.
"""

from __future__ import annotations

import select
import time
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions

PROBE_SQL = """
SELECT pg_catalog.pg_is_in_recovery(),
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
            ELSE pg_catalog.pg_current_wal_flush_lsn() - '0/0' END,
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
            ELSE ('x' || pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))
                 ::bit(32)::int END,
       pg_catalog.pg_last_wal_receive_lsn() - '0/0',
       pg_catalog.pg_last_wal_replay_lsn() - '0/0',
       pg_catalog.to_char(pg_catalog.pg_last_xact_replay_timestamp(), 'YYYY-MM-DD HH24:MI:SS.USOF'),
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_is_wal_replay_paused() END,
       pg_catalog.to_char(pg_catalog.pg_postmaster_start_time(), 'YYYY-MM-DD HH24:MI:SS.USOF'),
       pg_catalog.current_setting('server_version_num')::int,
       (SELECT system_identifier::text FROM pg_catalog.pg_control_system()),
       (SELECT received_tli FROM pg_catalog.pg_stat_get_wal_receiver()),
       (SELECT status FROM pg_catalog.pg_stat_get_wal_receiver()),
       (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()),
       (SELECT pg_catalog.json_agg(r) FROM (
            SELECT usename, application_name, client_addr::text, state, sync_state, sync_priority
              FROM pg_catalog.pg_stat_replication ORDER BY application_name) r),
       (SELECT pg_catalog.bool_or(pending_restart) FROM pg_catalog.pg_settings),
       pg_catalog.current_setting('synchronous_standby_names')
"""


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


class Prober:
    """Keeps one probe connection open and re-opens it after any failure."""

    def __init__(self, dsn: str, timeout: float) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._conn: psycopg2.extensions.connection | None = None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def probe(self) -> ProbeResult:
        deadline = time.monotonic() + self.timeout
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg2.connect(self.dsn, async_=1)
                wait_async(self._conn, deadline)
            cur = self._conn.cursor()
            cur.execute(PROBE_SQL)
            wait_async(self._conn, deadline)
            row = cur.fetchone()
        except ProbeTimedOut:
            self.close()
            raise
        except (psycopg2.Error, OSError, ProbeFailed) as exc:
            self.close()
            raise ProbeFailed(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from exc
        assert row is not None
        (in_recovery, flush, primary_tl, received, replayed, replay_ts, paused, start_time, version, sysid,
         received_tli, wr_status, checkpoint_tl, replication, pending, sync_names) = row
        if in_recovery:
            timeline = received_tli or checkpoint_tl
            positions = [p for p in (received, replayed) if p is not None]
            wal = int(max(positions)) if positions else None
        else:
            timeline = primary_tl
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
            postmaster_start_time=start_time,
            checkpoint_timeline=int(checkpoint_tl) if checkpoint_tl is not None else None,
            server_version=int(version),
            sysid=str(sysid),
            streaming=wr_status == "streaming",
            replication=tuple(replication or ()),
            pending_restart=bool(pending),
            sync_standby_names=sync_names,
        )


def run_sql(dsn: str, statements: list[str], timeout: float = 30.0) -> None:
    """Run admin statements (bootstrap users, slots) on a plain connection with autocommit."""
    conn = psycopg2.connect(dsn, connect_timeout=max(1, int(timeout)))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"SET statement_timeout = {int(timeout * 1000)}")
            for sql in statements:
                cur.execute(sql)
    finally:
        conn.close()
