"""Read-only commands: list, topology, history, show-config, dsn, version."""

from __future__ import annotations

import click

from hasup import __version__
from hasup.ctl import output, views
from hasup.ctl.base import (
    Ctl,
    CtlError,
    cli,
    echo_lines,
    format_option,
    pass_ctl,
    role_option,
    show_members,
    timestamp,
    watch_options,
    watching,
)
from hasup.ctl.editing import as_yaml
from hasup.ctl.rest import RestError
from hasup.dcs.model import Cluster, Member


@cli.command(name="list")
@click.argument("cluster_names", nargs=-1)
@click.option("-e", "--extended", is_flag=True,
              help="always show pending restarts, scheduled restarts and tags")
@click.option("-t", "--timestamp", "ts", is_flag=True, help="print a timestamp first")
@format_option
@watch_options
@pass_ctl
def list_members(ctl: Ctl, cluster_names: tuple[str, ...], extended: bool, ts: bool, fmt: str | None,
                 watch: float | None, watch_2s: bool, watch_count: int | None) -> None:
    """Show the members: host, role, state, timeline, lag in MB, pending restart, tags."""
    scopes = list(cluster_names) or [ctl.scope(None)]
    for _ in watching(watch, watch_2s, watch_count):
        if ts:
            click.echo(timestamp())
        for scope in scopes:
            show_members(ctl, ctl.cluster(scope), scope, ctl.format(fmt), extended)


@cli.command()
@click.argument("cluster_names", nargs=-1)
@watch_options
@pass_ctl
def topology(ctl: Ctl, cluster_names: tuple[str, ...], watch: float | None, watch_2s: bool,
             watch_count: int | None) -> None:
    """Like list, with each replica under the member it replicates from."""
    scopes = list(cluster_names) or [ctl.scope(None)]
    for _ in watching(watch, watch_2s, watch_count):
        for scope in scopes:
            show_members(ctl, ctl.cluster(scope), scope, nested=True)


@cli.command()
@click.argument("cluster_name", required=False)
@format_option
@pass_ctl
def history(ctl: Ctl, cluster_name: str | None, fmt: str | None) -> None:
    """Show the timeline history: failovers and switchovers."""
    scope = ctl.scope(cluster_name)
    cluster = ctl.cluster(scope)
    echo_lines(output.render(views.HISTORY_COLUMNS, views.history_rows(cluster), ctl.format(fmt),
                             right=("TL", "LSN")))


@cli.command(name="show-config")
@click.argument("cluster_name", required=False)
@pass_ctl
def show_config(ctl: Ctl, cluster_name: str | None) -> None:
    """Print the dynamic configuration (the config key) as YAML."""
    scope = ctl.scope(cluster_name)
    cluster = ctl.cluster(scope)
    if cluster.config is None:
        raise CtlError(f"the config key does not exist in cluster {scope}")
    click.echo(as_yaml(cluster.config), nl=False)


def pick_member(cluster: Cluster, scope: str, role: str | None, member: str | None) -> Member:
    """One member by name, else the first with the role (default: the leader)."""
    if role and member:
        raise CtlError("--role and --member are mutually exclusive options")
    if member:
        found = cluster.members.get(member)
        if found is None:
            raise CtlError(f"{member} is not a member of cluster {scope}")
        return found
    chosen = views.members_with_role(cluster, role or "leader")
    if not chosen:
        raise CtlError(f"cluster {scope} has no member with role {role or 'leader'}")
    return chosen[0]


@cli.command()
@click.argument("cluster_name", required=False)
@role_option(None, "the first member with this role (default: the leader)")
@click.option("-m", "--member", help="this member")
@pass_ctl
def dsn(ctl: Ctl, cluster_name: str | None, role: str | None, member: str | None) -> None:
    """Print a libpq connection string for the leader, or a member chosen by role or name."""
    scope = ctl.scope(cluster_name)
    chosen = pick_member(ctl.cluster(scope), scope, role, member)
    text = views.dsn(chosen)
    if not text:
        raise CtlError(f"member {chosen.name} publishes no conn_url")
    click.echo(text)


def pg_version(number: object) -> str:
    """150018 -> 15.18, 90624 -> 9.6.24."""
    if not isinstance(number, int) or number <= 0:
        return "unknown"
    if number >= 100000:
        return f"{number // 10000}.{number % 10000}"
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


@cli.command()
@click.argument("cluster_name", required=False)
@click.argument("member_names", nargs=-1)
@pass_ctl
def version(ctl: Ctl, cluster_name: str | None, member_names: tuple[str, ...]) -> None:
    """Print the version of hasupctl, and with CLUSTER_NAME of each member."""
    click.echo(f"hasupctl version {__version__}")
    if not cluster_name:
        return
    cluster = ctl.cluster(cluster_name)
    click.echo("")
    for m in views.sorted_members(cluster):
        if member_names and m.name not in member_names:
            continue
        ours = m.data.get("hasup_version")
        server = f"hasup {ours} (Patroni {m.data.get('version')})" if ours else f"Patroni {m.data.get('version')}"
        try:
            status = ctl.rest.request(m, "GET", "patroni", timeout=5).json()
        except RestError as exc:
            click.echo(f"{m.name}: failed to get the version: {exc}")
            continue
        pg = pg_version(status.get("server_version") if isinstance(status, dict) else None)
        click.echo(f"{m.name}: {server} PostgreSQL {pg}")
