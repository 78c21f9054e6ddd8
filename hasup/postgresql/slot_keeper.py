"""Carries out the replication-slot plan against the local PostgreSQL, on a thread of its own.

The postgres worker hands over a `SlotJob` with each ClusterView; the keeper
runs one job at a time (a job that arrives meanwhile replaces the waiting
one, so runs never overlap or pile up) with short client-side timeouts, so a
slow server delays slots, never the worker's loop.  What it finds on a
leader is published for /status.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from hasup.postgresql import slots
from hasup.postgresql.slots import slot_name

log = logging.getLogger("hasup.slots")

READ_SQL = """
SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('wal_level'),
       (SELECT pg_catalog.json_agg(s) FROM pg_catalog.pg_replication_slots s)
"""
CONNECT_TIMEOUT = 3  # seconds
# Creating a logical slot waits for the transactions running at that moment to end.
STATEMENT_TIMEOUT_MS = 10000
IDLE_CHECK_INTERVAL = 60.0  # seconds between checks while use_slots is off


@dataclass(frozen=True)
class SlotJob:
    """Everything one run needs, from the worker's latest ClusterView."""

    me: str
    nofailover: bool
    holds_lock: bool
    leader: str | None
    paused: bool
    members: Mapping[str, Mapping[str, Any]]
    settings: slots.SlotSettings
    status: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # problems found in the settings, logged once


