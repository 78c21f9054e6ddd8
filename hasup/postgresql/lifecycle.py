"""PostgreSQL lifecycle operations: bootstrap, clone, start, promote, follow, stop.

Each method is a long action: the postgres worker runs it on a thread and
keeps reporting PgState meanwhile.  Methods return a result dict or raise
ActionFailed with a one-line reason.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from hasup.config import Config, DynamicConfig, UserSpec
from hasup.config.methods import BASEBACKUP
from hasup.config.standby import REMOTE, is_standby, remote_url
from hasup.postgresql import conf, restore, slots, standby_recovery
from hasup.postgresql.bootstrap_methods import RestoreRecovery, run_custom_bootstrap
from hasup.postgresql.control import Binaries, CommandFailed, Postmaster, controldata, data_dir_empty, run
from hasup.postgresql.failure import ActionFailed
from hasup.postgresql.group_run import GroupRunner
from hasup.postgresql.hooks import run_hook
from hasup.postgresql.probe import LeaderTimelines, ProbeFailed, Prober, leader_timelines, run_sql
from hasup.postgresql.replica_methods import ReplicaBuilder
from hasup.postgresql.restore import remove_contents
from hasup.postgresql.roles import Role, create_roles, ident
from hasup.postgresql.state import PRE_PROMOTE, REFUSED_BY, PgStatus

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, cfg: Config, dynamic: DynamicConfig, postmaster: Postmaster,
                 on_state: Callable[[PgStatus], None]) -> None:
        self.cfg = cfg
        self.dynamic = dynamic
        self.postmaster = postmaster
        self.bins = Binaries(cfg.postgresql.bin_dir)
        self.on_state = on_state  # tells the worker which state to report while we work
        self.following: str | None = None
        self.following_url: str | None = None
        # synchronous_standby_names as election last set it (None: not set since this worker started).
        self.sync_setting: str | None = None
        self.cancel = threading.Event()
        self.current: subprocess.Popen[str] | None = None
        # Users' restore commands (replica methods, a custom bootstrap), each in a process group of its own.
        self.group = GroupRunner(self.cancel.is_set)
        # Set while a custom bootstrap's restored data directory first starts (its archive recovery).
        self.restoring: RestoreRecovery | None = None
        # Whether the replica's settings as last written hold a restore_command (replication_state).
        self.archive_recovery = False

    def _track(self, proc: subprocess.Popen[str] | None) -> None:
        self.current = proc

    def run(self, cmd: list[str], timeout: float | None, env: dict[str, str] | None = None) -> str:
        if self.cancel.is_set():
            raise ActionFailed("cancelled")
        return run(cmd, timeout, env if env is not None else self.env(), track=self._track)

    def cancel_current(self) -> None:
        """Stop what the running action is doing (a basebackup can take hours): shutdown must not wait."""
        self.cancel.set()
        proc = self.current
        if proc is not None and proc.poll() is None:
            proc.terminate()
        self.group.kill()

    # -- helpers -------------------------------------------------------------

    @property
    def data_dir(self) -> str:
        return self.cfg.postgresql.data_dir

    def local_dsn(self, dbname: str | None = None) -> str:
        host = self.cfg.postgresql.listen_hosts[0]
        if host in ("*", "0.0.0.0", "", "::"):
            host = "127.0.0.1"
        return conf.dsn(host, self.cfg.postgresql.port, self.cfg.postgresql.superuser,
                        dbname or self.cfg.postgresql.database, passfile=self.cfg.postgresql.pgpass,
                        application_name="hasup", connect_timeout=3)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HASUP_", "PATRONI_", "NOTIFY_SOCKET"))}
        env["PGPASSFILE"] = self.cfg.postgresql.pgpass
        return env

    def write_config(self, leader: str | None, leader_conn_url: str | None, standby: bool) -> None:
        pg = self.cfg.postgresql
        conf.write_pgpass(self.cfg)
        params, warnings = conf.effective_parameters(self.cfg, self.dynamic)
        for w in warnings:
            log.warning(w)
        if self.dynamic.synchronous_mode:
            # Managed by election (hasup.election.sync); until it says otherwise, strict mode waits for anyone.
            default = "*" if self.dynamic.synchronous_mode_strict else ""
            params["synchronous_standby_names"] = self.sync_setting if self.sync_setting is not None else default
        slot = slots.own_slot(self.cfg.name, self.cfg.tags.raw, self.dynamic.use_slots)
        recovery: dict[str, Any] = {}
        if standby:
            recovery = conf.recovery_parameters(self.cfg, leader_conn_url, slot)
            section = self.dynamic.standby_cluster
            if section:  # a standby cluster's member (hasup.config.standby)
                recovery = {**conf.BLANK_TARGETS, **standby_recovery.remote_settings(self.cfg, section)} \
                    if leader == REMOTE else {**standby_recovery.archive_settings(section), **recovery}
        elif self.restoring is not None:
            recovery = dict(self.restoring.settings)
            if self.restoring.hot_standby_off:
                params["hot_standby"] = "off"
        self.archive_recovery = standby and bool(recovery.get("restore_command"))
        path = os.path.join(pg.config_dir, "postgresql.conf")
        conf.write_private(path, conf.render_postgresql_conf(self.cfg, params, recovery))
        hba = conf.render_pg_hba(self.cfg, self.dynamic)
        if hba is not None:
            conf.write_private(os.path.join(pg.config_dir, "pg_hba.conf"), hba)
        signal_file = os.path.join(self.data_dir, "standby.signal")
        if standby:
            with open(signal_file, "w"):
                pass
            self.following, self.following_url = leader, leader_conn_url
        else:
            # A restored data directory's signal files are the custom bootstrap's to set.
            if os.path.exists(signal_file) and self.restoring is None:
                os.unlink(signal_file)
            self.following = self.following_url = None

    def start_options(self) -> list[str]:
        params, _ = conf.effective_parameters(self.cfg, self.dynamic)
        if self.restoring is not None and self.restoring.hot_standby_off:
            params["hot_standby"] = "off"  # hot_standby is on the command line, which outranks the file
        return conf.command_line_options(params)

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Wait until PostgreSQL answers queries; the postmaster dying ends the wait early."""
        prober = Prober(self.local_dsn(), timeout=2.0)
        deadline = time.monotonic() + timeout
        last = "no answer"
        try:
            while time.monotonic() < deadline:
                if self.cancel.is_set():
                    raise ActionFailed("cancelled")
                code = self.postmaster.exited_early()
                if code is not None or (self.postmaster.pid() is None and time.monotonic() > deadline - timeout + 2):
                    raise ActionFailed(f"postgres exited during start (status {code})")
                try:
                    r = prober.probe()
                    return {"sysid": r.sysid, "in_recovery": r.in_recovery, "timeline": r.timeline}
                except ProbeFailed as exc:
                    last = str(exc)
                time.sleep(0.2)
        finally:
            prober.close()
        raise ActionFailed(f"postgres did not become ready within {timeout:.0f}s: {last}")

    def launch(self) -> None:
        if self.cancel.is_set():
            raise ActionFailed("cancelled")
        if self.postmaster.pid() is not None:
            return
        self.postmaster.start(self.start_options())

    # -- actions ---------------------------------------------------------------

    def bootstrap(self) -> dict[str, Any]:
        if is_standby(self.dynamic.standby_cluster):
            return self.bootstrap_standby()
        if self.cfg.bootstrap.method is not None:
            return run_custom_bootstrap(self, self.cfg.bootstrap.method)
        pg = self.cfg.postgresql
        self.on_state(PgStatus.INITIALIZING)
        self.refuse_if_running()
        if not data_dir_empty(self.data_dir):
            raise ActionFailed(f"data directory {self.data_dir} is not empty")
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        cmd = [self.bins.path("initdb"), "-D", self.data_dir, f"--username={pg.superuser.username}",
               *self.cfg.bootstrap.initdb]
        pwfile = None
        try:
            if pg.superuser.password:
                fd, pwfile = tempfile.mkstemp(prefix=".hasup-pw-", dir=os.path.dirname(self.data_dir.rstrip("/")))
                with os.fdopen(fd, "w") as f:
                    f.write(pg.superuser.password + "\n")
                cmd.append(f"--pwfile={pwfile}")
            self.run(cmd, timeout=600)
        except CommandFailed as exc:
            raise ActionFailed(f"initdb failed: {exc}") from exc
        finally:
            if pwfile:
                os.unlink(pwfile)
        if not pg.custom_conf:
            os.replace(os.path.join(self.data_dir, "postgresql.conf"),
                       os.path.join(self.data_dir, "postgresql.base.conf"))
        if pg.pg_hba is None and self.dynamic.pg_hba is None and self.cfg.bootstrap.pg_hba:
            with open(os.path.join(pg.config_dir, "pg_hba.conf"), "a") as f:
                f.write("\n# bootstrap.pg_hba\n" + "\n".join(self.cfg.bootstrap.pg_hba) + "\n")
        self.write_config(None, None, standby=False)
        self.on_state(PgStatus.STARTING)
        self.launch()
        result = self.wait_ready(pg.pg_ctl_timeout)
        self.post_bootstrap()
        return result

    def bootstrap_standby(self) -> dict[str, Any]:
        """A new standby cluster's first node clones the remote primary instead of running initdb; its
        users and post_bootstrap are the remote's business (they came with the copy)."""
        section = self.dynamic.standby_cluster or {}
        url = remote_url(section)
        methods = self.standby_methods(section)
        if url is None and not any(self.cfg.postgresql.replica_methods[m].no_leader
                                   for m in methods if m != BASEBACKUP):
            raise ActionFailed("standby_cluster names no host or port to clone from and none of its "
                               "create_replica_methods is marked no_leader")
        if not data_dir_empty(self.data_dir):
            raise ActionFailed(f"data directory {self.data_dir} is not empty")
        log.info("bootstrapping a standby cluster from %s by %s",
                 url.removeprefix("postgres://").removesuffix("/postgres") if url else "its archive",
                 ", ".join(methods))
        return self.create_replica(REMOTE, url, methods)

    def standby_methods(self, section: dict[str, Any]) -> tuple[str, ...]:
        """standby_cluster's create_replica_methods (default basebackup) that this node can run: the
        list comes from etcd, and a method needs its section in this node's postgresql configuration."""
        wanted = tuple(section.get("create_replica_methods") or (BASEBACKUP,))
        known = self.cfg.postgresql.replica_methods
        usable = tuple(m for m in wanted if m == BASEBACKUP or m in known)
        if usable != wanted:
            log.warning("standby_cluster.create_replica_methods: no postgresql section for %s on this node: skipped",
                        ", ".join(m for m in wanted if m not in usable))
        return usable or (BASEBACKUP,)

    def post_bootstrap(self, extra: list[Role] | None = None) -> None:
        pg = self.cfg.postgresql
        users: list[Role] = list(extra or ())
        grants: list[str] = []
        if pg.replication.username != pg.superuser.username:
            users.append(Role(pg.replication.username, pg.replication.password, ("REPLICATION",)))
        if pg.rewind.username not in (pg.superuser.username, pg.replication.username):
            users.append(Role(pg.rewind.username, pg.rewind.password))
            for fn in ("pg_ls_dir(text, boolean, boolean)", "pg_stat_file(text, boolean)",
                       "pg_read_binary_file(text)", "pg_read_binary_file(text, bigint, bigint, boolean)"):
                grants.append(f"GRANT EXECUTE ON FUNCTION pg_catalog.{fn} TO {ident(pg.rewind.username)}")
        users += [Role(name, spec.password, options_of(spec)) for name, spec in self.cfg.bootstrap.users.items()]
        try:
            create_roles(self.local_dsn(), users, grants)
        except Exception as exc:  # no secret in the message: the statements carry verifiers, never passwords
            reason = (str(exc).splitlines() or [""])[0]
            raise ActionFailed(f"creating users failed: {type(exc).__name__}: {reason}") from exc
        script = self.cfg.bootstrap.post_bootstrap
        if script:
            env = self.env()
            env["PGOPTIONS"] = "-c synchronous_commit=local -c statement_timeout=0"
            try:
                self.run([*shlex.split(script), self.local_dsn()], timeout=3600, env=env)
            except CommandFailed as exc:
                raise ActionFailed(f"post_bootstrap failed: {exc}") from exc

    def refuse_if_running(self) -> None:
        pid = self.postmaster.pid()
        if pid is not None:
            raise ActionFailed(f"PostgreSQL (pid {pid}) is running on {self.data_dir}; refusing to replace it")

    def create_replica(self, leader: str | None, leader_conn_url: str | None,
                       methods: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Build the data directory by the create_replica_methods (or `methods`; without
        leader_conn_url only the ones marked no_leader), then start it as a replica."""
        pg = self.cfg.postgresql
        self.refuse_if_running()
        self.on_state(PgStatus.CREATING_REPLICA)
        conf.write_pgpass(self.cfg)
        connstring = None
        if leader_conn_url:
            host, port = conf.parse_conn_url(leader_conn_url)
            connstring = conf.dsn(host, port, pg.replication, pg.database)
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        builder = ReplicaBuilder(
            scope=self.cfg.scope, data_dir=self.data_dir, runner=self.group,
            basebackup=lambda: self._basebackup(leader or "", leader_conn_url or ""),
            empty=lambda: data_dir_empty(self.data_dir), clean=lambda: remove_contents(self.data_dir),
            cancelled=self.cancel.is_set, env=self.env)
        names = pg.create_replica_methods if methods is None else methods
        attempts = builder.build(names, pg.replica_methods, connstring, leader or "")
        if not attempts or not attempts[-1].ok:
            if self.cancel.is_set():
                raise ActionFailed("cancelled")
            why = "; ".join(f"{a.method}: {a.message}" for a in attempts) or "no method can work without a leader"
            raise ActionFailed(f"creating replica{f' from {leader}' if leader else ''} failed: {why}")
        restore.adopt_restored(self.cfg)
        return self.start_replica(leader, leader_conn_url)

    def _basebackup(self, leader: str, leader_conn_url: str) -> str | None:
        """pg_basebackup from the member at leader_conn_url, twice if need be; None, or why it failed."""
        pg = self.cfg.postgresql
        host, port = conf.parse_conn_url(leader_conn_url)
        source = conf.dsn(host, port, pg.replication, application_name=f"{self.cfg.name} basebackup")
        options = list(pg.basebackup) or ["--checkpoint=fast"]
        last = ""
        for attempt in range(2):
            if self.cancel.is_set():
                return "cancelled"
            if attempt:
                time.sleep(5)
            remove_contents(self.data_dir)
            try:
                self.run([self.bins.path("pg_basebackup"), f"--pgdata={self.data_dir}", "--wal-method=stream",
                          f"--dbname={source}", *options], timeout=None)
                return None
            except (CommandFailed, ActionFailed) as exc:
                last = str(exc)
                log.error("basebackup from %s failed: %s", leader, last)
        remove_contents(self.data_dir)
        return last

    def start_replica(self, leader: str | None, leader_conn_url: str | None) -> dict[str, Any]:
        self.write_config(leader, leader_conn_url, standby=True)
        self.on_state(PgStatus.STARTING)
        self.launch()
        return self.wait_ready(self.cfg.postgresql.pg_ctl_timeout)

    def start(self, as_primary: bool, leader: str | None, leader_conn_url: str | None) -> dict[str, Any]:
        if not as_primary:
            return self.start_replica(leader, leader_conn_url)
        self.write_config(None, None, standby=False)
        self.on_state(PgStatus.STARTING)
        self.launch()
        return self.wait_ready(self.cfg.postgresql.pg_ctl_timeout)

    def wait_received(self, lsn: int, timeout: float) -> None:
        """Wait until this replica has received WAL up to lsn (a switchover's hand-over point)."""
        prober = Prober(self.local_dsn(), timeout=2.0)
        deadline = time.monotonic() + timeout
        got: int | None = None
        try:
            while time.monotonic() < deadline:
                try:
                    r = prober.probe()
                    got = max(r.received_lsn or 0, r.replayed_lsn or 0)
                    if got >= lsn:
                        return
                except ProbeFailed:
                    pass
                time.sleep(0.02)
        finally:
            prober.close()
        raise ActionFailed(f"not promoting: received WAL up to {got}, the old leader wrote up to {lsn}")

    def demote(self) -> dict[str, Any]:
        """Hand over: checkpoint (so the stop is quick), stop fast, report the shutdown checkpoint's LSN."""
        self.on_state(PgStatus.DEMOTING)
        try:
            run_sql(self.local_dsn(), ["CHECKPOINT"], timeout=self.cfg.postgresql.pg_ctl_timeout)
        except Exception as exc:
            log.warning("checkpoint before switchover failed: %s", exc)
        self.stop("fast")
        cd = controldata(self.bins, self.data_dir)
        location = cd.get("Latest checkpoint location", "")
        try:
            hi, lo = location.split("/")
            lsn = (int(hi, 16) << 32) + int(lo, 16)
        except ValueError as exc:
            raise ActionFailed(f"cannot read the shutdown checkpoint location: {location!r}") from exc
        if cd.get("Database cluster state") != "shut down":
            raise ActionFailed(f"PostgreSQL did not shut down cleanly: {cd.get('Database cluster state')}")
        return {"checkpoint_lsn": lsn}

    def promote(self, require_lsn: int | None = None) -> dict[str, Any]:
        if require_lsn is not None:
            self.wait_received(require_lsn, timeout=5.0)
        self.on_state(PgStatus.PROMOTING)
        pg = self.cfg.postgresql
        if pg.pre_promote:
            # The operator's last word (a fencing script, say) before this node becomes writable; the
            # leader lock is ours meanwhile, refreshed by election while we are busy.
            hook = run_hook("pre_promote", pg.pre_promote, pg.callback_timeout, self.cancel)
            if not hook.ok:
                raise ActionFailed(f"the pre_promote script {hook.reason}: not promoting", {REFUSED_BY: PRE_PROMOTE})
            if self.cancel.is_set():
                raise ActionFailed("cancelled")
        try:
            run([self.bins.path("pg_ctl"), "promote", "-D", self.data_dir, "-w",
                 "-t", str(self.cfg.postgresql.pg_ctl_timeout)], timeout=self.cfg.postgresql.pg_ctl_timeout + 5,
                env=self.env())
        except CommandFailed as exc:
            raise ActionFailed(f"promote failed: {exc}") from exc
        # PostgreSQL removed standby.signal; drop the recovery settings too so a
        # later restart cannot turn us back into a replica of the old leader.
        self.write_config(None, None, standby=False)
        result = self.wait_ready(self.cfg.postgresql.pg_ctl_timeout)
        self.checkpoint()
        return result

    def checkpoint(self) -> None:
        """After a promotion: until a checkpoint records the new timeline in pg_control, pg_rewind
        on an old primary would see "same timeline" and skip a needed rewind."""
        try:
            run_sql(self.local_dsn(), ["CHECKPOINT"], timeout=self.cfg.postgresql.pg_ctl_timeout)
        except Exception as exc:
            log.warning("checkpoint after promote failed: %s", exc)

    def stop(self, mode: str, timeout: float | None = None, before_stop: bool = True) -> dict[str, Any]:
        self.on_state(PgStatus.STOPPING)
        return self._stop(mode, timeout, before_stop)

    def run_before_stop(self) -> None:
        """postgresql.before_stop, waited for (at most callback_timeout); its failure never blocks the stop."""
        pg = self.cfg.postgresql
        if pg.before_stop and self.postmaster.pid() is not None:
            run_hook("before_stop", pg.before_stop, pg.callback_timeout, self.cancel)

    def _stop(self, mode: str, timeout: float | None = None, before_stop: bool = True) -> dict[str, Any]:
        if before_stop:
            self.run_before_stop()
        elif self.cfg.postgresql.before_stop and self.postmaster.pid() is not None:
            # A primary that lost (or may lose) its lock, or a node whose supervisor is gone, must stop now:
            # waiting on a script could keep it writable past its lease (docs/design.md §4).
            log.warning("before_stop not run: this %s stop cannot wait for it", mode)
        budget = timeout if timeout is not None else self.cfg.postgresql.pg_ctl_timeout
        d = self.dynamic
        # primary_stop_timeout (synchronous mode only, as in Patroni): a primary whose stop hangs, say
        # on commits waiting for a standby that is gone, is killed rather than waited for.
        hard = d.synchronous_mode and d.primary_stop_timeout > 0 and mode != "immediate" \
            and not os.path.exists(os.path.join(self.data_dir, "standby.signal"))
        if hard:
            budget = min(budget, float(d.primary_stop_timeout))
        if self.postmaster.stop(mode, budget):
            return {"stopped": True}
        if mode != "immediate" and not hard:
            log.warning("PostgreSQL did not stop within %ss (%s); stopping immediately", budget, mode)
            if self.postmaster.stop("immediate", 10):
                return {"stopped": True}
        pid = self.postmaster.pid()
        log.error("PostgreSQL%s ignored stop requests; killing it", f" (pid {pid})" if pid is not None else "")
        # Also with the postmaster gone meanwhile: its orphaned backends may live on, and could still commit.
        result = self.postmaster.kill_all(pid)
        if not result.confirmed:
            raise ActionFailed(f"PostgreSQL could not be stopped: kill {result.reason}")
        log.warning("PostgreSQL killed: kill %s", result.reason)
        return {"stopped": True}

    def discard_data(self, why: str) -> None:
        """Empty the data directory so that election clones this replica afresh (never on a running server)."""
        self.refuse_if_running()
        log.warning("removing the data directory %s: %s (remove_data_directory_on_* is set)", self.data_dir, why)
        remove_contents(self.data_dir)
        raise ActionFailed(f"{why}: data directory removed, to be cloned again")

    def restart(self, timeout: float | None, leader: str | None, leader_conn_url: str | None) -> dict[str, Any]:
        """Stop fast and start again in the role PostgreSQL had, re-rendering its configuration."""
        self.on_state(PgStatus.RESTARTING)
        self._stop("fast")  # before_stop included, as for every fast stop
        standby = os.path.exists(os.path.join(self.data_dir, "standby.signal"))
        if standby and leader is None and self.following == REMOTE:  # a standby leader keeps its remote
            leader, leader_conn_url = self.following, self.following_url
        self.write_config(leader if standby else None, leader_conn_url if standby else None, standby)
        self.launch()
        return self.wait_ready(timeout if timeout is not None else self.cfg.postgresql.pg_ctl_timeout)

    def reinitialize(self, leader: str, leader_conn_url: str, from_leader: bool = False) -> dict[str, Any]:
        """Throw this replica's data away and build it again by the create_replica_methods, or, with
        from_leader, by pg_basebackup from the leader only (as Patroni's reinit --from-leader)."""
        if self.postmaster.pid() is not None:
            log.warning("reinitialize: stopping PostgreSQL (immediate) before removing its data directory")
            self.stop("immediate")
        self.refuse_if_running()
        remove_contents(self.data_dir)  # even for a keep_data method: a reinitialize starts from nothing
        return self.create_replica(leader, leader_conn_url, (BASEBACKUP,) if from_leader else None)

    def follow(self, leader: str | None, leader_conn_url: str | None, leader_timeline: int | None,
               running_role: str | None, force_rewind: bool = False) -> dict[str, Any]:
        if running_role == "primary" and leader == REMOTE:
            # demote-cluster: the lock stays ours, so nobody else can have written past us.  A clean stop
            # lets the walsenders hand everything we wrote to the standbys (the remote cluster included)
            # before we come back as a replica of the remote, with no rewind needed.
            log.info("demoting to a standby leader: checkpoint, then a clean (fast) stop")
            try:
                run_sql(self.local_dsn(), ["CHECKPOINT"], timeout=self.cfg.postgresql.pg_ctl_timeout)
            except Exception as exc:
                log.warning("checkpoint before demoting to a standby leader failed: %s", exc)
            self.stop("fast")
        elif running_role == "primary":
            log.info("demoting: stopping PostgreSQL (immediate) to rejoin as a replica of %s", leader)
            self.stop("immediate", before_stop=False)  # another node may lead already: no waiting
        elif force_rewind and running_role == "replica":
            log.warning("stopping the replica to rewind it: it cannot stream from %s", leader)
            self.stop("fast")
        if self.postmaster.pid() is not None:
            if leader != self.following and (leader is not None or running_role == "replica"):
                # leader None: stop streaming (a nostream member), without primary_conninfo.
                self.write_config(leader, leader_conn_url, standby=True)
                self.reload()
            return {"reloaded": True}
        if leader is not None and leader_conn_url:
            self.maybe_rewind(leader, leader_conn_url, leader_timeline)
        return self.start_replica(leader, leader_conn_url)

    def set_sync_standbys(self, setting: str) -> dict[str, Any]:
        """Run with this synchronous_standby_names from now on (a reload: no restart needed)."""
        self.sync_setting = setting
        if self.postmaster.pid() is not None and os.path.exists(os.path.join(self.data_dir, "PG_VERSION")):
            standby = os.path.exists(os.path.join(self.data_dir, "standby.signal"))
            self.write_config(self.following, self.following_url if standby else None, standby)
            self.reload()
            if not standby:
                self.nudge_standbys()
        return {"setting": setting}

    def resume_replay(self) -> dict[str, Any]:
        """Resume this replica's paused WAL replay (election asks: the cluster is not paused)."""
        log.info("resuming paused WAL replay")
        try:
            run_sql(self.local_dsn(), ["SELECT pg_catalog.pg_wal_replay_resume()"], timeout=10.0)
        except Exception as exc:  # not in recovery any more, or not answering: the next cycle looks again
            raise ActionFailed(f"resuming WAL replay failed: {(str(exc).splitlines() or [''])[0]}") from exc
        return {}

    def nudge_standbys(self) -> None:
        """Commits already waiting are released only when a standby next reports its position, and one
        that has everything reports again only after wal_receiver_status_interval: a little WAL (a
        transaction id, not waiting for anyone) makes them report now, under the new setting."""
        time.sleep(0.1)  # the walsenders apply the reload a moment after the signal
        try:
            run_sql(self.local_dsn(), ["SET synchronous_commit TO local", "SELECT pg_catalog.txid_current()"],
                    timeout=5)
        except Exception as exc:  # only a shortcut: the standbys report within the interval anyway
            log.info("could not write WAL after changing synchronous_standby_names: %s", exc)

    def apply_parameters(self) -> None:
        """Re-render the configuration of a running PostgreSQL and reload it (pending_restart shows the rest)."""
        if self.postmaster.pid() is None or not os.path.exists(os.path.join(self.data_dir, "PG_VERSION")):
            return
        standby = os.path.exists(os.path.join(self.data_dir, "standby.signal"))
        self.write_config(self.following, self.following_url if standby else None, standby)
        self.reload()
        log.info("configuration re-rendered and PostgreSQL reloaded")

    def reload(self) -> None:
        pid = self.postmaster.pid()
        if pid is not None:
            os.kill(pid, 1)  # SIGHUP: primary_conninfo is reloadable since PostgreSQL 13

    def maybe_rewind(self, leader: str, leader_conn_url: str, leader_timeline: int | None) -> None:
        cd = controldata(self.bins, self.data_dir)
        try:
            local_tl = int(cd.get("Latest checkpoint's TimeLineID", "0"))
        except ValueError:
            local_tl = 0
        pg = self.cfg.postgresql
        host, port = conf.parse_conn_url(leader_conn_url)
        conf.write_pgpass(self.cfg)
        source = conf.dsn(host, port, pg.rewind, pg.database, application_name=f"{self.cfg.name} rewind")
        # etcd's word (the leader's member key, /history) can lag a promotion by a cycle or more, Patroni's
        # always: an old primary that trusted it would start on its own diverged history, and stream nothing
        # until the stuck-replica rule rewound it, tens of seconds later.  So the leader is asked too; not a
        # standby leader's remote primary, which another cluster runs (its history is not ours to rewind to).
        asking = conf.dsn(host, port, pg.rewind, pg.database, application_name=f"{self.cfg.name} rewind",
                          passfile=pg.pgpass)
        live = ask_leader(leader, asking) if leader != REMOTE else None
        running = live.running if live is not None else None
        if running is not None and running > max(local_tl, leader_timeline or 0):
            log.info("%s writes on timeline %s, past ours (%s) and the %s etcd shows", leader, running, local_tl,
                     leader_timeline or "none")
        leader_timeline = max(leader_timeline or 0, running or 0) or None
        if not leader_timeline or local_tl >= leader_timeline:
            return
        use_rewind = pg.use_pg_rewind
        if use_rewind is None:
            use_rewind = self.dynamic.use_pg_rewind
        if not use_rewind:
            if pg.remove_data_directory_on_diverged_timelines:
                self.discard_data(f"timeline {local_tl} is behind the leader's {leader_timeline} and "
                                  "use_pg_rewind is off")
            log.warning("timeline %s is behind the leader's %s and use_pg_rewind is off; starting anyway",
                        local_tl, leader_timeline)
            return
        if live is not None and live.checkpoint_pending:
            # pg_rewind reads the source's pg_control: before the checkpoint it takes the old timeline for
            # the source's, rewinds to the wrong point, and leaves a data directory that cannot start.
            raise ActionFailed(f"waiting for a checkpoint on {leader} before rewind: it writes on timeline "
                               f"{live.running}, its pg_control still shows {live.checkpointed}")
        self.on_state(PgStatus.REWINDING)
        env = self.env()
        env["PGOPTIONS"] = "-c statement_timeout=0"
        try:
            out = self.run([self.bins.path("pg_rewind"), "-D", self.data_dir, f"--source-server={source}"],
                           timeout=None, env=env)
        except CommandFailed as exc:
            log.error("pg_rewind from %s failed: %s", leader, exc)
            if pg.remove_data_directory_on_rewind_failure:
                self.discard_data(f"pg_rewind from {leader} failed")
            return
        log.info("pg_rewind from %s: %s", leader, " | ".join(out.strip().splitlines()[-2:]))
        if "same timeline" in out:
            # The leader could not be asked above, and its pg_control does not show its new timeline yet
            # (no checkpoint since promotion): starting now would fork our history.
            raise ActionFailed(f"waiting for a checkpoint on {leader} before rewind")


def ask_leader(leader: str, source: str) -> LeaderTimelines | None:
    """The leader's timelines as it reports them; None when it cannot be asked (etcd's word is all there is)."""
    try:
        return leader_timelines(source, timeout=3.0)
    except Exception as exc:  # unreachable, or not answering yet
        log.info("could not ask %s for its timeline: %s", leader, (str(exc).strip().splitlines() or [""])[0])
        return None


def options_of(spec: UserSpec) -> tuple[str, ...]:
    allowed = {"createrole", "createdb", "replication", "superuser", "inherit", "login", "bypassrls",
               "nocreaterole", "nocreatedb", "noreplication", "nosuperuser", "noinherit", "nologin"}
    return tuple(o.upper() for o in spec.options if o.lower() in allowed)
