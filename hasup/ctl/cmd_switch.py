"""switchover and failover: ask the leader (or, without one, the candidate) through POST /switchover or /failover."""

from __future__ import annotations

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
    show_members,
    timestamp,
)
from hasup.ctl.rest import RestError
from hasup.dcs.model import Cluster


def _check_leader(cluster: Cluster, scope: str, leader: str | None, force: bool) -> str:
    current = cluster.leader.name if cluster.leader else None
    if not current:
        raise CtlError("This cluster has no leader")
    if leader is None:
        prompt = "Standby Leader" if views.is_standby_cluster(cluster) else "Primary"
        leader = current if force else click.prompt(prompt, type=str, default=current)
    if leader != current:
        raise CtlError(f"Member {leader} is not the leader of cluster {scope}")
    return leader


def _check_candidate(cluster: Cluster, scope: str, action: str, candidate: str | None, force: bool) -> str | None:
    current = cluster.leader.name if cluster.leader else None
    names = sorted(n for n, m in cluster.members.items() if n != current and not m.nofailover)
    if not names:
        raise CtlError(f"No candidates found to {action} to")
    if candidate is None and not force:
        candidate = click.prompt(f"Candidate {names}", type=str, default="", show_default=False) or None
    if action == "failover" and not candidate:
        raise CtlError("Failover could be performed only to a specific candidate")
    if candidate and candidate not in names:
        if candidate == current:
            raise CtlError(f"Member {candidate} is already the leader of cluster {scope}")
        raise CtlError(f"Member {candidate} does not exist in cluster {scope} or is tagged as nofailover")
    sync = views.sync_names(cluster)
    if action == "failover" and sync and candidate not in sync:
        confirm(f"Are you sure you want to failover to the asynchronous node {candidate}?", force,
                f"Aborting {action}")
    return candidate


def switch(ctl: Ctl, action: str, cluster_name: str | None, candidate: str | None, force: bool,
           leader: str | None = None, scheduled: str | None = None) -> None:
    scope = ctl.scope(cluster_name)
    cluster = ctl.cluster(scope)
    click.echo("Current cluster topology")
    show_members(ctl, cluster, scope)
    if action == "switchover":
        leader = _check_leader(cluster, scope, leader, force)
    candidate = _check_candidate(cluster, scope, action, candidate, force)
    when = None
    if action == "switchover":
        if scheduled is None and not force:
            scheduled = click.prompt(f"When should the switchover take place (e.g. {next_hour_example()}) ",
                                     type=str, default="now")
        when = parse_when(scheduled)
        if when is not None and cluster.paused:
            raise CtlError("Can't schedule switchover in the paused state")
    body: dict[str, Any] = {}
    if candidate:
        body["candidate"] = candidate
    if leader:
        body["leader"] = leader
    if when is not None:
        body["scheduled_at"] = when.isoformat()
    current = cluster.leader.name if cluster.leader else None
    demoting = f", demoting current leader {current}" if current else ""
    if when is not None:
        confirm(f"Are you sure you want to schedule switchover of cluster {scope} at {when.isoformat()}{demoting}?",
                force, f"Aborting scheduled {action}")
    else:
        confirm(f"Are you sure you want to {action} cluster {scope}{demoting}?", force, f"Aborting {action}")

    target = cluster.leader_member() if cluster.leader else cluster.members.get(candidate or "")
    # The leader polls etcd for up to 2 * max(10, loop_wait) s before it answers (docs/rest-api.md, "Switchover
    # and failover").
    budget = 2 * max(10, ctl.loop_wait(cluster)) + 15
    try:
        if target is None:
            raise RestError("no member to ask")
        resp = ctl.rest.request(target, "POST", action, body, timeout=budget)
    except RestError as exc:
        click.echo(f"{timestamp()} Could not {action} using the REST API ({exc}); writing the request to etcd")
        request = {k: v for k, v in (("leader", leader), ("member", candidate),
                                     ("scheduled_at", body.get("scheduled_at"))) if v}
        ctl.store(scope).set_failover(request)
    else:
        if resp.status not in (200, 202):
            raise CtlError(f"{action.title()} failed, details: {resp.status}, {resp.message}")
        click.echo(f"{timestamp()} {resp.message}")
    show_members(ctl, ctl.cluster(scope), scope)


@cli.command()
@click.argument("cluster_name", required=False)
@click.option("--leader", "--primary", "leader", help="the current leader")
@click.option("--candidate", help="the member to promote (default: the healthiest)")
@click.option("--scheduled", help="when: ISO 8601 time (local time without a timezone), or now")
@force_option
@pass_ctl
def switchover(ctl: Ctl, cluster_name: str | None, leader: str | None, candidate: str | None,
               scheduled: str | None, force: bool) -> None:
    """Hand the leader role over to a healthy replica, now or at a set time."""
    switch(ctl, "switchover", cluster_name, candidate, force, leader, scheduled)


@cli.command()
@click.argument("cluster_name", required=False)
@click.option("--leader", "--primary", "leader", hidden=True, help="the current leader (makes it a switchover)")
@click.option("--candidate", help="the member to promote")
@force_option
@pass_ctl
def failover(ctl: Ctl, cluster_name: str | None, leader: str | None, candidate: str | None, force: bool) -> None:
    """Promote a named replica, even when the cluster has no healthy leader."""
    if leader:
        click.echo("Warning: failover with --leader is a switchover", err=True)
        switch(ctl, "switchover", cluster_name, candidate, force, leader, "now")
        return
    switch(ctl, "failover", cluster_name, candidate, force)
