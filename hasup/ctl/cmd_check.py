"""check: is the cluster ready for the next step of a migration (docs/migration.md)."""

from __future__ import annotations

import click

from hasup.ctl import output
from hasup.ctl.base import Ctl, CtlError, cli, echo_lines, format_option, pass_ctl
from hasup.ctl.readiness import readiness

COLUMNS = ["Member", "Runs", "Role", "Lease protection", "Ready"]


@cli.command()
@click.argument("cluster_name", required=False)
@click.option("--members", "expected", type=click.IntRange(1, 1000), default=None,
              help="how many members the cluster should have")
@click.option("--max-lag", "max_lag", type=click.FloatRange(0, 1e9), default=1.0, show_default=True,
              help="MB a replica may be behind the leader's last published position")
@format_option
@pass_ctl
def check(ctl: Ctl, cluster_name: str | None, expected: int | None, max_lag: float, fmt: str | None) -> None:
    """Exit 0 when every member runs and streams, caught up, before the next migration step; shows what
    each member runs and which protection holds a hasup node's lease (device, software fence, none)."""
    scope = ctl.scope(cluster_name)
    checks, problems = readiness(ctl.cluster(scope), expected, max_lag)
    rows = [[c.name, c.kind, c.role, c.protection, c.problem or "yes"] for c in checks]
    echo_lines(output.render(COLUMNS, rows, ctl.format(fmt)))
    problems += [f"{c.name}: {c.problem}" for c in checks if c.problem]
    if problems:
        raise CtlError("not ready: " + "; ".join(problems))
    click.echo(f"Ready: {len(checks)} members, every replica streaming within {max_lag:g} MB of the leader")
