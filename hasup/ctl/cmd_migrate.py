"""migrate-dcs: copy a paused cluster's keys to another etcd keyspace (the move from `etcd:` to `etcd3:`).

etcd's v2 and v3 keyspaces are disjoint, so a cluster moving to the v3 API (before etcd 3.6,
which has no v2) needs its keys in the new one.  Only the keys that outlive their writer are
copied: the leader and member keys are made by the nodes as they come back on the new section.
The cluster must be paused, so that nobody races for the lock in the new keyspace before the
primary's own node arrives there (docs/etcd.md, "Moving from v2 to v3").
"""

from __future__ import annotations

import click

from hasup.ctl.base import Ctl, CtlError, cli, force_option, pass_ctl
from hasup.ctl.settings import SettingsError, load_settings

# config first: a node pointed at the new keyspace early must see the pause before anything else.
COPIED = ("config", "initialize", "history", "status", "sync", "failsafe", "failover", "optime/leader")


@cli.command("migrate-dcs")
@click.argument("cluster_name", required=False)
@click.option("--to", "target", required=True, type=click.Path(exists=True, dir_okay=False),
              help="a hasup (or Patroni) YAML whose etcd3: (or etcd:) section names the keyspace to copy to")
@force_option
@pass_ctl
def migrate_dcs(ctl: Ctl, cluster_name: str | None, target: str, force: bool) -> None:
    """Copy a paused cluster's keys to another etcd keyspace (e.g. from etcd: to etcd3:)."""
    scope = ctl.scope(cluster_name)
    source = ctl.cluster(scope)
    if source.initialize is None and source.config is None:
        raise CtlError(f"cluster {scope!r} has no keys at {ctl.etcd_where()} ({ctl.settings.etcd.section})")
    if not source.paused:
        raise CtlError(f"pause the cluster first (hasupctl pause {scope} --wait): nodes started on the new "
                       "keyspace must not race for the lock before the primary's node moves")
    try:
        settings = load_settings(target, None, ctl.insecure, env={})
    except SettingsError as exc:
        raise CtlError(f"--to {target}: {exc}") from None
    if (settings.etcd, settings.namespace) == (ctl.settings.etcd, ctl.settings.namespace):
        raise CtlError(f"--to {target} names the keyspace the cluster is in already")
    where = ", ".join(f"{h}:{p}" for h, p in settings.etcd.hosts) + f" ({settings.etcd.section})"
    dest = ctl.seams.store(settings, scope)
    present = dest.read_raw()
    if present and not force:
        raise CtlError(f"cluster {scope!r} already has {len(present)} keys at {where}; "
                       "--force overwrites them")
    raw = ctl.store(scope).read_raw()
    copied = [rel for rel in COPIED if rel in raw]
    for rel in copied:
        dest.put_raw(rel, raw[rel])
    click.echo(f"Copied {', '.join(copied)} of cluster {scope} from {ctl.etcd_where()} "
               f"({ctl.settings.etcd.section}) to {where}.")
    click.echo("Next: point each node at the new section and restart it, replicas first and the leader last "
               f"(each keeps PostgreSQL running while paused); then: hasupctl resume {scope}")
