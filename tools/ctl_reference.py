"""Write docs/hasupctl.md: the --help of hasupctl and of each command, after a short hand-written preface.

Run `python tools/ctl_reference.py` after changing a command; tests/unit/test_ctl_reference.py fails
while the file is out of date.
"""

from __future__ import annotations

import os
import sys

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "hasupctl.md")
WIDTH = 100

PREFACE = """\
# hasupctl reference

`hasupctl` operates a hasup cluster from a shell; it takes patronictl's commands and options, so
scripts written for patronictl keep working, and patronictl itself works against a hasup cluster.

- `-c/--config FILE` is a node's configuration (or a patronictl.yaml). Only `scope`, `namespace`,
  `etcd`, `ctl`, `restapi.authentication`/`cafile`/`certfile`/`keyfile` and the timings are read.
  Without `-c`, `PATRONICTL_CONFIG_FILE` or `~/.config/patroni/patronictl.yaml` is used when present.
- `-d/--dcs-url etcd://host:port[/namespace]` replaces the file's etcd endpoints.
- Reads (`list`, `topology`, `history`, `show-config`, `dsn`) and `edit-config`/`remove` go to etcd
  directly. Actions (`switchover`, `failover`, `restart`, `reload`, `reinit`, `flush`, `pause`,
  `resume`) go through the REST API of a member (its `api_url` in etcd), with Basic auth from
  `ctl.authentication` (else `restapi.authentication`) and TLS from `ctl.cacert`/`certfile`/`keyfile`
  (else the `restapi` ones); `-k` or `ctl.insecure` skips certificate verification.
- Every error is one line starting with `Error:` and exit status 1; a command acting on several
  members reports each one and exits 1 if any failed. `HASUPCTL_DEBUG=1` shows tracebacks.
- etcd that does not answer within `retry_timeout` (from the configuration, default 10 s) is an error.

`list` shows patronictl 4's columns: `Receive LSN` and `Replay LSN` of each replica with the lag of
each (in MB, behind the leader's last published WAL position; both titled `Lag` in the boxed formats,
`Receive Lag` and `Replay Lag` in tsv, json and yaml), then `Pending restart`, `Pending restart
reason`, `Scheduled restart` and `Tags` when a member has one (always with `-e`).

Differences from patronictl: etcd is the only DCS (`etcd:` for the v2 API, `etcd3:` for v3); in tsv a
multi-line pending-restart reason is joined on one line; `edit-config`
refuses a configuration that hasup nodes could not use (the same check as `PATCH /config`), where
patronictl writes anything; `version` names hasup's version besides the Patroni one it implements.
"""


def _help(command: click.Command, name: str, parent: click.Context | None) -> tuple[str, click.Context]:
    # resilient_parsing: no arguments given, none required; context_settings (-h) still apply
    ctx = command.make_context(name, [], parent=parent, resilient_parsing=True, terminal_width=WIDTH,
                               max_content_width=WIDTH)
    return command.get_help(ctx), ctx


def render() -> str:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)  # document this work tree, not an installed copy
    from hasup.ctl import cli

    text, root = _help(cli, "hasupctl", None)
    parts = [PREFACE, "## hasupctl\n", "```\n" + text + "\n```\n"]
    for name in sorted(cli.commands):
        sub, _ = _help(cli.commands[name], name, root)
        parts += [f"## {name}\n", "```\n" + sub + "\n```\n"]
    return "\n".join(parts)


def main() -> int:
    with open(DOC, "w") as f:
        f.write(render())
    print(f"wrote {os.path.relpath(DOC, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
