"""What a node publishes about itself in etcd: its member key and its timeline history (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hasup import PATRONI_COMPAT_VERSION, __version__
from hasup.config import Config
from hasup.ipc import PgState, WatchdogState


def member_data(cfg: Config, pg: PgState | None, paused: bool = False, standby_leader: bool = False) \
        -> dict[str, Any]:
    """The value of members/<name>, with Patroni's fields; WAL fields only from a confirmed probe.

    `paused` is the cluster's pause flag as this node last read it: patronictl's
    `pause --wait` and `resume --wait` poll the member keys for it.  `standby_leader`: this node holds
    the lock of a standby cluster, so its replica is published as role standby_leader (as Patroni does;
    patronictl's demote-cluster waits for it)."""
    data: dict[str, Any] = {
        "conn_url": cfg.postgresql.conn_url,
        "api_url": cfg.restapi.api_url,
        "state": pg.state if pg else "unknown",
        "role": ("standby_leader" if standby_leader and pg.role == "replica" else pg.role) if pg else "uninitialized",
        # Patroni's tools parse this as the Patroni version; hasup's own goes alongside.
        "version": PATRONI_COMPAT_VERSION,
        "hasup_version": __version__,
    }
    tags = {k: v for k, v in cfg.tags.raw.items() if v not in (False, None)}
    if tags:
        data["tags"] = tags
    if pg is not None and pg.probe_ok:
        if pg.wal_position is not None:
            data["xlog_location"] = pg.wal_position
        if pg.timeline is not None:
            data["timeline"] = pg.timeline
        if pg.role == "primary" and pg.timeline is not None and pg.checkpoint_timeline is not None \
                and pg.checkpoint_timeline < pg.timeline:
            # As Patroni's leader: a Patroni replica waits for this flag to go before it runs pg_rewind
            # against us (docs/migration.md, "What each kind reads of the other").
            data["checkpoint_after_promote"] = False
        if pg.role == "replica":
            data["replication_state"] = pg.replication_state or "not streaming"
            if pg.received_location is not None:
                data["receive_lsn"] = pg.received_location
            if pg.replayed_location is not None:
                data["replay_lsn"] = pg.replayed_location
        if pg.pending_restart:
            data["pending_restart"] = True
    if paused:
        data["pause"] = True
    return data


def with_protection(data: dict[str, Any], watchdog: WatchdogState | None) -> dict[str, Any]:
    """hasup's own member fields, for `hasupctl list -e`: what stops this node's PostgreSQL when its lease runs
    out unrenewed, and when the software fence last did (docs/operations.md, "The software fence")."""
    if watchdog is not None and watchdog.protection:
        data["lease_protection"] = watchdog.protection
        if watchdog.last_fence is not None:
            data["last_fence"] = datetime.fromtimestamp(watchdog.last_fence, UTC).isoformat(timespec="seconds")
    return data


def recorded_history(history: list[list[Any]], timeline_history: tuple[tuple[int, int, str], ...], now_iso: str,
                     me: str) -> list[list[Any]]:
    """The history key after a promotion: entries already recorded stay as they are; the
    newest switch (ours) gains its time and new leader."""
    # hasup.dcs.parse lets only well-formed entries in; skip anything else rather than fail a promotion.
    recorded = {e[0]: e for e in history
                if isinstance(e, list | tuple) and e and isinstance(e[0], int) and not isinstance(e[0], bool)}
    out: list[list[Any]] = []
    for i, (tli, lsn, reason) in enumerate(timeline_history):
        if tli in recorded:
            out.append(list(recorded[tli]))
        elif i == len(timeline_history) - 1:
            out.append([tli, lsn, reason, now_iso, me])
        else:
            out.append([tli, lsn, reason])
    return out
