"""Hostile configuration input: every problem is one line (exit 2), never a traceback, and cheap.

The corpus is generated here and run through the real `hasup --validate-config` in a subprocess,
measuring its wall time and peak memory; then the same limits in-process (the YAML loader, the
bounds of parse_dynamic, which reads what etcd holds and must never raise).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hasup.config import ConfigError, DynamicConfig, dynamic_problems, load_config, load_config_text, parse_dynamic
from hasup.config.bounded_yaml import MAX_CONFIG_BYTES, MAX_YAML_DEPTH, MAX_YAML_VALUES, load_yaml
from hasup.config.schema import DYNAMIC_INT_BOUNDS
from hasup.config.sources import SourceError, parse_yaml
from hasup.config.values import INT64_MAX, shown
from tests.harness import PG_BIN

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hostile-test-secret"
MAX_SECONDS = 2.0
MAX_RSS_MB = 200
BIG_BYTES = 50 * 1000 * 1000

BASE: dict[str, Any] = {
    "scope": "main",
    "name": "node1",
    "restapi": {"listen": "127.0.0.1:8008", "connect_address": "127.0.0.1:8008",
                "authentication": {"username": "admin", "password": SECRET}},
    "etcd": {"host": "127.0.0.1:2379"},
    "postgresql": {
        "listen": "127.0.0.1:5432",
        "connect_address": "127.0.0.1:5432",
        # Where --validate-config's checks of this machine pass: the programs, a directory anyone may create.
        "data_dir": os.path.join(tempfile.gettempdir(), "hasup-hostile-never-created", "pg"),
        "bin_dir": PG_BIN,
        "authentication": {
            "superuser": {"username": "postgres", "password": SECRET},
            "replication": {"username": "replicator", "password": SECRET},
        },
    },
}
BASE_TEXT = yaml.safe_dump(BASE, sort_keys=False)


@dataclass(frozen=True)
class Run:
    code: int
    lines: list[str]
    seconds: float
    max_rss_mb: float


# A /usr/bin/time of our own. The child is forked from this small interpreter rather than from the
# test process: Linux keeps a process's peak RSS across exec, and a child forked straight from pytest
# would start with pytest's peak (hundreds of MB after building a 50 MB file) as its own.
# The alarm survives exec: a hung child is killed by SIGALRM rather than hanging the wrapper.
MEASURE = """
import json, os, signal, sys, time
started = time.monotonic()
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    signal.alarm(30)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "seconds": time.monotonic() - started,
                  "max_rss_kb": usage.ru_maxrss}))
"""


def validate(path: Path) -> Run:
    """`hasup --validate-config path` as an operator runs it, with its wall time and peak RSS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PATRONI_", "HASUP_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "hasup", "--validate-config",
                             "--ignore-listen-port", str(path)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    measured = json.loads(result.stdout)
    return Run(measured["code"], result.stderr.splitlines(), measured["seconds"], measured["max_rss_kb"] / 1024)


def refused(run: Run, count: int = 1) -> list[str]:
    """The checks every hostile file must pass; returns its problem lines."""
    assert run.code == 2, run
    assert len(run.lines) == count, run.lines
    text = "\n".join(run.lines)
    assert "Traceback" not in text and "Error:" not in text
    assert SECRET not in text
    assert run.seconds < MAX_SECONDS, f"took {run.seconds:.2f}s"
    assert run.max_rss_mb < MAX_RSS_MB, f"used {run.max_rss_mb:.0f} MB"
    return run.lines


