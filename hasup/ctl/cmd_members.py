"""Per-member actions through each member's REST API: restart, reload, reinit, flush."""

from __future__ import annotations

import random
import re
from typing import Any

import click

from hasup.ctl import views
from hasup.ctl.base import (
    Ctl,
    CtlError,
    cli,
    confirm,
    force_option,
    next_hour_example,
    parse_when,
    pass_ctl,
    role_option,
    show_members,
)
from hasup.ctl.rest import Response, RestError
from hasup.dcs.model import Cluster, Member

RESTART_TIMEOUT = 300.0  # an immediate restart answers once PostgreSQL is up again
PG_VERSION = re.compile(r"^\d+(\.\d+){1,2}$")


def choose(ctl: Ctl, cluster: Cluster, scope: str, names: tuple[str, ...], role: str | None, force: bool,
           action: str) -> list[Member]:
    """The members an action applies to: the named ones (filtered by role), else every member with the role."""
    with_role = views.members_with_role(cluster, role or "any")
    if not names and not with_role:
        raise CtlError(f"cluster {scope} has no member with role {role or 'any'}")
    if not force or role:
        show_members(ctl, cluster, scope)
    for name in names:
        if name not in cluster.members:
            raise CtlError(f"{name} is not a member of cluster {scope}")
    if names:
        chosen = [m for m in with_role if m.name in names]
        if not chosen:
            raise CtlError(f"no {role} among the members given")
        return chosen
    if action != "reinitialize":
        return with_role
    if force:
        raise CtlError("name the members to reinitialize")
    answer = click.prompt(f"Which member do you want to {action} [{', '.join(m.name for m in with_role)}]?",
                          type=str, default="")
    chosen = [m for m in with_role if m.name == answer]
    if not chosen:
        raise CtlError(f"{answer} is not a member of cluster {scope}")
    return chosen


def _failed(action: str, member: Member, resp: Response) -> str:
    return f"Failed: {action} for member {member.name}, status code={resp.status}, ({resp.message})"


def _call(ctl: Ctl, member: Member, method: str, endpoint: str, body: Any = None,
          timeout: float = 30.0) -> Response | None:
    try:
        return ctl.rest.request(member, method, endpoint, body, timeout=timeout)
    except RestError as exc:
        click.echo(f"Failed: {exc}")
        return None


def _finish(failures: int) -> None:
    if failures:
        raise CtlError(f"{failures} member(s) failed")


@cli.command()
@click.argument("cluster_name")
@click.argument("member_names", nargs=-1)
@role_option("any", "reload only members with this role")
@force_option
@pass_ctl
def reload(ctl: Ctl, cluster_name: str, member_names: tuple[str, ...], role: str, force: bool) -> None:
    """Make members re-read their configuration file (POST /reload)."""
    cluster = ctl.cluster(cluster_name)
    members = choose(ctl, cluster, cluster_name, member_names, role, force, "reload")
    confirm(f"Are you sure you want to reload members {', '.join(m.name for m in members)}?", force,
            "Aborted reload")
    failures = 0
    for m in members:
        resp = _call(ctl, m, "POST", "reload")
        if resp is not None and resp.status == 200:
            click.echo(f"No changes to apply on member {m.name}")
        elif resp is not None and resp.status == 202:
            click.echo(f"Reload request received for member {m.name} and will be processed within "
                       f"{ctl.loop_wait(cluster)} seconds")
        else:
            failures += 1
            if resp is not None:
                click.echo(_failed("reload", m, resp))
    _finish(failures)


