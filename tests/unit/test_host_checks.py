"""--validate-config's checks of this machine, and the oldest PostgreSQL hasup starts with."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from hasup.config import Config, load_config_text
from hasup.postgresql.version import MIN_MAJOR, parse_version_output
from hasup.supervision.host_checks import REQUIRED_BINARIES, check_host, start_problem
from tests.harness import PG_BIN, free_port
from tests.unit.test_cli import VALID


def config(tmp_path: Path, **over: Any) -> Config:
    raw = yaml.safe_load(yaml.safe_dump(VALID))
    raw["postgresql"].update(bin_dir=PG_BIN, data_dir=str(tmp_path / "data"))
    for dotted, value in over.items():
        d = raw
        *path, last = dotted.split(".")
        for p in path:
            d = d.setdefault(p, {})
        d[last] = value
    return load_config_text(yaml.safe_dump(raw))[0]


def fake_bin(tmp_path: Path, version: str) -> str:
    """A bin_dir whose programs exist and whose postgres says it is `version`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in REQUIRED_BINARIES:
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\necho 'postgres (PostgreSQL) {version}'\n")
        path.chmod(0o755)
    return str(bin_dir)


def data_dir(tmp_path: Path, version: str | None = "15", mode: int = 0o700, wal: bool = True) -> str:
    path = tmp_path / "data"
    path.mkdir()
    if version is not None:
        (path / "PG_VERSION").write_text(version + "\n")
    else:
        (path / "something").write_text("")
    if wal:
        (path / "pg_wal").mkdir()
    path.chmod(mode)
    return str(path)


def test_a_usable_machine_has_nothing_to_say(tmp_path: Path) -> None:
    found = check_host(config(tmp_path), ignore_listen_port=True)
    assert (found.problems, found.warnings) == ([], [])


def test_missing_programs_are_named_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    found = check_host(config(tmp_path, **{"postgresql.bin_dir": str(tmp_path / "empty")}), True)
    assert found.problems == [f"postgresql.bin_dir: no executable {n} in {tmp_path / 'empty'}"
                              for n in REQUIRED_BINARIES]
    found = check_host(config(tmp_path, **{"postgresql.bin_dir": str(tmp_path / "nowhere")}), True)
    assert found.problems == [f"postgresql.bin_dir: {tmp_path / 'nowhere'} is not a directory"]


def test_a_postgresql_older_than_13_is_refused_at_start_and_by_validation(tmp_path: Path) -> None:
    cfg = config(tmp_path, **{"postgresql.bin_dir": fake_bin(tmp_path, "12.20")})
    line = start_problem(cfg)
    assert line is not None and "PostgreSQL 12" in line and f"PostgreSQL {MIN_MAJOR} or later" in line
    assert line in check_host(cfg, True).problems
    assert start_problem(config(tmp_path)) is None  # the real 15
    # Data of an older major refuses too, whatever the binaries are.
    data_dir(tmp_path, version="11")
    line = start_problem(config(tmp_path))
    assert line is not None and "PG_VERSION" in line and "PostgreSQL 11" in line


def test_version_output_is_read_for_its_major() -> None:
    assert parse_version_output("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n") == 15
    assert parse_version_output("postgres (PostgreSQL) 9.6.24") == 9
    assert parse_version_output("postgres (PostgreSQL) 17beta1") == 17
    assert parse_version_output("something else") is None


@pytest.mark.parametrize(("kw", "empty", "expected"), [
    ({"mode": 0o755}, False, "has mode 0755; PostgreSQL needs 0700 or 0750"),
    ({"version": None}, False, "is not empty and has no PG_VERSION"),
    ({"wal": False}, False, "has no pg_wal directory"),
    ({"version": "16"}, False, "holds PostgreSQL 16 data, but"),
])  # fmt: skip
def test_a_data_directory_postgresql_could_not_use_is_a_problem(tmp_path: Path, kw: dict[str, Any], empty: bool,
                                                                expected: str) -> None:
    data_dir(tmp_path, **kw)
    problems = check_host(config(tmp_path), True).problems
    assert len(problems) == 1 and expected in problems[0] and problems[0].startswith("postgresql.data_dir: ")


def test_an_empty_data_directory_with_loose_permissions_is_only_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    found = check_host(config(tmp_path), True)
    assert found.problems == [] and len(found.warnings) == 1 and "0755" in found.warnings[0]


def test_ownership_and_a_parent_that_cannot_hold_the_data_directory(tmp_path: Path) -> None:
    data_dir(tmp_path)
    owner = os.stat(tmp_path / "data").st_uid
    found = check_host(config(tmp_path), True, euid=owner + 1)
    assert found.problems == [f"postgresql.data_dir: {tmp_path / 'data'} is owned by uid {owner}, not by uid "
                              f"{owner + 1} that runs hasup"]
    (tmp_path / "file").write_text("")
    found = check_host(config(tmp_path, **{"postgresql.data_dir": str(tmp_path / "file" / "data")}), True)
    assert found.problems == [f"postgresql.data_dir: {tmp_path / 'file' / 'data'} cannot be created: "
                              f"{tmp_path / 'file'} is not a directory"]
    assert stat.S_ISDIR(os.stat(tmp_path).st_mode)


def test_a_listen_port_in_use_is_a_problem_unless_ignored(tmp_path: Path) -> None:
    port = free_port()
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    try:
        cfg = config(tmp_path, **{"restapi.listen": f"127.0.0.1:{port}", "postgresql.listen": f"*:{free_port()}"})
        assert check_host(cfg).problems == [f"restapi.listen: port {port} is already in use on 127.0.0.1"]
        assert check_host(cfg, ignore_listen_port=True).problems == []
    finally:
        listener.close()
    assert check_host(cfg).problems == []


def test_a_watchdog_the_timing_can_never_arm(tmp_path: Path) -> None:
    tight = {"bootstrap.dcs": {"ttl": 10, "loop_wait": 2, "retry_timeout": 4}, "watchdog.safety_margin": 5}
    required = check_host(config(tmp_path, **tight, **{"watchdog.mode": "required"}), True)
    assert len(required.problems) == 1 and "no node would ever lead" in required.problems[0]
    assert required.problems[0].startswith("watchdog.mode: required")
    automatic = check_host(config(tmp_path, **tight, **{"watchdog.mode": "automatic"}), True)
    assert automatic.problems == [] and len(automatic.warnings) == 1 and "never arm" in automatic.warnings[0]
    assert check_host(config(tmp_path, **tight, **{"watchdog.mode": "off"}), True).warnings == []
    roomy = check_host(config(tmp_path, **{"watchdog.mode": "required", "watchdog.safety_margin": 5}), True)
    assert roomy.problems == []  # the defaults: ttl 30, loop_wait 10, retry_timeout 10
