"""hasupctl: operate a hasup (or Patroni) cluster from a shell, as patronictl does.

Reads go to etcd directly; actions go through the members' REST API (auth and
TLS from the ctl/restapi sections), as patronictl's do. One module per group of
commands; `base` holds the click group and what they share.
"""

from __future__ import annotations

from hasup.ctl import (
    cmd_check,
    cmd_cluster,
    cmd_config,
    cmd_members,
    cmd_migrate,
    cmd_query,
    cmd_remove,
    cmd_show,
    cmd_switch,
)
from hasup.ctl.base import cli

__all__ = ["cli", "cmd_check", "cmd_cluster", "cmd_config", "cmd_members", "cmd_migrate", "cmd_query", "cmd_remove",
           "cmd_show", "cmd_switch", "main"]


def main() -> None:
    cli(prog_name="hasupctl")