def restart_body(pending: bool, pg_version: str | None, timeout: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if pending:
        body["restart_pending"] = True
    if pg_version:
        if not PG_VERSION.match(pg_version):
            raise CtlError(f"--pg-version: expected X.Y or X.Y.Z, got {pg_version!r}")
        body["postgres_version"] = pg_version
    if timeout:
        try:
            seconds = float(timeout.rstrip("s"))
        except ValueError:
            seconds = -1
        if seconds <= 0:
            raise CtlError(f"--timeout: expected a positive number of seconds, got {timeout!r}")
        body["timeout"] = int(seconds) if seconds.is_integer() else seconds
    return body


@cli.command()
@click.argument("cluster_name")
@click.argument("member_names", nargs=-1)
@role_option("any", "restart only members with this role")
@click.option("--any", "one", is_flag=True, help="restart one member picked at random")
@click.option("--scheduled", help="when: ISO 8601 time (local time without a timezone), or now")
@click.option("--pg-version", help="only members running PostgreSQL older than this (X.Y or X.Y.Z)")
@click.option("--pending", is_flag=True, help="only members with pending_restart set")
@click.option("--timeout", help="seconds PostgreSQL may take to start again")
@force_option
@pass_ctl
def restart(ctl: Ctl, cluster_name: str, member_names: tuple[str, ...], role: str, one: bool,
            scheduled: str | None, pg_version: str | None, pending: bool, timeout: str | None, force: bool) -> None:
    """Restart PostgreSQL on members (POST /restart), now or at a set time."""
    cluster = ctl.cluster(cluster_name)
    members = choose(ctl, cluster, cluster_name, member_names, role, force, "restart")
    body = restart_body(pending, pg_version, timeout)
    if scheduled is None and not force:
        scheduled = click.prompt(f"When should the restart take place (e.g. {next_hour_example()}) ",
                                 type=str, default="now")
    when = parse_when(scheduled)
    if when is not None:
        if cluster.paused:
            raise CtlError("Can't schedule restart in the paused state")
        body["schedule"] = when.isoformat()
    elif pending:  # a scheduled one is left to the member: what is pending may change until then
        members = [m for m in members if m.data.get("pending_restart")]
        if not members:
            click.echo("No member has a pending restart")
            return
    if one:
        members = [random.choice(members)]
    names = ", ".join(m.name for m in members)
    at = f" at {when.isoformat()}" if when is not None else ""
    confirm(f"Are you sure you want to restart members {names}{at}?", force, "Aborted restart")
    budget = RESTART_TIMEOUT + float(body.get("timeout", 0))
    failures = 0
    for m in members:
        if when is not None and force and m.data.get("scheduled_restart"):
            _call(ctl, m, "DELETE", "restart")  # --force replaces a restart scheduled before
        resp = _call(ctl, m, "POST", "restart", body, timeout=budget)
        if resp is None:
            failures += 1
        elif resp.status == 200:
            click.echo(f"Success: restart on member {m.name}")
        elif resp.status == 202:
            click.echo(f"Success: restart scheduled on member {m.name}")
        elif resp.status == 409:
            failures += 1
            click.echo(f"Failed: another restart is already scheduled on member {m.name}")
        else:
            failures += 1
            click.echo(_failed("restart", m, resp))
    _finish(failures)


def _state(ctl: Ctl, member: Member) -> tuple[str | None, str | None]:
    """(state, postmaster_start_time) from the member's /patroni; (None, None) when it does not answer."""
    try:
        body = ctl.rest.request(member, "GET", "patroni", timeout=5).json()
    except RestError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    return body.get("state"), body.get("postmaster_start_time")


def wait_reinitialized(ctl: Ctl, members: dict[str, tuple[Member, str | None]], poll: float = 1.0) -> None:
    """Until each member runs a PostgreSQL other than the one it ran before the request."""
    click.echo(f"Waiting for reinitialize to complete on: {', '.join(sorted(members))}")
    pending = dict(members)
    while pending:
        for name, (m, started_before) in list(pending.items()):
            state, started = _state(ctl, m)
            if state == "running" and started is not None and started != started_before:
                click.echo(f"Reinitialize is completed on: {name}")
                del pending[name]
        if pending:
            ctl.seams.sleep(poll)


@cli.command()
@click.argument("cluster_name")
@click.argument("member_names", nargs=-1)
@click.option("--from-leader", is_flag=True, help="take the base backup from the leader")
@click.option("--wait", is_flag=True, help="wait until the members run again")
@force_option
@pass_ctl
def reinit(ctl: Ctl, cluster_name: str, member_names: tuple[str, ...], from_leader: bool, wait: bool,
           force: bool) -> None:
    """Rebuild replicas from a fresh base backup (POST /reinitialize)."""
    cluster = ctl.cluster(cluster_name)
    members = choose(ctl, cluster, cluster_name, member_names, "replica", force, "reinitialize")
    confirm(f"Are you sure you want to reinitialize members {', '.join(m.name for m in members)}?", force,
            "Aborted reinitialize")
    started: dict[str, tuple[Member, str | None]] = {}
    failures = 0
    for m in members:
        before = _state(ctl, m)[1]
        body: dict[str, Any] = {"force": force}
        if from_leader:
            body["from_leader"] = True
        resp = _call(ctl, m, "POST", "reinitialize", body)
        if resp is not None and resp.status == 503 and "already in progress" in resp.message and not force \
                and click.confirm(f"{resp.message}. Do you want to cancel it and reinitialize anyway?"):
            resp = _call(ctl, m, "POST", "reinitialize", {**body, "force": True})
        if resp is not None and resp.status == 200:
            click.echo(f"Success: reinitialize for member {m.name}")
            started[m.name] = (m, before)
        else:
            failures += 1
            if resp is not None:
                click.echo(_failed("reinitialize", m, resp))
    if wait and started:
        wait_reinitialized(ctl, started)
    _finish(failures)


@cli.command()
@click.argument("cluster_name")
@click.argument("member_names", nargs=-1)
@click.argument("target", type=click.Choice(["restart", "switchover"]))
@role_option("any", "flush only members with this role")
@force_option
@pass_ctl
def flush(ctl: Ctl, cluster_name: str, member_names: tuple[str, ...], target: str, role: str, force: bool) -> None:
    """Drop a scheduled restart (of members) or the scheduled switchover."""
    cluster = ctl.cluster(cluster_name)
    if target == "restart":
        failures = 0
        for m in choose(ctl, cluster, cluster_name, member_names, role, force, "flush"):
            if not m.data.get("scheduled_restart"):
                continue
            resp = _call(ctl, m, "DELETE", "restart")
            if resp is not None and resp.status in (200, 404):
                click.echo(f"Success: flush scheduled restart for member {m.name}" if resp.status == 200
                           else f"Success: no scheduled restart on member {m.name}")
            else:
                failures += 1
                if resp is not None:
                    click.echo(_failed("flush scheduled restart", m, resp))
        _finish(failures)
        return
    for m in views.leader_first(cluster):
        resp = _call(ctl, m, "DELETE", "switchover")
        if resp is None:
            continue
        if resp.status in (200, 404):
            click.echo(f"Success: {resp.message}")
            return
        raise CtlError(f"flush switchover on member {m.name}: status code={resp.status}, ({resp.message})")
    if not ctl.store(cluster_name).clear_failover(cluster.failover_index or None):
        raise CtlError("the failover key changed meanwhile; try again")
    click.echo("Success: scheduled switchover cleared in etcd")