def write(tmp_path: Path, text: str, name: str = "hasup.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def nested_block(depth: int) -> str:
    return "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "leaf\n"


def alias_bomb() -> str:
    """The "billion laughs": nine levels of nine aliases each, about 4e8 values once expanded."""
    lines = ["lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


# -- the corpus, through the real command ---------------------------------------------------------

ONE_LINE_CASES = {
    "alias bomb": (BASE_TEXT + alias_bomb(), r"line \d+, column \d+: YAML aliases expand the document to more than"),
    "duplicate authentication": (
        BASE_TEXT.replace("restapi:\n", "restapi:\n  authentication: {username: admin}\n", 1),
        r"line \d+, column 3: duplicate key 'authentication' \(first at line 4\)"),
    "10**400": (BASE_TEXT + f"bootstrap:\n  dcs:\n    ttl: {10**400}\n", r"integer out of range"),
    "a 5000-digit integer": (BASE_TEXT + "x: " + "7" * 5000 + "\n", r"integer out of range"),
    ".inf": (BASE_TEXT.replace("  data_dir:", "  health_deadline: .inf\n  data_dir:"), r"not a finite number"),
    ".nan": (BASE_TEXT + "bootstrap:\n  dcs:\n    loop_wait: .nan\n", r"not a finite number"),
    "1.0e+400": (BASE_TEXT + "bootstrap:\n  dcs:\n    retry_timeout: 1.0e+400\n", r"not a finite number"),
    "deep block nesting": (BASE_TEXT + nested_block(1000), rf"nested deeper than {MAX_YAML_DEPTH} levels"),
    "deep flow nesting": (BASE_TEXT + "x: " + "[" * 300_000 + "]" * 300_000 + "\n", r"(nesting|nested)"),
    "alias inside itself": (BASE_TEXT + "x: &x [1, *x]\n", r"alias 'x' is used inside the value it names"),
    "too many values": (BASE_TEXT + "x:\n" + "- 1\n" * 200_000, r"the document holds more than"),
}


@pytest.mark.parametrize("case", ONE_LINE_CASES)
def test_a_hostile_file_is_one_line_and_exit_2_quickly(tmp_path: Path, case: str) -> None:
    text, pattern = ONE_LINE_CASES[case]
    path = write(tmp_path, text)
    [line] = refused(validate(path))
    assert line.startswith(f"{path}: ")
    assert re.search(pattern, line), line


def test_a_50_mb_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "hasup.yml"
    with open(path, "w") as f:
        f.write(BASE_TEXT)
        f.write("padding: '" + "x" * BIG_BYTES + "'\n")
    [line] = refused(validate(path))
    assert line == f"{path}: {path.stat().st_size} bytes, more than the {MAX_CONFIG_BYTES} a configuration may have"


def test_a_directory_with_a_huge_file_names_that_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    write(conf, BASE_TEXT, "00-base.yml")
    huge = conf / "10-huge.yml"
    with open(huge, "w") as f:
        f.write("# " + "x" * BIG_BYTES + "\n")
    [line] = refused(validate(conf))
    assert line.startswith(f"{huge}: ") and "more than the" in line


def test_a_directory_whose_files_are_too_large_together(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    write(conf, BASE_TEXT, "00-base.yml")
    for i in range(1, 4):  # each well under the limit, together over it
        write(conf, f"x{i}: '" + "y" * (MAX_CONFIG_BYTES // 3) + "'\n", f"{i:02d}-part.yml")
    [line] = refused(validate(conf))
    assert line == f"{conf}: its YAML files hold more than the {MAX_CONFIG_BYTES} bytes a configuration may have"


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "hasup.yml"
    os.mkfifo(path)
    [line] = refused(validate(path))
    assert line == f"{path}: cannot read (not a regular file)"


def test_every_value_out_of_bounds_is_one_line_naming_its_key(tmp_path: Path) -> None:
    raw = yaml.safe_load(BASE_TEXT)
    raw["bootstrap"] = {"dcs": {"ttl": 100_000, "loop_wait": 0, "maximum_lag_on_failover": INT64_MAX,
                                "postgresql": {"parameters": {"work_mem = 1MB": 1}}}}
    raw["etcd"]["port"] = 70_000
    raw["tags"] = {"failover_priority": 2**40}
    pg = raw["postgresql"]
    pg.update(pg_ctl_timeout=10**12, health_deadline=1.0e300, callback_timeout="1e400")
    pg["parameters"] = {"include": "/etc/shadow", "search_path": "a\0b", "work_mem": "4MB",
                        "shared_preload_libraries": ["x"], "bad\nname": 1}
    raw["restapi"]["listen"] = "127.0.0.1:99999999999"
    lines = refused(validate(write(tmp_path, yaml.safe_dump(raw))), count=13)
    assert sorted(lines) == sorted([
        "restapi.listen: expected host:port, got '127.0.0.1:99999999999'",
        "etcd.port: must be at most 65535, got 70000",
        "bootstrap.dcs.ttl: must be at most 3600, got 100000",
        "bootstrap.dcs.loop_wait: must be at least 1, got 0",
        "bootstrap.dcs.postgresql.parameters: 'work_mem = 1MB': not a parameter name (letters, digits and _, "
        "with one dot for an extension's parameter)",
        "postgresql.parameters: 'include': a postgresql.conf directive, not a parameter",
        "postgresql.parameters: 'search_path': contains a NUL character",
        "postgresql.parameters: 'shared_preload_libraries': expected a string, a number or a boolean",
        "postgresql.parameters: 'bad\\nname': not a parameter name (letters, digits and _, with one dot for an "
        "extension's parameter)",
        "postgresql.pg_ctl_timeout: must be at most 86400, got 1000000000000",
        "postgresql.health_deadline: must be at most 3600, got 1e+300",
        "postgresql.callback_timeout: expected a finite number of seconds, got '1e400'",
        "tags.failover_priority: must be at most 2147483647, got 1099511627776",
    ])


def test_a_valid_file_with_anchors_and_merge_keys_is_accepted(tmp_path: Path) -> None:
    text = (
        "x-common: &pw {username: rewinder, password: " + SECRET + "}\n"
        "bootstrap:\n"
        "  dcs: {ttl: 30, loop_wait: 10}\n"
        "  pg_hba: &hba [host all all 10.0.0.0/24 scram-sha-256, local all all peer]\n"
    ) + BASE_TEXT
    text = text.replace("  authentication:\n    superuser:",
                        "  pg_hba: *hba\n  authentication:\n    rewind: {<<: *pw, username: rewind_user}\n"
                        "    superuser:")
    run = validate(write(tmp_path, text))
    assert run.code == 0, run.lines
    assert run.lines == ["warning: x-common: not used by hasup yet, ignored"]


# -- the loader, in-process --------------------------------------------------------------------


def problem(text: str) -> str:
    with pytest.raises(SourceError) as info:
        parse_yaml(text, "f.yml")
    [line] = info.value.problems
    return line


def test_ordinary_anchors_aliases_and_merges_keep_working() -> None:
    data = parse_yaml("a: &a {x: 1, y: [1, 2]}\nb: *a\nc: {<<: *a, x: 2}\nd: [*a, *a]\n", "f.yml")
    assert data["b"] == {"x": 1, "y": [1, 2]} and data["c"] == {"x": 2, "y": [1, 2]}
    assert data["d"] == [data["a"], data["a"]]


@pytest.mark.parametrize(("text", "expected"), [
    ("a: 1\na: 2\n", "f.yml: line 2, column 1: duplicate key 'a' (first at line 1)"),
    ("a: {b: 1, b: 1}\n", "f.yml: line 1, column 11: duplicate key 'b' (first at line 1)"),
    ("a: {1: x, 0x1: y}\n", "f.yml: line 1, column 11: duplicate key 1 (first at line 1)"),
    ("a:\n  - &x {k: 1}\n  - {<<: *x, k: 2, k: 3}\n", "f.yml: line 3, column 20: duplicate key 'k' (first at line 3)"),
])
def test_duplicate_keys_are_refused_but_a_merge_may_be_overridden(text: str, expected: str) -> None:
    assert problem(text) == expected


def test_integers_up_to_64_bits_and_finite_floats_are_taken() -> None:
    data = parse_yaml(f"a: {INT64_MAX}\nb: -{INT64_MAX}\nc: 1.5e+300\nd: 0x7fffffffffffffff\n", "f.yml")
    assert data == {"a": INT64_MAX, "b": -INT64_MAX, "c": 1.5e300, "d": INT64_MAX}
    assert "integer out of range" in problem(f"a: {INT64_MAX + 1}\n")


def test_nesting_up_to_the_limit_is_fine() -> None:
    assert parse_yaml(nested_block(MAX_YAML_DEPTH - 1), "f.yml")
    assert "nested deeper than" in problem(nested_block(MAX_YAML_DEPTH))


def test_values_are_counted_with_their_aliases_expanded() -> None:
    chunk = "[" + ", ".join(["v"] * 999) + "]"
    assert parse_yaml(f"a: &a {chunk}\nb: [{', '.join(['*a'] * 45)}]\n", "f.yml")  # 46,000 values
    line = problem(f"a: &a {chunk}\nb: [{', '.join(['*a'] * 55)}]\n")
    assert line.startswith("f.yml: line 2, column ") and "aliases expand" in line
    assert str(MAX_YAML_VALUES) in line


def test_a_password_is_never_quoted_by_a_yaml_problem() -> None:
    line = problem(f"postgresql:\n  authentication:\n    superuser: {{password: {SECRET}, password: x}}\n")
    assert SECRET not in line and "duplicate key 'password'" in line


def test_the_environment_goes_through_the_same_loader() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("", env={"HASUP_CONFIGURATION": BASE_TEXT + alias_bomb()})
    [line] = info.value.problems
    assert line.startswith("HASUP_CONFIGURATION: line ") and "aliases expand" in line
    config, _ = load_config("", env={"HASUP_CONFIGURATION": BASE_TEXT, "HASUP_RESTAPI_ALLOWLIST": alias_bomb()})
    assert config.restapi.allowlist == ()  # an unreadable structured variable stays a string, and is refused


def test_shown_is_bounded_whatever_the_value() -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    assert len(shown(deep)) <= 60 and len(shown(10**5000)) <= 60 and len(shown("x" * 10**7)) <= 60
    assert shown(10**5000).startswith("<an integer of")


# -- the dynamic configuration from etcd: bounded, and never raising ---------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (10**400, 30), (-(10**400), 30), (2**62, 3600), (-5, 10), (1e400, 30), (math.nan, 30), ("9" * 5000, 30),
    ("3601", 3600),
    ([1], 30), ({"a": 1}, 30), (True, 30), (None, 30),
])
def test_dynamic_ttl_is_bounded(value: Any, expected: int) -> None:
    dynamic, notes = parse_dynamic({"ttl": value})
    assert dynamic.ttl == expected
    assert all("\n" not in note and len(note) < 300 for note in notes)


def test_dynamic_parameters_that_postgresql_conf_cannot_carry_are_dropped() -> None:
    dynamic, notes = parse_dynamic({"postgresql": {"parameters": {
        "work_mem": "8MB", "x = 1": 1, "include_dir": "/etc", "statement_timeout": math.inf, "a": {"b": 1},
        "search_path": "x\0y", "pg_stat_statements.max": 1000}}})
    assert dynamic.parameters == {"work_mem": "8MB", "pg_stat_statements.max": 1000}
    assert len(notes) == 5 and all(note.startswith("postgresql.parameters: ") for note in notes)


def test_dynamic_problems_lists_what_parse_dynamic_would_adjust() -> None:
    assert dynamic_problems({"ttl": 30, "loop_wait": 10}) == []
    assert dynamic_problems({"ttl": 10**400, "pause": "maybe", "postgresql": {"parameters": {"a b": 1}}}) == [
        "ttl: out of range (at most 9223372036854775807), got <an integer of 1329 bits>",
        "pause: expected a boolean (on/off, true/false, yes/no, 1/0), got 'maybe'",
        "postgresql.parameters: 'a b': not a parameter name (letters, digits and _, with one dot for an "
        "extension's parameter)",
    ]
    assert dynamic_problems(["x"]) == ["config: expected a mapping, got ['x']"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
KEYS = [*DYNAMIC_INT_BOUNDS, "master_start_timeout", "check_timeline", "pause", "synchronous_mode",
        "synchronous_mode_strict", "failsafe_mode", "standby_cluster", "postgresql", "slots", "member_slots_ttl"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), JSON) | JSON,
       st.dictionaries(st.sampled_from(["use_pg_rewind", "use_slots", "parameters", "pg_hba"]), JSON))
def test_parse_dynamic_never_raises_and_keeps_every_bound(raw: Any, pg: dict[str, Any]) -> None:
    if isinstance(raw, dict) and pg:
        raw["postgresql"] = pg
    dynamic, notes = parse_dynamic(raw)
    assert isinstance(dynamic, DynamicConfig)
    for key, (low, high) in DYNAMIC_INT_BOUNDS.items():
        assert low <= getattr(dynamic, key) <= high
    assert dynamic.loop_wait + 2 * dynamic.retry_timeout <= dynamic.ttl
    for value in dynamic.parameters.values():
        assert not isinstance(value, float) or math.isfinite(value)
    assert all(isinstance(note, str) and "\n" not in note for note in notes)
    dynamic_problems(raw)  # never raises either


def test_a_huge_config_through_load_config_text_is_one_problem() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(BASE_TEXT + "x: '" + "y" * (MAX_CONFIG_BYTES + 1) + "'\n")
    [line] = info.value.problems
    assert "more than the" in line


def test_a_huge_etcd_certificate_file_is_refused_before_openssl_reads_it(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + b"A" * (2 << 20))
    with pytest.raises(ConfigError) as info:
        load_config_text(BASE_TEXT.replace("etcd:\n", f"etcd:\n  cacert: {ca}\n"))
    assert info.value.problems == [f"etcd.cacert: {ca}: {ca.stat().st_size} bytes, more than a PEM file of "
                                   "1048576 may have"]


def test_dates_are_kept_as_written() -> None:
    # JSON (IPC, etcd, member keys) has no dates: a date object would crash whoever encodes it.
    assert load_yaml("a: 2024-01-01\nb: 2024-13-01\nc: 2001-12-14t21:59:43.10-05:00\n") == \
        {"a": "2024-01-01", "b": "2024-13-01", "c": "2001-12-14t21:59:43.10-05:00"}
