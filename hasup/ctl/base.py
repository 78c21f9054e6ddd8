"""The hasupctl command group and what every command shares: settings, etcd, REST, errors, prompts."""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import click

from hasup.ctl import output, views
from hasup.ctl.rest import RestClient
from hasup.ctl.settings import CtlSettings, SettingsError, load_settings
from hasup.dcs.backends import open_store
from hasup.dcs.model import Cluster
from hasup.dcs.store import DCSError

F = TypeVar("F", bound=Callable[..., Any])


class CtlError(click.ClickException):
    """Printed as one `Error: ...` line; the command exits 1."""


def one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


class Store(Protocol):
    """The part of a store hasupctl uses (tests pass an in-memory one)."""

    def get_cluster(self) -> Cluster: ...  # raises DCSError

    def set_config(self, config: dict[str, Any], index: int | None = None) -> bool: ...

    def set_failover(self, value: dict[str, Any], index: int | None = None) -> bool: ...

    def clear_failover(self, index: int | None = None) -> bool: ...

    def delete_cluster(self) -> None: ...

    def read_raw(self) -> dict[str, str]: ...

    def put_raw(self, rel: str, value: str) -> None: ...


def etcd_store(settings: CtlSettings, scope: str) -> Store:
    return open_store(settings.etcd, settings.namespace, scope, settings.retry_timeout)


@dataclass(frozen=True)
class Seams:
    """What tests replace: pass one as `obj` to the click runner."""

    store: Callable[[CtlSettings, str], Store] = etcd_store
    clock: Callable[[], float] = time.monotonic  # deadlines of the --wait loops
    sleep: Callable[[float], None] = time.sleep


class Ctl:
    """The state of one hasupctl run, built from the global options."""

    def __init__(self, config_file: str | None, dcs_url: str | None, insecure: bool, fmt: str | None,
                 seams: Seams | None = None) -> None:
        self.config_file = config_file
        self.dcs_url = dcs_url
        self.insecure = insecure
        self.fmt = fmt or "pretty"
        self.seams = seams or Seams()
        self._settings: CtlSettings | None = None
        self._rest: RestClient | None = None
        self._stores: dict[str, Store] = {}

    @property
    def settings(self) -> CtlSettings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_file, self.dcs_url, self.insecure)
            except SettingsError as exc:
                raise CtlError(str(exc)) from None
        return self._settings

    @property
    def rest(self) -> RestClient:
        if self._rest is None:
            self._rest = RestClient(self.settings)
        return self._rest

    def format(self, local: str | None) -> str:
        """A command's own -f/--format wins over the global one."""
        return local or self.fmt

    def scope(self, name: str | None) -> str:
        scope = name or self.settings.scope
        if not scope:
            raise CtlError("no cluster name: give CLUSTER_NAME, or -c with a configuration that sets scope")
        return scope

    def store(self, scope: str) -> Store:
        if scope not in self._stores:
            self._stores[scope] = self.seams.store(self.settings, scope)
        return self._stores[scope]

    def etcd_where(self) -> str:
        return ", ".join(f"{h}:{p}" for h, p in self.settings.etcd.hosts)

    def cluster(self, scope: str) -> Cluster:
        try:
            return self.store(scope).get_cluster()
        except DCSError:
            raise CtlError(f"etcd at {self.etcd_where()} did not answer within {self.settings.retry_timeout:g} s "
                           f"(reading cluster {scope!r})") from None

    def loop_wait(self, cluster: Cluster) -> int:
        value = (cluster.config or {}).get("loop_wait")
        return value if isinstance(value, int) and value > 0 else self.settings.loop_wait


pass_ctl = click.make_pass_decorator(Ctl)


