"""A new cluster from a backup: the custom `bootstrap.method` instead of initdb.

The winner of the initialize race runs the method's command, which restores the data directory;
PostgreSQL then runs the archive recovery the method's recovery_conf describes (for a point in time,
say) until it ends and promotes to a new timeline; then come the steps of every bootstrap: roles,
post_bootstrap.  A restore that fails leaves its data directory renamed `<data_dir>.failed` (as in
Patroni) for the operator to look at, and the bootstrap fails.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hasup.config.methods import BootstrapMethod
from hasup.postgresql import conf, restore
from hasup.postgresql.control import data_dir_empty
from hasup.postgresql.failure import ActionFailed
from hasup.postgresql.probe import ProbeFailed, Prober
from hasup.postgresql.roles import Role
from hasup.postgresql.state import PgStatus

if TYPE_CHECKING:
    from hasup.postgresql.lifecycle import Lifecycle

log = logging.getLogger(__name__)

PROGRESS_EVERY = 60.0  # seconds between log lines while the archive recovery runs


@dataclass(frozen=True)
class RestoreRecovery:
    """How the restored server first starts: its recovery settings, and what happens to the ones the
    backup came with."""

    settings: dict[str, Any] = field(default_factory=dict)  # written into postgresql.conf (+ recovery.signal)
    keep_existing: bool = False  # leave the backup's signal files and postgresql.auto.conf alone
    hot_standby_off: bool = False


def bootstrap_argv(method: BootstrapMethod, scope: str, data_dir: str) -> list[str]:
    """The command, then (unless no_params) --scope and --datadir, then `--key=value` for each other key."""
    params = [] if method.no_params else [f"--scope={scope}", f"--datadir={data_dir}"]
    return [*shlex.split(method.command), *params, *(f"--{k}={v}" for k, v in method.arguments)]


def restore_recovery(method: BootstrapMethod) -> RestoreRecovery:
    """The first start's settings.  Read-only connections during a recovery that ends in a promotion
    are of no use and would fail the start when the backup's server had, say, more max_connections
    than ours (PostgreSQL requires a hot standby's to be at least as high): hot_standby goes off, as
    in Patroni.  When the recovery pauses at its target, it stays on, so the result can be looked at."""
    settings = conf.target_recovery_parameters(method.recovery_conf) if method.recovery_conf is not None else {}
    if method.keep_existing_recovery_conf:
        off = True  # the backup tool's own settings: trust them to end the recovery
    else:
        off = bool(settings) and settings.get("recovery_target_action", "pause") == "promote"
    return RestoreRecovery(settings, method.keep_existing_recovery_conf, off)


def signal_files(recovery: RestoreRecovery) -> dict[str, bool]:
    """Which signal files the first start needs: name -> present (absent names: left as they are)."""
    if recovery.settings:
        return {"recovery.signal": True, "standby.signal": False}
    if recovery.keep_existing:
        return {}
    return {"recovery.signal": False, "standby.signal": False}


def apply_signal_files(data_dir: str, wanted: Mapping[str, bool]) -> None:
    for name, present in wanted.items():
        path = os.path.join(data_dir, name)
        if present:
            with open(path, "w"):
                pass
        elif os.path.exists(path):
            os.unlink(path)


def run_custom_bootstrap(lc: Lifecycle, method: BootstrapMethod) -> dict[str, Any]:
    try:
        return _bootstrap(lc, method)
    except Exception:
        _set_aside(lc)
        lc.on_state(PgStatus.CUSTOM_BOOTSTRAP_FAILED)
        raise


def _bootstrap(lc: Lifecycle, method: BootstrapMethod) -> dict[str, Any]:
    cfg = lc.cfg
    pg = cfg.postgresql
    lc.on_state(PgStatus.CUSTOM_BOOTSTRAP)
    lc.refuse_if_running()
    if not data_dir_empty(lc.data_dir):
        raise ActionFailed(f"data directory {lc.data_dir} is not empty")
    os.makedirs(lc.data_dir, mode=0o700, exist_ok=True)
    conf.write_pgpass(cfg)
    argv = bootstrap_argv(method, cfg.scope, lc.data_dir)
    log.info("bootstrapping by method %s: %s", method.name, method.command)
    outcome = lc.group.run(argv, method.timeout, lc.env(), f"bootstrap method {method.name}")
    if not outcome.ok:
        raise ActionFailed(f"custom bootstrap failed: {outcome.describe(method.name)}")
    if not os.path.exists(os.path.join(lc.data_dir, "PG_VERSION")):
        raise ActionFailed(f"custom bootstrap failed: {method.name} left no PostgreSQL data directory "
                           f"in {lc.data_dir}")
    recovery = restore_recovery(method)
    restore.adopt_restored(cfg, keep_recovery=recovery.keep_existing)
    if pg.pg_hba is None and lc.dynamic.pg_hba is None and cfg.bootstrap.pg_hba:
        with open(os.path.join(pg.config_dir, "pg_hba.conf"), "a") as f:
            f.write("\n# bootstrap.pg_hba\n" + "\n".join(cfg.bootstrap.pg_hba) + "\n")
    lc.restoring = recovery
    try:
        lc.write_config(None, None, standby=False)
        apply_signal_files(lc.data_dir, signal_files(recovery))
        lc.on_state(PgStatus.STARTING_AFTER_CUSTOM_BOOTSTRAP)
        lc.launch()
        wait_end_of_recovery(lc)
    finally:
        lc.restoring = None
    # A primary now: its own settings (no recovery ones, hot_standby as configured; that one only
    # takes effect on a restart).
    if recovery.hot_standby_off:
        result = lc.restart(None, None, None)
    else:
        lc.write_config(None, None, standby=False)
        lc.reload()
        result = lc.wait_ready(pg.pg_ctl_timeout)
    # The backup's superuser may have had another password: set ours, as the other roles.
    lc.post_bootstrap(extra=[Role(pg.superuser.username, pg.superuser.password, ("SUPERUSER",))])
    lc.checkpoint()
    log.info("bootstrapped by method %s: timeline %s", method.name, result.get("timeline"))
    return result


def wait_end_of_recovery(lc: Lifecycle) -> None:
    """Until PostgreSQL runs as a primary.  No deadline: an archive recovery takes as long as the WAL
    takes to replay (or, paused at its target, until an operator resumes it); a cancel ends the wait."""
    prober = Prober(lc.local_dsn(), timeout=2.0)
    started = last_log = time.monotonic()
    said_paused = False
    try:
        while True:
            if lc.cancel.is_set():
                raise ActionFailed("cancelled")
            code = lc.postmaster.exited_early()
            if code is not None or (lc.postmaster.pid() is None and time.monotonic() - started > 2):
                raise ActionFailed(f"PostgreSQL exited during the recovery after the custom bootstrap "
                                   f"(status {code}); see its log")
            try:
                r = prober.probe()
                if not r.in_recovery:
                    return
                if r.replay_paused and not said_paused:
                    said_paused = True
                    log.warning("recovery paused (recovery_target_action: pause): the bootstrap goes on once "
                                "it is resumed with SELECT pg_wal_replay_resume()")
            except ProbeFailed:
                pass
            if time.monotonic() - last_log >= PROGRESS_EVERY:
                last_log = time.monotonic()
                log.info("archive recovery after the custom bootstrap still running (%.0fs)", last_log - started)
            time.sleep(0.5)
    finally:
        prober.close()


def _set_aside(lc: Lifecycle) -> None:
    """Stop what the failed bootstrap started and keep its data directory for the operator."""
    if lc.postmaster.pid() is not None:
        try:
            lc.stop("immediate")
        except Exception as exc:  # the failure being reported matters more
            log.error("stopping PostgreSQL after the failed bootstrap: %s", exc)
    if data_dir_empty(lc.data_dir):
        return
    target = lc.data_dir.rstrip("/") + ".failed"
    if os.path.exists(target):
        target += time.strftime("-%Y%m%dT%H%M%S")
    try:
        os.rename(lc.data_dir, target)
        log.error("the failed bootstrap's data directory is kept as %s", target)
    except OSError as exc:
        log.error("cannot rename %s to %s (%s): emptying it", lc.data_dir, target, exc)
        restore.remove_contents(lc.data_dir)
