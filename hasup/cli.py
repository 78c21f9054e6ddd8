"""The `hasup` command: run the supervisor for a configuration, or only check that configuration."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from hasup import PATRONI_COMPAT_VERSION, __version__
from hasup.config import Config, ConfigError, load_config, take_environment

# A configuration that cannot boot exits 2, so systemd does not restart into the same failure.
EXIT_BAD_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hasup",
        description="PostgreSQL high-availability supervisor, reading Patroni-style configuration.",
    )
    parser.add_argument(
        "config",
        nargs="?",
        default="",
        metavar="CONFIG",
        help="YAML file, or directory of *.yml/*.yaml files merged in name order; "
        "without it, the configuration comes from HASUP_*/PATRONI_* environment variables",
    )
    parser.add_argument(
        "--validate-config",
        action="store_true",
        help="check the configuration, print every problem (exit 2) or nothing (exit 0), and exit",
    )
    parser.add_argument(
        "-i",
        "--ignore-listen-port",
        action="store_true",
        help="with --validate-config: do not report listen ports already in use (the node itself may be running)",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"hasup {__version__} (Patroni {PATRONI_COMPAT_VERSION} compatible)",
    )
    return parser


def _print_lines(lines: Sequence[str], prefix: str = "") -> None:
    for line in lines:
        print(f"{prefix}{line}", file=sys.stderr)


def _load(path: str, env: Mapping[str, str] | None = None) -> tuple[Config, list[str]] | None:
    """The configuration and its warnings, or None once every problem is printed, one line each."""
    try:
        return load_config(path, env)
    except ConfigError as exc:
        _print_lines(exc.problems)
    except Exception as exc:  # noqa: BLE001 -- a loader bug (RecursionError, say) must still end in one line
        # Never the exception's text or a traceback: either could quote a password from the file.
        print(f"{path or 'configuration'}: cannot be loaded ({type(exc).__name__}); please report this",
              file=sys.stderr)
    return None


def validate(path: str, ignore_listen_port: bool = False) -> int:
    """Exit status for `--validate-config`: 0 and only warnings when usable, else 2 and every problem.

    The file first; once it reads, the machine too (hasup.supervision.host_checks)."""
    loaded = _load(path)
    if loaded is None:
        return EXIT_BAD_CONFIG
    from hasup.supervision.host_checks import check_host

    found = check_host(loaded[0], ignore_listen_port)
    _print_lines(found.problems)
    _print_lines(loaded[1] + found.warnings, prefix="warning: ")
    return EXIT_BAD_CONFIG if found.problems else 0


def start(path: str) -> int:
    """Load the configuration and run the supervisor until it exits."""
    # Taken out of os.environ first, so PostgreSQL and hooks never inherit passwords from it;
    # reloads read the saved copy (see hasup.config.take_environment).
    env = take_environment(os.environ)
    loaded = _load(path, env)
    if loaded is None:
        return EXIT_BAD_CONFIG
    config, warnings = loaded
    from hasup.supervision.host_checks import start_problem  # imported late: only the daemon needs these
    from hasup.supervision.unique_name import check_unique_name
    from hasup.supervisor import run

    refused = start_problem(config) or check_unique_name(config)
    if refused is not None:
        print(refused, file=sys.stderr)
        return EXIT_BAD_CONFIG

    # Absolute, because the supervisor re-reads it on SIGHUP whatever its working directory is then.
    return run(config, os.path.abspath(path) if path else path, warnings)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed its message
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_BAD_CONFIG)
    if args.validate_config:
        return validate(args.config, args.ignore_listen_port)
    return start(args.config)


if __name__ == "__main__":
    sys.exit(main())
