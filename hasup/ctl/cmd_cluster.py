"""demote-cluster and promote-cluster: turn a primary cluster into a standby cluster and back.

Both write `standby_cluster` into the dynamic configuration through the leader's PATCH /config and
then watch the leader's member key until it shows the new role, as patronictl does: a demoted
cluster's leader keeps the lock as its standby leader (role standby_leader), a promoted one's standby
leader becomes the primary.
"""

from __future__ import annotations

from typing import Any

import click

from hasup.ctl.base import Ctl, CtlError, cli, confirm, force_option, pass_ctl, show_members, timestamp
from hasup.ctl.rest import RestError
from hasup.dcs.model import Cluster


def _settled(cluster: Cluster, target_role: str, old_leader: str, demote: bool) -> bool:
    leader = cluster.leader_member() if cluster.leader else None
    if leader is None or leader.data.get("role") != target_role or leader.state != "running":
        return False
    if not demote:
        return True
    old = cluster.members.get(old_leader)
    return old is not None and old.state == "running"


def _progress(cluster: Cluster, old_leader: str, demote: bool) -> str:
    leader = cluster.leader_member() if cluster.leader else None
    parts = [f"{timestamp()} cluster is unlocked: {cluster.leader is None}",
             f"leader role: {leader.data.get('role') if leader else None}",
             f"leader state: {leader.state if leader else None}"]
    old = cluster.members.get(old_leader)
    if demote and cluster.leader is not None and cluster.leader.name != old_leader and old is not None:
        parts.append(f"previous leader state: {old.state!r}")
    return ", ".join(parts)


def change_cluster_role(ctl: Ctl, cluster_name: str | None, force: bool, standby: dict[str, Any] | None,
                        timeout: float | None) -> None:
    demote = standby is not None
    verb = "demot" if demote else "promot"
    target_role = "standby_leader" if demote else "primary"
    scope = ctl.scope(cluster_name)
    cluster = ctl.cluster(scope)
    leader = cluster.leader_member() if cluster.leader else None
    if cluster.leader is None or leader is None:
        raise CtlError(f"Cluster has no leader, {verb}ion is not possible")
    if leader.data.get("role") == target_role:
        raise CtlError("Cluster is already in the required state")
    click.echo("Current cluster topology")
    show_members(ctl, cluster, scope)
    confirm(f"Are you sure you want to {verb}e {scope} cluster?", force, f"Aborted cluster {verb}ion")
    try:
        resp = ctl.rest.request(leader, "PATCH", "config", {"standby_cluster": standby})
    except RestError as exc:
        raise CtlError(f"Failed to {verb}e {scope} cluster: {exc}") from None
    if resp.status != 200:
        raise CtlError(f"Failed to {verb}e {scope} cluster: /config PATCH status code={resp.status}, "
                       f"({resp.message})")
    deadline = ctl.seams.clock() + timeout if timeout is not None else None
    while True:
        cluster = ctl.cluster(scope)
        if _settled(cluster, target_role, leader.name, demote):
            click.echo(f"{timestamp()} cluster is successfully {verb}ed")
            break
        click.echo(_progress(cluster, leader.name, demote))
        if deadline is not None and ctl.seams.clock() > deadline:
            show_members(ctl, cluster, scope)
            raise CtlError(f"the cluster was not {verb}ed within {timeout:g} seconds")
        ctl.seams.sleep(1.0)
    show_members(ctl, cluster, scope)


@cli.command("demote-cluster")
@click.argument("cluster_name", required=False)
@force_option
@click.option("--host", help="address of the remote node")
@click.option("--port", type=click.IntRange(1, 65535), help="port of the remote node")
@click.option("--restore-command", help="command to restore WAL records from the remote primary")
@click.option("--primary-slot-name", help="name of the slot on the remote node to use for replication")
@click.option("--timeout", type=click.FloatRange(min=0), help="give up waiting after this many seconds "
              "(hasup's own; default: wait until done, as patronictl)")
@pass_ctl
def demote_cluster(ctl: Ctl, cluster_name: str | None, force: bool, host: str | None, port: int | None,
                   restore_command: str | None, primary_slot_name: str | None, timeout: float | None) -> None:
    """Demote cluster to a standby cluster: its leader follows the remote node as standby leader."""
    if not any((host, port, restore_command)):
        raise CtlError("At least --host, --port or --restore-command should be specified")
    standby = {k: v for k, v in (("host", host), ("port", port), ("primary_slot_name", primary_slot_name),
                                 ("restore_command", restore_command)) if v}
    change_cluster_role(ctl, cluster_name, force, standby, timeout)


@cli.command("promote-cluster")
@click.argument("cluster_name", required=False)
@force_option
@click.option("--timeout", type=click.FloatRange(min=0), help="give up waiting after this many seconds "
              "(hasup's own; default: wait until done, as patronictl)")
@pass_ctl
def promote_cluster(ctl: Ctl, cluster_name: str | None, force: bool, timeout: float | None) -> None:
    """Promote cluster, make it run standalone: its standby leader becomes the primary."""
    change_cluster_role(ctl, cluster_name, force, None, timeout)
