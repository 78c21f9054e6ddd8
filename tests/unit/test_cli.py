"""The `hasup` command line: --validate-config, --version, and starting the supervisor."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

import hasup
import hasup.config.environment as config_module
from hasup.cli import main
from hasup.config import Config
from hasup.supervision import unique_name
from tests.harness import PG_BIN
from tests.harness.pki import Pki, make_pki

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"

VALID: dict[str, Any] = {
    "scope": "main",
    "name": "node1",
    "restapi": {"listen": "127.0.0.1:8008", "connect_address": "127.0.0.1:8008"},
    "etcd": {"host": "127.0.0.1:2379"},
    "postgresql": {
        "listen": "127.0.0.1:5432",
        "connect_address": "127.0.0.1:5432",
        "data_dir": "/data/pg",
        "authentication": {
            "superuser": {"username": "postgres", "password": "su-pw"},
            "replication": {"username": "replicator", "password": "repl-pw"},
        },
    },
}

BAD_TEXT = """\
scope: main
name: node1
restapi:
  listen: '8008'
  connect_address: 127.0.0.1:8008
etcd:
  host: 127.0.0.1:2379
bootstrap:
  dcs:
    loop_wait: fast
    synchronous_mode: sometimes
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  authentication:
    superuser: {username: postgres, password: very-secret}
    replication: {username: replicator}
