"""The dynamic configuration: pause, resume (PATCH /config on a member) and edit-config (etcd, compare-and-swap)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile

import click

from hasup.api.admin import config_problems
from hasup.ctl import views
from hasup.ctl.base import Ctl, CtlError, cli, force_option, pass_ctl
from hasup.ctl.editing import (
    EditError,
    as_yaml,
    diff_lines,
    merge_yaml,
    parse_yaml_mapping,
    pg_pairs,
    set_values,
)
from hasup.ctl.rest import RestError
from hasup.dcs.model import Cluster


def wait_for_pause(ctl: Ctl, scope: str, paused: bool, before: Cluster, poll: float = 0.5) -> None:
    """Until every member that was there publishes the new pause flag in its member key."""
    word = "pause" if paused else "resume"
    click.echo(f"'{word}' request sent, waiting until it is recognized by all nodes")
    names = {m.name for m in views.leader_first(before)}
    # Members rewrite their keys every loop_wait; give them two turns and a margin.
    budget = 2 * ctl.loop_wait(before) + 5
    deadline = ctl.seams.clock() + budget
    while True:
        cluster = ctl.cluster(scope)
        remaining = sorted(n for n in names
                           if n in cluster.members and bool(cluster.members[n].data.get("pause")) != paused)
        if not remaining:
            click.echo(f"Success: cluster management is {'paused' if paused else 'resumed'}")
            return
        if ctl.seams.clock() > deadline:
            raise CtlError(f"{', '.join(remaining)} did not recognize the {word} within {budget} seconds")
        ctl.seams.sleep(poll)


def toggle_pause(ctl: Ctl, cluster_name: str | None, paused: bool, wait: bool) -> None:
    scope = ctl.scope(cluster_name)
    cluster = ctl.cluster(scope)
    if cluster.paused == paused:
        raise CtlError("Cluster is already paused" if paused else "Cluster is not paused")
    for m in views.leader_first(cluster):
        try:
            resp = ctl.rest.request(m, "PATCH", "config", {"pause": True if paused else None})
        except RestError as exc:
            click.echo(f"Warning: {exc}; trying the next member", err=True)
            continue
        if resp.status != 200:
            raise CtlError(f"{'pause' if paused else 'resume'} cluster management failed: status code={resp.status}, "
                           f"({resp.message})")
        if wait:
            wait_for_pause(ctl, scope, paused, cluster)
        else:
            click.echo(f"Success: cluster management is {'paused' if paused else 'resumed'}")
        return
    raise CtlError("Can not find accessible cluster member")


@cli.command()
@click.argument("cluster_name", required=False)
@click.option("--wait", is_flag=True, help="wait until every member is paused")
@pass_ctl
def pause(ctl: Ctl, cluster_name: str | None, wait: bool) -> None:
    """Maintenance mode: no automatic failover, PostgreSQL left alone."""
    toggle_pause(ctl, cluster_name, True, wait)


@cli.command()
@click.argument("cluster_name", required=False)
@click.option("--wait", is_flag=True, help="wait until every member has resumed")
@pass_ctl
def resume(ctl: Ctl, cluster_name: str | None, wait: bool) -> None:
    """Leave maintenance mode."""
    toggle_pause(ctl, cluster_name, False, wait)


def find_editor() -> list[str]:
    for candidate in (os.environ.get("EDITOR"), "editor", "vi"):
        if candidate and shutil.which(shlex.split(candidate)[0]):
            return shlex.split(candidate)
    raise CtlError("no editor found: set $EDITOR")


def edit_in_editor(text: str, scope: str) -> str:
    editor = find_editor()
    fd, path = tempfile.mkstemp(prefix=f"{scope}-config-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        code = subprocess.call([*editor, path])
        if code != 0:
            raise CtlError(f"the editor {editor[0]} exited with status {code}; nothing changed")
        with open(path) as f:
            return f.read()
    finally:
        os.unlink(path)


def _read_source(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        with open(name) as f:
            return f.read()
    except OSError as exc:
        raise CtlError(f"cannot read {name}: {exc.strerror}") from None


def _echo_diff(before: str, after: str) -> None:
    color = sys.stdout.isatty()
    for line in diff_lines(before, after):
        fg = "green" if line.startswith("+") else "red" if line.startswith("-") else None
        click.echo(click.style(line, fg=fg) if color and fg else line)


@cli.command(name="edit-config")
@click.argument("cluster_name", required=False)
@click.option("-q", "--quiet", is_flag=True, help="do not show the diff")
@click.option("-s", "--set", "pairs", multiple=True, metavar="KEY=VALUE",
              help="set a dotted key to a YAML value (null removes it)")
@click.option("-p", "--pg", "pg", multiple=True, metavar="NAME=VALUE",
              help="set postgresql.parameters.NAME")
@click.option("--apply", "apply_file", metavar="FILE", help="merge this YAML file over the configuration (- for stdin)")
@click.option("--replace", "replace_file", metavar="FILE",
              help="replace the configuration with this YAML (- for stdin)")
@force_option
@pass_ctl
def edit_config(ctl: Ctl, cluster_name: str | None, quiet: bool, pairs: tuple[str, ...], pg: tuple[str, ...],
                apply_file: str | None, replace_file: str | None, force: bool) -> None:
    """Change the dynamic configuration: in $EDITOR, or with --set/--pg/--apply/--replace."""
    scope = ctl.scope(cluster_name)
    cluster = ctl.cluster(scope)
    if cluster.config is None:
        raise CtlError(f"The config key does not exist in the cluster {scope}")
    before = as_yaml(cluster.config)
    changed = dict(cluster.config)
    try:
        if replace_file:
            changed = parse_yaml_mapping(_read_source(replace_file), replace_file)
        if apply_file:
            changed = merge_yaml(changed, _read_source(apply_file), apply_file)
        if pairs or pg:
            changed = set_values(changed, list(pairs) + pg_pairs(pg))
        if not (replace_file or apply_file or pairs or pg):
            changed = parse_yaml_mapping(edit_in_editor(before, scope), "the edited configuration")
    except EditError as exc:
        raise CtlError(str(exc)) from None
    if changed == cluster.config:
        if not quiet:
            click.echo("Not changed")
        return
    if not quiet:
        _echo_diff(before, as_yaml(changed))
    known = set(config_problems(cluster.config))
    problems = [p for p in config_problems(changed) if p not in known]
    if problems:
        raise CtlError("invalid configuration, nothing changed: " + "; ".join(problems))
    if "-" in (apply_file, replace_file) and not force:
        click.echo("Use --force option to apply changes")
        return
    if not force and not click.confirm("Apply these changes?"):
        click.echo("Not applied")
        return
    if not ctl.store(scope).set_config(changed, cluster.config_index or None):
        raise CtlError("Config modification aborted due to concurrent changes")
    click.echo("Configuration changed")
