"""remove: delete every etcd key of a cluster, after the operator has typed its name (and its leader's)."""

from __future__ import annotations

import click

from hasup.ctl.base import Ctl, CtlError, cli, format_option, pass_ctl, show_members

AWARE = "Yes I am aware"


@cli.command()
@click.argument("cluster_name")
@format_option
@pass_ctl
def remove(ctl: Ctl, cluster_name: str, fmt: str | None) -> None:
    """Remove a cluster's keys from etcd (the nodes and their data are left alone)."""
    cluster = ctl.cluster(cluster_name)
    show_members(ctl, cluster, cluster_name, ctl.format(fmt))
    typed = click.prompt("Please confirm the cluster name to remove", type=str)
    if typed != cluster_name:
        raise CtlError("the cluster name typed does not match; nothing removed")
    typed = click.prompt(f'You are about to remove all information in etcd for {cluster_name}, please type: "{AWARE}"',
                         type=str)
    if typed != AWARE:
        raise CtlError(f'you did not type "{AWARE}" exactly; nothing removed')
    if cluster.leader is not None:
        typed = click.prompt("This cluster currently has a leader. Please type the leader's name to continue",
                             type=str)
        if typed != cluster.leader.name:
            raise CtlError("that is not the current leader of the cluster; nothing removed")
    ctl.store(cluster_name).delete_cluster()
    click.echo(f"Cluster {cluster_name} removed from etcd")