class _Group(click.Group):
    """Turns anything unexpected into one error line instead of a traceback (HASUPCTL_DEBUG=1 shows it)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except DCSError as exc:
            raise CtlError(f"etcd: {one_line(exc)}") from None
        except Exception as exc:
            if os.environ.get("HASUPCTL_DEBUG"):
                raise
            raise CtlError(f"{type(exc).__name__}: {one_line(exc)}") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "--config-file", "config_file", envvar="PATRONICTL_CONFIG_FILE",
              type=click.Path(dir_okay=True), help="a node's hasup (or Patroni) YAML: its etcd, scope and ctl sections")
@click.option("-d", "--dcs-url", "--dcs", "dcs_url", envvar="DCS_URL",
              help="etcd://host:port[/namespace] (v2 API) or etcd3://host:port[/namespace] (v3)")
@click.option("-k", "--insecure", is_flag=True, help="do not verify the members' TLS certificates")
@click.option("-f", "--format", "fmt", type=click.Choice(output.FORMATS), default=None,
              help="output format (default pretty)")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, dcs_url: str | None, insecure: bool, fmt: str | None) -> None:
    """Operate a hasup (or Patroni) cluster."""
    # The daemon's modules log what a daemon should (an etcd member that failed, say); a command
    # says what went wrong in its one error line instead.
    quiet = logging.getLogger("hasup")
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    seams = ctx.obj if isinstance(ctx.obj, Seams) else None
    ctx.obj = Ctl(config_file, dcs_url, insecure, fmt, seams)


# -- options several commands share ---------------------------------------------------------------

def format_option(f: F) -> F:
    return click.option("-f", "--format", "fmt", type=click.Choice(output.FORMATS), default=None,
                        help="output format (overrides the global one)")(f)


def watch_options(f: F) -> F:
    f = click.option("-w", "--watch", type=float, default=None, help="refresh every SECONDS")(f)
    f = click.option("-W", "watch_2s", is_flag=True, help="refresh every 2 seconds")(f)
    return click.option("--watch-count", type=int, default=None, hidden=True)(f)  # for tests: stop after N


def force_option(f: F) -> F:
    return click.option("--force", is_flag=True, help="do not ask for confirmation")(f)


def role_option(default: str | None, help: str) -> Callable[[F], F]:
    return click.option("-r", "--role", type=click.Choice(views.ROLE_FILTERS), default=default, help=help)


def watching(every: float | None, every_2s: bool, count: int | None = None,
             sleep: Callable[[float], None] = time.sleep) -> Iterator[int]:
    """Yield once, or every interval until interrupted (or `count` times); the screen is cleared between."""
    interval = every if every else 2.0 if every_2s else None
    if interval is None:
        yield 0
        return
    n = 0
    try:
        while True:
            if n:
                click.clear()
            yield n
            n += 1
            if count is not None and n >= count:
                return
            sleep(interval)
    except KeyboardInterrupt:
        return


# -- small shared helpers -------------------------------------------------------------------------

def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")


def parse_when(text: str | None) -> datetime.datetime | None:
    """A --scheduled value: None or `now` is now; ISO 8601; without a timezone it is local time."""
    if text is None or text.strip().lower() in ("", "now"):
        return None
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CtlError(f"unable to parse the scheduled time {text!r}: use ISO 8601, "
                       "e.g. 2030-01-31T03:00+01:00") from None
    return when if when.tzinfo is not None else when.astimezone()


def next_hour_example() -> str:
    return (datetime.datetime.now() + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")


def confirm(message: str, force: bool, aborting: str) -> None:
    if not force and not click.confirm(message):
        raise CtlError(aborting)


def echo_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


def show_members(ctl: Ctl, cluster: Cluster, scope: str, fmt: str = "pretty", extended: bool = False,
                 nested: bool = False) -> None:
    """The member table of `list` (and `topology` when nested), with the pretty footer."""
    table_fmt = "topology" if nested else fmt
    columns, rows = views.member_table(cluster, scope, table_fmt, extended, nested)
    render_fmt = "pretty" if nested else fmt
    echo_lines(output.render(views.header_names(columns, table_fmt), rows, render_fmt,
                             views.cluster_title(cluster, scope), right=views.RIGHT_ALIGNED))
    if render_fmt == "pretty":
        echo_lines([" " + line for line in views.service_lines(cluster)])