class SlotKeeper:
    def __init__(self, dsn: Callable[[str | None], str], clock: Callable[[], float] = time.monotonic,
                 spawn: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.dsn = dsn  # database name (None: the default one) -> libpq DSN
        self.clock = clock
        self.spawn = spawn or (lambda fn: threading.Thread(target=fn, name="slots", daemon=True).start())
        self._lock = threading.Lock()
        self._waiting: SlotJob | None = None
        self._running = False
        self.last_seen: dict[str, float] = {}  # member slot -> when its member was last seen (leader only)
        self.was_primary = False
        # For /status, from the last run as leader: {slot: position}, retained member slots.
        self.published: tuple[dict[str, int] | None, tuple[str, ...]] = (None, ())
        self._logged: set[str] = set()  # problems reported by the previous run
        self._said: set[str] = set()  # problems reported by this run
        self._idle_until = 0.0  # with use_slots off, the next check is due then
        self._conn: Any = None  # the session kept from one run to the next (used by one run at a time)

    # -- scheduling ----------------------------------------------------------------------------

    def submit(self, job: SlotJob) -> None:
        if not job.settings.use_slots:
            # Only leftovers to clear (slots of a time use_slots was on): now and then is enough.
            if self.clock() < self._idle_until:
                return
            self._idle_until = self.clock() + IDLE_CHECK_INTERVAL
        else:
            self._idle_until = 0.0
        with self._lock:
            self._waiting = job
            if self._running:
                return
            self._running = True
        self.spawn(self._loop)

    def _loop(self) -> None:
        while True:
            with self._lock:
                job, self._waiting = self._waiting, None
                if job is None:
                    self._running = False
                    return
            try:
                self.run_once(job)
            except Exception as exc:  # a bug must not stop slot keeping for good
                self._say(logging.ERROR, f"replication slots: {type(exc).__name__}: {exc}")

    # -- one run ---------------------------------------------------------------------------------

    def _connection(self) -> tuple[Any, bool]:
        """The kept session, or a new one; and whether it is new.  A new backend each loop_wait would cost
        PostgreSQL more (a fork, authentication, catalog caches) than the slot work itself."""
        if self._conn is not None and not self._conn.closed:
            return self._conn, False
        conn = psycopg2.connect(self.dsn(None), connect_timeout=CONNECT_TIMEOUT)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        except psycopg2.Error:
            conn.close()
            raise
        self._conn = conn
        return conn, True

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass

    def run_once(self, job: SlotJob) -> None:
        self._said = set()
        for note in job.notes:
            self._say(logging.WARNING, note)
        try:
            for _ in range(2):
                try:
                    conn, new = self._connection()
                except psycopg2.Error as exc:
                    self._say(logging.WARNING, f"replication slots: cannot connect: {_first_line(exc)}")
                    return
                try:
                    self._run_on(conn, job)
                    return
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    self.close()
                    if new:
                        self._say(logging.WARNING, f"replication slots: {_first_line(exc)}")
                        return
                    # The kept session died with the server it was on (a restart, a demotion): once more, anew.
                except psycopg2.Error as exc:
                    self._say(logging.WARNING, f"replication slots: {_first_line(exc)}")
                    return
        finally:
            self._logged = self._said

    def _run_on(self, conn: Any, job: SlotJob) -> None:
        with conn.cursor() as cur:
            in_recovery, wal_level, rows = self._read(cur)
            primary = not in_recovery
            if primary and not job.holds_lock:
                self.published = (None, ())  # a primary about to be demoted: leave its slots be
                return
            names = self._member_slot_names(job, primary)
            status = job.status or {}
            optime = status.get("optime")
            downstream, cascaded = slots.cascades(job.members, job.me, job.leader)
            result = slots.plan(
                me=job.me, primary=primary, settings=job.settings, rows=rows, member_slot_names=names,
                paused=job.paused, nofailover=job.nofailover, logical_ok=wal_level == "logical",
                leader=job.leader, status_slots=status.get("slots") if isinstance(status.get("slots"), dict)
                else {}, leader_optime=optime if isinstance(optime, int) else None, downstream=downstream,
                cascaded=cascaded)
            for note in result.notes:
                self._say(logging.WARNING, note)
            changed = self._execute(cur, result)
            if changed:
                _, _, rows = self._read(cur)
            if primary:
                positions = {r.name: r.position for r in rows if r.name in result.managed and not r.temporary}
                self.published = ({k: v for k, v in positions.items() if v is not None},
                                  tuple(sorted(self.last_seen)))
            else:
                self.published = (None, ())

    def _read(self, cur: Any) -> tuple[bool, str, list[slots.SlotRow]]:
        cur.execute(READ_SQL)
        in_recovery, wal_level, raw = cur.fetchone()
        return bool(in_recovery), str(wal_level), [slots.row_of(r) for r in raw or ()]

    def _member_slot_names(self, job: SlotJob, primary: bool) -> set[str]:
        present, notes = slots.member_slots(job.members, job.me)
        for note in notes:
            self._say(logging.ERROR, note)
        listed = job.status.get("retain_slots")
        retained: list[Any] | tuple[Any, ...] = listed if isinstance(listed, list | tuple) else []
        mine = slot_name(job.me)
        if not primary:
            self.was_primary, self.last_seen = False, {}
            # Copies follow the leader's list, so a failover keeps vanished members' slots too.
            return set(present) | {str(s) for s in retained if s != mine}
        now = self.clock()
        if not self.was_primary:
            # Just promoted (or this worker restarted): the grace the previous leader granted goes on.
            self.was_primary = True
            self.last_seen = {str(s): now for s in retained if s != mine}
        self.last_seen = slots.retain(self.last_seen, present, now, job.settings.member_slots_ttl)
        return set(self.last_seen)

    def _execute(self, cur: Any, result: slots.Plan) -> bool:
        changed = False
        for name, why in result.drop:
            try:
                cur.execute("SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots"
                            " WHERE slot_name = %s AND NOT active AND NOT temporary", (name,))
                if cur.rowcount:
                    log.info("dropped replication slot %s: %s", name, why)
                    changed = True
                else:
                    self._say(logging.WARNING, f"replication slot {name} is in use: not dropped ({why})")
            except psycopg2.Error as exc:
                self._say(logging.WARNING, f"could not drop replication slot {name}: {_first_line(exc)}")
        for spec in result.create:
            try:
                if spec.type == "physical":
                    cur.execute("SELECT pg_catalog.pg_create_physical_replication_slot(%s, true)", (spec.name,))
                else:
                    self._create_logical(spec)
                log.info("created %s replication slot %s", spec.type, spec.name)
                changed = True
            except psycopg2.Error as exc:
                self._say(logging.WARNING, f"could not create replication slot {spec.name}: {_first_line(exc)}")
        for name, lsn in result.advance:
            try:
                cur.execute("SELECT pg_catalog.pg_replication_slot_advance(%s, %s::pg_catalog.pg_lsn)",
                            (name, slots.format_lsn(lsn)))
                changed = True
            except psycopg2.Error as exc:
                self._say(logging.WARNING, f"could not advance replication slot {name}: {_first_line(exc)}")
        return changed

    def _create_logical(self, spec: slots.SlotSpec) -> None:
        # A logical slot belongs to its database: create it from a session there.
        conn = psycopg2.connect(self.dsn(spec.database), connect_timeout=CONNECT_TIMEOUT)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
                cur.execute("SELECT pg_catalog.pg_create_logical_replication_slot(%s, %s)", (spec.name, spec.plugin))
        finally:
            conn.close()

    def _say(self, level: int, message: str) -> None:
        """Log a problem once while it lasts: the same line each loop_wait would drown the log."""
        self._said.add(message)
        if message not in self._logged:
            log.log(level, message)
            self._logged = self._logged | {message}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