"""

BAD_PROBLEMS = [
    "restapi.listen: expected host:port, got '8008'",
    "bootstrap.dcs.loop_wait: expected an integer, got 'fast'",
    "bootstrap.dcs.synchronous_mode: expected a boolean or 'quorum', got 'sometimes'",
    "postgresql.data_dir: required",
]


def clean_env() -> dict[str, str]:
    """The test's environment without any configuration variable, and with hasup importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PATRONI_", "HASUP_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_hasup(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hasup", *args],
        cwd=ROOT,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def on_this_machine(raw: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """raw with PostgreSQL's programs and a data directory to be, as --validate-config checks them here."""
    pg = {**raw["postgresql"], "bin_dir": PG_BIN, "data_dir": str(tmp_path / "data")}
    return {**raw, "postgresql": pg}


def write(tmp_path: Path, text: str, name: str = "hasup.yml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- in a subprocess, as an operator runs it -----------------------------------------------------


def test_validate_config_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    result = run_hasup("--validate-config", write(tmp_path, BAD_TEXT))
    assert result.returncode == 2
    assert result.stderr.splitlines() == BAD_PROBLEMS
    assert "Traceback" not in result.stderr
    assert "very-secret" not in result.stderr
    assert result.stdout == ""


def test_validate_config_of_a_valid_file_prints_nothing(tmp_path: Path) -> None:
    result = run_hasup("--validate-config", "-i", write(tmp_path, yaml.safe_dump(on_this_machine(VALID, tmp_path))))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_validate_config_prints_warnings_with_a_prefix(tmp_path: Path) -> None:
    raw = on_this_machine(yaml.safe_load((DATA / "patroni-full.yml").read_text()), tmp_path)
    result = run_hasup("--validate-config", "--ignore-listen-port", write(tmp_path, yaml.safe_dump(raw)))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "warning: restapi.request_queue_size: not used by hasup yet, ignored" in lines
    assert all(line.startswith("warning: ") for line in lines)
    assert "secret" not in result.stderr


def test_validate_config_of_a_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yml")
    result = run_hasup("--validate-config", path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"{path}: no such file"]


def test_validate_config_of_broken_yaml(tmp_path: Path) -> None:
    result = run_hasup("--validate-config", write(tmp_path, "scope: [main\nname: x\n"))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "invalid YAML at line" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_config_from_environment_only(tmp_path: Path) -> None:
    env = clean_env()
    env["PATRONI_CONFIGURATION"] = yaml.safe_dump(on_this_machine(VALID, tmp_path))
    result = run_hasup("--validate-config", "-i", str(tmp_path / "absent.yml"), env=env)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def etcd3_config(**tls: str) -> dict[str, Any]:
    raw = {k: v for k, v in VALID.items() if k != "etcd"}
    raw["etcd3"] = {"hosts": ["10.0.0.1:2379", "10.0.0.2:2379"], **tls}
    return raw


def test_validate_config_accepts_etcd3_with_tls(tmp_path: Path, pki: Pki) -> None:
    raw = etcd3_config(cacert=pki.ca, cert=pki.server_cert, key=pki.server_key, key_password=pki.key_password)
    result = run_hasup("--validate-config", "-i", write(tmp_path, yaml.safe_dump(on_this_machine(raw, tmp_path))))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_validate_config_names_each_bad_tls_file_in_one_line(tmp_path: Path, pki: Pki) -> None:
    raw = etcd3_config(cacert=str(tmp_path / "ca.pem"), cert=pki.server_cert, key=pki.server_key)
    env = clean_env()
    env["PATRONI_ETCD3_KEY_PASSWORD"] = "not-the-pass-phrase"
    result = run_hasup("--validate-config", write(tmp_path, yaml.safe_dump(raw)), env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"etcd3.cacert: cannot read {tmp_path / 'ca.pem'}: No such file or directory",
        f"etcd3.key_password: does not decrypt the private key in {pki.server_key}",
    ]
    assert "Traceback" not in result.stderr and "not-the-pass-phrase" not in result.stderr


def test_validate_config_refuses_two_dcs_sections(tmp_path: Path) -> None:
    raw = {**VALID, "etcd3": {"host": "10.0.0.1:2379"}}
    result = run_hasup("--validate-config", write(tmp_path, yaml.safe_dump(raw)))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "etcd3: set together with etcd; keep exactly one DCS section (etcd: for etcd's v2 API, etcd3: for its v3 API)"
    ]


def test_starting_with_a_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    result = run_hasup(write(tmp_path, BAD_TEXT))
    assert result.returncode == 2
    assert result.stderr.splitlines() == BAD_PROBLEMS


def test_version() -> None:
    result = run_hasup("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"hasup {hasup.__version__} (Patroni {hasup.PATRONI_COMPAT_VERSION} compatible)"


def test_usage_error_exits_2() -> None:
    result = run_hasup("--no-such-option")
    assert result.returncode == 2
    assert "usage: hasup" in result.stderr


# -- in-process: handing over to the supervisor ---------------------------------------------------


@pytest.fixture
def fake_supervisor(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Config, str, list[str]]]:
    calls: list[tuple[Config, str, list[str]]] = []

    def run(config: Config, config_path: str, warnings: list[str]) -> int:
        calls.append((config, config_path, warnings))
        return 0

    module = types.ModuleType("hasup.supervisor")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hasup.supervisor", module)
    monkeypatch.setattr(unique_name, "check_unique_name", lambda config: None)  # no etcd here
    monkeypatch.setattr(config_module, "_taken_environment", None)
    return calls


def test_start_hands_the_config_to_the_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_supervisor: list[tuple[Config, str, list[str]]]
) -> None:
    path = write(tmp_path, yaml.safe_dump({**VALID, "ctl": {"insecure": True}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATRONI_SUPERUSER_PASSWORD", "from-env")
    assert main(["hasup.yml"]) == 0
    [(config, config_path, warnings)] = fake_supervisor
    assert config.name == "node1" and config.postgresql.superuser.password == "from-env"
    assert config_path == path  # absolute, so a reload after a chdir finds it
    assert warnings == ["ctl: not used by hasup yet, ignored"]
    # PostgreSQL and hooks must not inherit the password from the daemon's environment.
    assert "PATRONI_SUPERUSER_PASSWORD" not in os.environ


def test_start_with_a_bad_config_never_reaches_the_supervisor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_supervisor: list[tuple[Config, str, list[str]]]
) -> None:
    assert main([write(tmp_path, BAD_TEXT)]) == 2
    assert fake_supervisor == []
    assert capsys.readouterr().err.splitlines() == BAD_PROBLEMS


def test_start_with_an_encrypted_etcd_key_and_no_pass_phrase_exits_2(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str],
    fake_supervisor: list[tuple[Config, str, list[str]]],
) -> None:
    raw = etcd3_config(cert=pki.server_cert, key=pki.server_key)
    assert main([write(tmp_path, yaml.safe_dump(raw))]) == 2  # and no pass phrase prompt on the terminal
    assert fake_supervisor == []
    assert capsys.readouterr().err.splitlines() == [
        f"etcd3.key_password: required: the private key in {pki.server_key} is encrypted"]


def test_start_takes_the_etcd3_key_pass_phrase_out_of_the_environment(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch,
    fake_supervisor: list[tuple[Config, str, list[str]]],
) -> None:
    raw = etcd3_config(cacert=pki.ca, cert=pki.server_cert, key=pki.server_key)
    monkeypatch.setenv("PATRONI_ETCD3_KEY_PASSWORD", pki.key_password)
    assert main([write(tmp_path, yaml.safe_dump(raw))]) == 0
    [(config, _, _)] = fake_supervisor
    assert (config.etcd.api_version, config.etcd.protocol, config.etcd.key_password) == (3, "https", pki.key_password)
    assert "PATRONI_ETCD3_KEY_PASSWORD" not in os.environ


def test_main_returns_the_exit_status_of_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert main(["--help"]) == 0
    assert main(["a", "b"]) == 2
    capsys.readouterr()


def test_a_loader_failure_is_still_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(path: str, env: Any = None) -> Any:
        raise RecursionError("while reading password hunter2")

    import hasup.cli as cli_module

    monkeypatch.setattr(cli_module, "load_config", broken)
    path = write(tmp_path, yaml.safe_dump(VALID))
    assert main(["--validate-config", path]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"{path}: cannot be loaded (RecursionError); please report this"]
    assert "hunter2" not in err


def test_start_refuses_a_hostile_file_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_supervisor: list[tuple[Config, str, list[str]]]
) -> None:
    path = write(tmp_path, yaml.safe_dump(VALID) + "bomb: &a [x, x]\nmore: [" + ", ".join(["*a"] * 30_000) + "]\n")
    assert main([path]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{path}: line ") and "aliases expand" in line
    assert fake_supervisor == []


def test_start_refuses_a_name_in_use_with_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    fake_supervisor: list[tuple[Config, str, list[str]]],
) -> None:
    line = "name 'node1' is already in use by a running member of cluster 'demo' (...); refusing to start"
    monkeypatch.setattr(unique_name, "check_unique_name", lambda config: line)
    assert main([write(tmp_path, yaml.safe_dump(VALID))]) == 2
    assert fake_supervisor == []
    assert capsys.readouterr().err.splitlines() == [line]
