"""hasupctl: operate a hasup (or Patroni) cluster from a shell, in the spirit of patronictl."""

from __future__ import annotations

import json
import os
import sys
from typing import Any
from urllib.parse import urlparse

import click
import yaml

from hasup import __version__
from hasup.config import ConfigError, EtcdConfig, load_config
from hasup.dcs.etcd import DCSError, EtcdStore
from hasup.dcs.model import Cluster

MB = 1024 * 1024


class Context:
    def __init__(self, store: EtcdStore, scope: str | None, fmt: str) -> None:
        self.store = store
        self.scope = scope
        self.fmt = fmt


def fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def store_from(config_file: str | None, dcs_url: str | None, scope: str | None) -> tuple[EtcdStore, str | None]:
    namespace = "service"
    if config_file:
        try:
            cfg, _ = load_config(config_file)
        except ConfigError as exc:
            fail("; ".join(exc.problems))
            raise AssertionError from None
        return EtcdStore(cfg.etcd, cfg.namespace, scope or cfg.scope), scope or cfg.scope
    url = dcs_url or os.environ.get("DCS_URL") or "etcd://127.0.0.1:2379"
    if "://" not in url:
        url = "etcd://" + url
    u = urlparse(url)
    if u.scheme not in ("etcd", "http", "https"):
        fail(f"--dcs-url: hasupctl speaks to etcd (v2) only, got {u.scheme!r}")
    if u.path.strip("/"):
        namespace = u.path.strip("/")
    etcd = EtcdConfig(((u.hostname or "127.0.0.1", u.port or 2379),), "https" if u.scheme == "https" else "http")
    return EtcdStore(etcd, namespace, scope or ""), scope


@click.group()
@click.option("-c", "--config-file", "config_file", envvar="PATRONICTL_CONFIG_FILE", type=click.Path(),
              help="a node's hasup (Patroni) YAML; its etcd and scope are used")
@click.option("-d", "--dcs-url", "dcs_url", help="etcd://host:port[/namespace]")
@click.option("-f", "--format", "fmt", type=click.Choice(["pretty", "json", "yaml", "tsv"]), default="pretty")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, dcs_url: str | None, fmt: str) -> None:
    """Operate a hasup cluster."""
    ctx.obj = (config_file, dcs_url, fmt)


def open_cluster(ctx: click.Context, scope: str | None) -> tuple[Context, Cluster]:
    config_file, dcs_url, fmt = ctx.obj
    store, scope = store_from(config_file, dcs_url, scope)
    if not scope:
        fail("no cluster name: give CLUSTER_NAME or -c CONFIG")
    try:
        cluster = store.get_cluster()
    except DCSError as exc:
        fail(str(exc))
        raise AssertionError from None
    return Context(store, scope, fmt), cluster


def member_rows(cluster: Cluster) -> list[dict[str, Any]]:
    leader = cluster.leader.name if cluster.leader else None
    rows = []
    for name, m in sorted(cluster.members.items()):
        hp = m.host_port
        role = "Leader" if name == leader else "Replica"
        lag: Any = ""
        if name != leader:
            if cluster.optime is not None and "xlog_location" in m.data:
                lag = max(0, cluster.optime - m.wal_position) // MB
            else:
                lag = "unknown"
        rows.append({
            "Member": name,
            "Host": f"{hp[0]}:{hp[1]}" if hp else "",
            "Role": role,
            "State": m.data.get("replication_state") if name != leader and m.data.get("replication_state")
            else m.state,
            "TL": m.timeline if m.timeline is not None else "",
            "Lag in MB": lag,
            "Pending restart": "*" if m.data.get("pending_restart") else "",
            "Tags": m.tags or "",
        })
    return rows


def print_table(title: str, rows: list[dict[str, Any]], fmt: str, optional: tuple[str, ...] = ()) -> None:
    if fmt == "json":
        click.echo(json.dumps(rows))
        return
    if fmt == "yaml":
        click.echo(yaml.safe_dump(rows, sort_keys=False), nl=False)
        return
    if not rows:
        click.echo(f"+ {title} +")
        return
    columns = [c for c in rows[0] if c not in optional or any(r[c] not in ("", None) for r in rows)]
    cells = [[c for c in columns]] + [[_cell(r[c]) for c in columns] for r in rows]
    if fmt == "tsv":
        for line in cells:
            click.echo("\t".join(line))
        return
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    click.echo(("+ " + title + " ").ljust(len(sep) - 1, "-") + "+")
    for i, line in enumerate(cells):
        click.echo("| " + " | ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) + " |")
        if i == 0:
            click.echo(sep)
    click.echo(sep)


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


@cli.command(name="list")
@click.argument("cluster_name", required=False)
@click.pass_context
def list_members(ctx: click.Context, cluster_name: str | None) -> None:
    """Show the members of a cluster."""
    c, cluster = open_cluster(ctx, cluster_name)
    sysid = cluster.initialize or ("initializing" if cluster.initialize == "" else "uninitialized")
    title = f"Cluster: {c.scope} ({sysid})"
    print_table(title, member_rows(cluster), c.fmt, optional=("Pending restart", "Tags"))
    if c.fmt == "pretty" and cluster.paused:
        click.echo(" Maintenance mode: on")


@cli.command()
@click.argument("cluster_name", required=False)
@click.pass_context
def history(ctx: click.Context, cluster_name: str | None) -> None:
    """Show the timeline history."""
    c, cluster = open_cluster(ctx, cluster_name)
    rows = []
    for e in cluster.history:
        e = list(e) + [""] * (5 - len(e))
        rows.append({"TL": e[0], "LSN": e[1], "Reason": e[2], "Timestamp": e[3], "New Leader": e[4]})
    print_table(f"Cluster: {c.scope}", rows, c.fmt)


@cli.command(name="show-config")
@click.argument("cluster_name", required=False)
@click.pass_context
def show_config(ctx: click.Context, cluster_name: str | None) -> None:
    """Print the dynamic configuration."""
    _c, cluster = open_cluster(ctx, cluster_name)
    click.echo(yaml.safe_dump(cluster.config or {}, default_flow_style=False), nl=False)


@cli.command()
def version() -> None:
    """Print hasupctl's version."""
    click.echo(f"hasupctl version {__version__}")


def main() -> None:
    cli(prog_name="hasupctl")
