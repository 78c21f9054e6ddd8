"""Loading the local file (hasup.config.file): defaults, sources, environment, validation, warnings."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

import hasup.config.environment as config_module
from hasup.config import (
    Config,
    ConfigError,
    Credentials,
    RestApiConfig,
    load_config,
    load_config_text,
    parse_dynamic,
    take_environment,
)
from hasup.config.values import Invalid, to_bool, to_watchdog_mode
from hasup.timing import Figures

DATA = Path(__file__).parent / "data"
SUPPORTED = "hasup supports etcd (v2 API, `etcd:`) and etcd3 (v3 API, `etcd3:`)"
BOTH_DCS = ("etcd3: set together with etcd; keep exactly one DCS section "
            "(etcd: for etcd's v2 API, etcd3: for its v3 API)")

MINIMAL: dict[str, Any] = {
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


def with_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """MINIMAL with dotted keys set (value `DELETE` removes the key)."""
    raw = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        node = raw
        *parents, key = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(key, None)
        else:
            node[key] = value
    return raw


DELETE = object()


def load(changes: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> tuple[Config, list[str]]:
    return load_config_text(yaml.safe_dump(with_changes(changes or {})), env)


def problems_of(changes: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(changes, env)
    return info.value.problems


# -- defaults -------------------------------------------------------------------------------


def test_minimal_config_gets_patroni_defaults() -> None:
    cfg, warnings = load()
    assert warnings == []
    assert (cfg.scope, cfg.name, cfg.namespace) == ("main", "node1", "service")
    assert cfg.restapi.username is None and cfg.restapi.password is None
    assert cfg.restapi.api_url == "http://127.0.0.1:8008/patroni"
    assert cfg.etcd.hosts == (("127.0.0.1", 2379),) and cfg.etcd.protocol == "http"
    pg = cfg.postgresql
    assert pg.pg_ctl_timeout == 60
    assert pg.config_dir == "/data/pg"
    assert pg.bin_dir == ""
    assert pg.pgpass == os.path.expanduser("~/pgpass")
    assert pg.database == "postgres"
    assert pg.rewind == pg.superuser == Credentials("postgres", "su-pw")
    assert pg.replication == Credentials("replicator", "repl-pw")
    assert pg.parameters == {} and pg.pg_hba is None and pg.use_pg_rewind is None and pg.basebackup == ()
    assert pg.port == 5432 and pg.listen_hosts == ["127.0.0.1"]
    assert cfg.log.level == "INFO" and cfg.log.traceback_level == "ERROR"
    assert cfg.log.format == "%(asctime)s %(levelname)s: %(message)s"
    assert (cfg.log.dir, cfg.log.file_num, cfg.log.file_size) == (None, 4, 25000000)
    assert (cfg.watchdog.mode, cfg.watchdog.device, cfg.watchdog.safety_margin) == ("automatic", "/dev/watchdog", 5)
    assert cfg.tags.failover_priority == 1 and not cfg.tags.nofailover and cfg.tags.raw == {}
    assert cfg.bootstrap.dcs == {} and cfg.bootstrap.initdb == () and cfg.bootstrap.users == {}
    assert cfg.bootstrap.post_bootstrap is None and cfg.bootstrap.pg_hba == ()


@pytest.mark.parametrize(
    ("namespace", "stored"),
    [("/service", "service"), ("/service/", "service"), ("/a/b/", "a/b"), ("x", "x"), ("//a//b//", "a/b")],
)
def test_namespace_is_stored_without_slashes(namespace: str, stored: str) -> None:
    cfg, _ = load({"namespace": namespace})
    assert cfg.namespace == stored


def test_explicit_values_replace_defaults() -> None:
    cfg, _ = load(
        {
            "postgresql.config_dir": "/etc/pg",
            "postgresql.bin_dir": "/usr/lib/postgresql/16/bin",
            "postgresql.pgpass": "~/.pgpass-hasup",
            "postgresql.pg_ctl_timeout": "90",
            "postgresql.database": "app",
            "postgresql.use_pg_rewind": "on",
            "postgresql.authentication.rewind": {"username": "rw", "password": "rw-pw", "sslmode": "require"},
            "postgresql.listen": "127.0.0.1, 10.0.0.1:5433",
        }
    )
    pg = cfg.postgresql
    assert pg.config_dir == "/etc/pg" and pg.bin_dir == "/usr/lib/postgresql/16/bin"
    assert pg.pgpass == os.path.expanduser("~/.pgpass-hasup")
    assert (pg.pg_ctl_timeout, pg.database, pg.use_pg_rewind) == (90, "app", True)
    assert pg.rewind == Credentials("rw", "rw-pw", "require")
    assert pg.listen == "127.0.0.1,10.0.0.1:5433" and pg.listen_hosts == ["127.0.0.1", "10.0.0.1"]
    assert pg.conn_url == "postgres://127.0.0.1:5432/app"


# -- environment ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "read", "expected"),
    [
        ({"PATRONI_NAME": "n2"}, lambda c: c.name, "n2"),
        ({"PATRONI_NAME": "n2", "HASUP_NAME": "n3"}, lambda c: c.name, "n3"),
        ({"HASUP_SCOPE": "other"}, lambda c: c.scope, "other"),
        ({"PATRONI_NAMESPACE": "/ns/"}, lambda c: c.namespace, "ns"),
        ({"PATRONI_LOG_LEVEL": "debug"}, lambda c: c.log.level, "DEBUG"),
        ({"PATRONI_LOGLEVEL": "error", "PATRONI_LOG_LEVEL": "warn"}, lambda c: c.log.level, "WARNING"),
        ({"PATRONI_LOG_FILE_NUM": "7"}, lambda c: c.log.file_num, 7),
        ({"PATRONI_LOG_DIR": "/var/log/hasup"}, lambda c: c.log.dir, "/var/log/hasup"),
        ({"PATRONI_RESTAPI_LISTEN": ":8009"}, lambda c: c.restapi.listen, ":8009"),
        ({"PATRONI_RESTAPI_CONNECT_ADDRESS": "10.0.0.1:8009"}, lambda c: c.restapi.connect_address, "10.0.0.1:8009"),
        (
            {"PATRONI_RESTAPI_USERNAME": "u", "PATRONI_RESTAPI_PASSWORD": "p"},
            lambda c: (c.restapi.username, c.restapi.password),
            ("u", "p"),
        ),
        ({"PATRONI_RESTAPI_CERTFILE": "/c.pem"}, lambda c: c.restapi.api_url, "https://127.0.0.1:8008/patroni"),
        ({"PATRONI_POSTGRESQL_DATA_DIR": "/other"}, lambda c: c.postgresql.config_dir, "/other"),
        ({"PATRONI_POSTGRESQL_CONFIG_DIR": "/etc/pg"}, lambda c: c.postgresql.config_dir, "/etc/pg"),
        ({"PATRONI_POSTGRESQL_LISTEN": "*:5433"}, lambda c: c.postgresql.port, 5433),
        ({"PATRONI_POSTGRESQL_BIN_DIR": "/bin/pg"}, lambda c: c.postgresql.bin_dir, "/bin/pg"),
        ({"PATRONI_POSTGRESQL_PGPASS": "/tmp/pgp"}, lambda c: c.postgresql.pgpass, "/tmp/pgp"),
        ({"PATRONI_SUPERUSER_PASSWORD": "new"}, lambda c: c.postgresql.superuser.password, "new"),
        ({"HASUP_REPLICATION_USERNAME": "rep2"}, lambda c: c.postgresql.replication.username, "rep2"),
        ({"PATRONI_REPLICATION_SSLMODE": "require"}, lambda c: c.postgresql.replication.sslmode, "require"),
        ({"PATRONI_REWIND_USERNAME": "rw"}, lambda c: c.postgresql.rewind.username, "rw"),
        ({"PATRONI_ETCD_HOST": "etcd1"}, lambda c: c.etcd.hosts, (("etcd1", 2379),)),
        ({"PATRONI_ETCD_HOSTS": "e1:1,e2:2"}, lambda c: c.etcd.hosts, (("e1", 1), ("e2", 2))),
        ({"PATRONI_ETCD_HOSTS": "['e1:1', 'e2']"}, lambda c: c.etcd.hosts, (("e1", 1), ("e2", 2379))),
        (
            {"PATRONI_ETCD_URL": "https://e9:2381"},
            lambda c: (c.etcd.hosts, c.etcd.protocol),
            ((("e9", 2381),), "https"),
        ),
        ({"PATRONI_ETCD_PROTOCOL": "https"}, lambda c: c.etcd.protocol, "https"),
        (
            {"PATRONI_ETCD_USERNAME": "eu", "HASUP_ETCD_PASSWORD": "ep"},
            lambda c: (c.etcd.username, c.etcd.password),
            ("eu", "ep"),
        ),
        ({"PATRONI_NAME": ""}, lambda c: c.name, "node1"),  # empty variables are not set
        ({"OTHER_NAME": "x", "PATRONI_UNKNOWN": "y"}, lambda c: c.name, "node1"),
    ],
)
def test_environment_overrides_the_file(env: dict[str, str], read: Any, expected: Any) -> None:
    cfg, _ = load(env=env)
    assert read(cfg) == expected


def test_environment_for_ignored_keys_warns() -> None:
    _, warnings = load(env={"PATRONI_RESTAPI_REQUEST_QUEUE_SIZE": "9", "PATRONI_THREAD_POOL_SIZE": "8"})
    assert "restapi.request_queue_size: not used by hasup yet, ignored" in warnings
    assert "thread_pool_size: not used by hasup yet, ignored" in warnings


def test_environment_dcs_section_other_than_etcd_is_refused() -> None:
    assert f"consul: not supported; {SUPPORTED}" in problems_of({}, {"PATRONI_CONSUL_HOST": "h:8500"})


def test_environment_etcd3_section_beside_the_file_etcd_section_is_refused() -> None:
    assert problems_of({}, {"PATRONI_ETCD3_HOSTS": "h:2379"}) == [BOTH_DCS]


ENV_ONLY = {
    "PATRONI_NAME": "envnode",
    "PATRONI_SCOPE": "envscope",
    "PATRONI_RESTAPI_LISTEN": "0.0.0.0:8008",
    "PATRONI_RESTAPI_CONNECT_ADDRESS": "10.0.0.5:8008",
    "PATRONI_ETCD_HOSTS": "e1:2379,e2:2379",
    "PATRONI_POSTGRESQL_LISTEN": "0.0.0.0:5432",
    "PATRONI_POSTGRESQL_CONNECT_ADDRESS": "10.0.0.5:5432",
    "PATRONI_POSTGRESQL_DATA_DIR": "/data",
    "PATRONI_SUPERUSER_USERNAME": "postgres",
    "PATRONI_REPLICATION_USERNAME": "replicator",
}


def test_missing_file_falls_back_to_environment_variables(tmp_path: Path) -> None:
    cfg, _ = load_config(str(tmp_path / "absent.yml"), ENV_ONLY)
    assert (cfg.name, cfg.scope, cfg.etcd.hosts) == ("envnode", "envscope", (("e1", 2379), ("e2", 2379)))


def test_missing_file_takes_whole_configuration_from_the_environment(tmp_path: Path) -> None:
    text = yaml.safe_dump(MINIMAL)
    # Like Patroni: with PATRONI_CONFIGURATION, the other variables do not apply.
    cfg, _ = load_config(str(tmp_path / "absent.yml"), {"PATRONI_CONFIGURATION": text, "PATRONI_NAME": "x"})
    assert cfg.name == "node1"
    other = yaml.safe_dump(with_changes({"name": "from-hasup"}))
    cfg, _ = load_config(str(tmp_path / "absent"), {"PATRONI_CONFIGURATION": text, "HASUP_CONFIGURATION": other})
    assert cfg.name == "from-hasup"


def test_missing_file_without_environment_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yml")
    with pytest.raises(ConfigError) as info:
        load_config(path, {"HOME": "/root"})
    assert info.value.problems == [f"{path}: no such file"]


def test_missing_environment_configuration_reports_its_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "absent"), {"HASUP_CONFIGURATION": "[1, 2"})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("HASUP_CONFIGURATION: invalid YAML at line")


def test_take_environment_removes_variables_and_reloads_use_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_module, "_taken_environment", None)
    path = tmp_path / "hasup.yml"
    path.write_text(yaml.safe_dump(MINIMAL))
    environ = {"PATRONI_SUPERUSER_PASSWORD": "from-env", "HASUP_NAME": "n9", "PATH": "/bin"}
    taken = take_environment(environ)
    assert environ == {"PATH": "/bin"}
    assert taken == {"PATRONI_SUPERUSER_PASSWORD": "from-env", "HASUP_NAME": "n9"}
    cfg, _ = load_config(str(path))  # a reload: no env given
    assert (cfg.name, cfg.postgresql.superuser.password) == ("n9", "from-env")


# -- files and directories -------------------------------------------------------------------


def test_directory_files_merge_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "10-base.yml").write_text(yaml.safe_dump(MINIMAL))
    (tmp_path / "20-node.yaml").write_text(
        yaml.safe_dump({"name": "node2", "postgresql": {"data_dir": "/data/two"}, "tags": {"x": 1}})
    )
    (tmp_path / "30-drop.yml").write_text("tags: null\nlog:\n  level: DEBUG\n")
    (tmp_path / "99-notes.txt").write_text("name: not-yaml-extension\n")
    (tmp_path / "05-dir.yml").mkdir()
    cfg, _ = load_config(str(tmp_path), {})
    assert cfg.name == "node2"
    assert cfg.postgresql.data_dir == "/data/two"
    assert cfg.postgresql.connect_address == "127.0.0.1:5432"  # deep merge kept the rest
    assert cfg.tags.raw == {}  # a null in a later file removes the key
    assert cfg.log.level == "DEBUG"


def test_directory_reports_every_bad_file(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text("scope: [unclosed\n")
    (tmp_path / "b.yml").write_text("- a list\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path), {})
    first, second = info.value.problems
    assert first.startswith(f"{tmp_path / 'a.yml'}: invalid YAML at line")
    assert second == f"{tmp_path / 'b.yml'}: expected a mapping at the top level"


def test_invalid_yaml_never_quotes_the_offending_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("postgresql:\n  authentication:\n    superuser:\n      password: 'topsecret\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert "topsecret" not in str(info.value)


def test_environment_is_merged_over_a_file(tmp_path: Path) -> None:
    path = tmp_path / "hasup.yml"
    path.write_text(yaml.safe_dump(MINIMAL))
    cfg, _ = load_config(str(path), {"PATRONI_POSTGRESQL_DATA_DIR": "/env/data"})
    assert cfg.postgresql.data_dir == "/env/data" and cfg.postgresql.listen == "127.0.0.1:5432"


# -- errors ---------------------------------------------------------------------------------

ERROR_CASES: list[tuple[dict[str, Any], str | list[str]]] = [
    ({"bootstrap.dcs.loop_wait": "fast"}, "bootstrap.dcs.loop_wait: expected an integer, got 'fast'"),
    ({"postgresql.data_dir": DELETE}, "postgresql.data_dir: required"),
    ({"postgresql.data_dir": ""}, "postgresql.data_dir: required"),
    ({"name": DELETE}, "name: required"),
    ({"scope": DELETE}, "scope: required"),
    ({"restapi": DELETE}, ["restapi.listen: required", "restapi.connect_address: required"]),
    ({"restapi.connect_address": DELETE}, "restapi.connect_address: required"),
    ({"postgresql.listen": DELETE}, "postgresql.listen: required"),
    ({"postgresql.connect_address": DELETE}, "postgresql.connect_address: required"),
    ({"restapi.listen": "8008"}, "restapi.listen: expected host:port, got '8008'"),
    ({"restapi.listen": 8008}, "restapi.listen: expected host:port, got 8008"),
    ({"restapi.connect_address": ":8008"}, "restapi.connect_address: expected host:port, got ':8008'"),
    ({"restapi.connect_address": "h:99999"}, "restapi.connect_address: expected host:port, got 'h:99999'"),
    ({"postgresql.listen": "5432"}, "postgresql.listen: expected host:port, got '5432'"),
    ({"postgresql.listen": "a,,b:5432"}, "postgresql.listen: expected host:port, got 'a,,b:5432'"),
    ({"postgresql.connect_address": "h:port"}, "postgresql.connect_address: expected host:port, got 'h:port'"),
    ({"name": "__patroni_strict_sync_replica_placeholder__"}, "name: this name is reserved for Patroni's internal use"),
    ({"name": True}, "name: expected a string, got True"),
    (
        {"restapi": "x"},
        ["restapi: expected a mapping, got 'x'", "restapi.listen: required", "restapi.connect_address: required"],
    ),
    ({"bootstrap.dcs.ttl": 5}, "bootstrap.dcs.ttl: must be at least 10, got 5"),
    ({"bootstrap.dcs.ttl": True}, "bootstrap.dcs.ttl: expected an integer, got True"),
    ({"bootstrap.dcs.ttl": 30.5}, "bootstrap.dcs.ttl: expected an integer, got 30.5"),
    ({"bootstrap.dcs.loop_wait": 0}, "bootstrap.dcs.loop_wait: must be at least 1, got 0"),
    ({"bootstrap.dcs.retry_timeout": "2"}, "bootstrap.dcs.retry_timeout: must be at least 3, got '2'"),
    (
        {"bootstrap.dcs.maximum_lag_on_failover": -1},
        "bootstrap.dcs.maximum_lag_on_failover: must be at least 0, got -1",
    ),
    ({"bootstrap.dcs.max_timelines_history": -1}, "bootstrap.dcs.max_timelines_history: must be at least 0, got -1"),
    (
        {"bootstrap.dcs.master_start_timeout": "soon"},
        "bootstrap.dcs.master_start_timeout: expected an integer, got 'soon'",
    ),
    ({"bootstrap.dcs.primary_stop_timeout": []}, "bootstrap.dcs.primary_stop_timeout: expected an integer, got []"),
    (
        {"bootstrap.dcs.check_timeline": "maybe"},
        "bootstrap.dcs.check_timeline: expected a boolean (on/off, true/false, yes/no, 1/0), got 'maybe'",
    ),
    (
        {"bootstrap.dcs.postgresql": {"use_pg_rewind": 2}},
        "bootstrap.dcs.postgresql.use_pg_rewind: expected a boolean (on/off, true/false, yes/no, 1/0), got 2",
    ),
    (
        {"bootstrap.dcs.postgresql": {"use_slots": "sometimes"}},
        "bootstrap.dcs.postgresql.use_slots: expected a boolean (on/off, true/false, yes/no, 1/0), got 'sometimes'",
    ),
    (
        {"bootstrap.dcs.postgresql": {"parameters": ["a"]}},
        "bootstrap.dcs.postgresql.parameters: expected a mapping, got ['a']",
    ),
    (
        {"bootstrap.dcs.synchronous_mode": "maybe"},
        "bootstrap.dcs.synchronous_mode: expected a boolean or 'quorum', got 'maybe'",
    ),
    ({"etcd": DELETE}, "etcd: required (or etcd3, for etcd's v3 API)"),
    ({"etcd": {}}, "etcd: one of host, hosts or url is required"),
    (
        {"etcd": {"srv": "example.com"}},
        "etcd: one of host, hosts or url is required (etcd.srv and etcd.proxy are not supported by hasup yet)",
    ),
    ({"etcd.host": "e1:x"}, "etcd.host: expected host:port, got 'e1:x'"),
    ({"etcd": {"hosts": ["e1:2379", "e2:"]}}, "etcd.hosts[1]: expected host:port, got 'e2:'"),
    ({"etcd": {"hosts": 5}}, "etcd.hosts: expected a list or a comma-separated string of host:port, got 5"),
    ({"etcd": {"hosts": " , "}}, "etcd.hosts: must list at least one host:port"),
    ({"etcd": {"hosts": "http://a:1,https://b:2"}}, "etcd.hosts: mixes http:// and https:// endpoints"),
    ({"etcd": {"url": "ftp://e1"}}, "etcd.url: expected http(s)://host[:port], got 'ftp://e1'"),
    ({"etcd.protocol": "ftp"}, "etcd.protocol: expected http or https, got 'ftp'"),
    ({"etcd3": {"hosts": "e:2379"}}, BOTH_DCS),
    ({"consul": {"host": "c:8500"}}, f"consul: not supported; {SUPPORTED}"),
    ({"kubernetes": {}}, f"kubernetes: not supported; {SUPPORTED}"),
    ({"raft": {}}, f"raft: not supported; {SUPPORTED}"),
    ({"zookeeper": {"hosts": ["z:2181"]}}, f"zookeeper: not supported; {SUPPORTED}"),
    ({"exhibitor": {"hosts": ["x"]}}, f"exhibitor: not supported; {SUPPORTED}"),
    ({"etcd": DELETE, "consul": {}}, f"consul: not supported; {SUPPORTED}"),
    (
        {"etcd": DELETE, "etcd3": {"hosts": "e:2379", "protocol": "ftp"}},
        "etcd3.protocol: expected http or https, got 'ftp'",
    ),
    ({"etcd": DELETE, "etcd3": {"url": "ftp://e1"}}, "etcd3.url: expected http(s)://host[:port], got 'ftp://e1'"),
    ({"tags.failover_priority": -1}, "tags.failover_priority: must be at least 0, got -1"),
    (
        {"tags.nofailover": "perhaps"},
        "tags.nofailover: expected a boolean (on/off, true/false, yes/no, 1/0), got 'perhaps'",
    ),
    ({"log.level": "LOUD"}, "log.level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'"),
    ({"log.file_num": "many"}, "log.file_num: expected an integer, got 'many'"),
    ({"watchdog.mode": "sometimes"}, "watchdog.mode: expected one of off, automatic, required, got 'sometimes'"),
    ({"watchdog.safety_margin": -2}, "watchdog.safety_margin: must be at least -1, got -2"),
    ({"postgresql.pg_ctl_timeout": 0}, "postgresql.pg_ctl_timeout: must be at least 1, got 0"),
    (
        {"postgresql.pg_hba": "host all all 0/0 md5"},
        "postgresql.pg_hba: expected a list of strings, got 'host all all 0/0 md5'",
    ),
    ({"bootstrap.pg_hba": [["x"]]}, "bootstrap.pg_hba: expected a list of strings, got [['x']]"),
    ({"postgresql.parameters": "x=1"}, "postgresql.parameters: expected a mapping, got 'x=1'"),
    ({"bootstrap.initdb": ["pgdata"]}, "bootstrap.initdb[0]: option 'pgdata' is set by hasup and may not be given"),
    (
        {"bootstrap.initdb": ["data-checksums", {"username": "x"}]},
        "bootstrap.initdb[1]: option 'username' is set by hasup and may not be given",
    ),
    ({"bootstrap.initdb": ["--nosync"]}, "bootstrap.initdb[0]: option 'nosync' is set by hasup and may not be given"),
    ({"bootstrap.initdb": [{"a": "1", "b": "2"}]}, "bootstrap.initdb[0]: expected a string or a one-key mapping"),
    (
        {"bootstrap.initdb": [{"encoding": ["x"]}]},
        "bootstrap.initdb[0]: expected a string or a one-key mapping of string values",
    ),
    ({"bootstrap.initdb": "data-checksums"}, "bootstrap.initdb: expected a list of options, got 'data-checksums'"),
    (
        {"postgresql.basebackup": [{"format": "tar"}]},
        "postgresql.basebackup[0]: option 'format' is set by hasup and may not be given",
    ),
    (
        {"postgresql.basebackup": {"wal-method": "fetch"}},
        "postgresql.basebackup.wal-method: option 'wal-method' is set by hasup and may not be given",
    ),
    ({"bootstrap.users": ["admin"]}, "bootstrap.users: expected a mapping"),  # may hold passwords: no value
    (
        {"bootstrap.users": {"admin": {"options": "createdb"}}},
        "bootstrap.users.admin.options: expected a list of strings",
    ),
    ({"bootstrap.post_bootstrap": ["a"]}, "bootstrap.post_bootstrap: expected a string, got ['a']"),
    ({"bootstrap.method": "wal_e"}, "bootstrap.method: 'wal_e' needs a section bootstrap.wal_e with its command"),
    (
        {"postgresql.authentication.superuser": {"password": "x"}},
        "postgresql.authentication.superuser.username: required",
    ),
    (
        {"postgresql.authentication": DELETE},
        [
            "postgresql.authentication.superuser.username: required",
            "postgresql.authentication.replication.username: required",
        ],
    ),
    (
        {"postgresql.authentication.rewind": {"password": "x"}},
        "postgresql.authentication.rewind.username: required",
    ),
    (
        {"restapi.authentication": {"username": "u"}},
        "restapi.authentication.password: required when restapi.authentication.username is set",
    ),
    ({"restapi.keyfile": "/k.pem"}, "restapi.keyfile: needs restapi.certfile"),
]


@pytest.mark.parametrize(("changes", "expected"), ERROR_CASES, ids=[str(case[1]).split(":")[0] for case in ERROR_CASES])
def test_each_error_is_one_line_naming_its_key(changes: dict[str, Any], expected: str | list[str]) -> None:
    assert problems_of(changes) == (expected if isinstance(expected, list) else [expected])


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        {
            "bootstrap.dcs.loop_wait": "fast",
            "postgresql.data_dir": DELETE,
            "restapi.listen": "8008",
            "log.level": "LOUD",
            "etcd3": {},
        }
    )
    assert problems == [
        "restapi.listen: expected host:port, got '8008'",
        BOTH_DCS,
        "bootstrap.dcs.loop_wait: expected an integer, got 'fast'",
        "postgresql.data_dir: required",
        "log.level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'",
    ]


@pytest.mark.parametrize(
    "changes",
    [
        {"postgresql.authentication.superuser.password": ["s3cr3t-value"]},
        {"postgresql.authentication.replication": "replicator:s3cr3t-value"},
        {"restapi.authentication": "admin:s3cr3t-value"},
        {"restapi.authentication": {"username": "u", "password": {"s3cr3t-value": 1}}},
        {"etcd": {"url": "http://user:s3cr3t-value@e1:notaport"}},
        {"etcd.password": ["s3cr3t-value"]},
        {"etcd.key_password": ["s3cr3t-value"]},
        {"etcd": DELETE, "etcd3": {"url": "http://user:s3cr3t-value@e1:notaport"}},
        {"etcd": DELETE, "etcd3": {"host": "e1", "password": {"s3cr3t-value": 1}}},
        {"bootstrap.users": {"admin": {"password": ["s3cr3t-value"]}}},
        {"bootstrap.users": {"admin": "s3cr3t-value"}},
    ],
)
def test_no_password_appears_in_problems(changes: dict[str, Any]) -> None:
    problems = problems_of(changes)
    assert problems
    assert not any("s3cr3t-value" in line for line in problems)


def test_no_password_appears_in_warnings() -> None:
    _, warnings = load_config(str(DATA / "patroni-full.yml"), {})
    assert not any("secret" in line for line in warnings)


# -- warnings for keys hasup does not use -------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"restapi.request_queue_size": 9}, "restapi.request_queue_size: not used by hasup yet, ignored"),
        ({"restapi.authentication.realm": "x"}, "restapi.authentication.realm: not used by hasup yet, ignored"),
        ({"log.max_queue_size": 10}, "log.max_queue_size: not used by hasup yet, ignored"),
        ({"postgresql.callbacks.on_demote": "/x"}, "postgresql.callbacks.on_demote: not used by hasup yet, ignored"),
        ({"postgresql.proxy_address": "10.0.0.1:5433"}, "postgresql.proxy_address: not used by hasup yet, ignored"),
        (
            {"postgresql.authentication.superuser.sslrootcert": "/ca"},
            "postgresql.authentication.superuser.sslrootcert: not used by hasup yet, ignored",
        ),
        ({"ctl": {"insecure": True}}, "ctl: not used by hasup yet, ignored"),
        ({"citus": {"group": 0}}, "citus: not used by hasup yet, ignored"),
        ({"thread_pool_size": 5}, "thread_pool_size: not used by hasup yet, ignored"),
        ({"frobnicate": 1}, "frobnicate: not used by hasup yet, ignored"),
        ({"etcd.srv": "example.com"}, "etcd.srv: not used by hasup yet, ignored"),
        ({"etcd.use_proxies": True}, "etcd.use_proxies: not used by hasup yet, ignored"),
        (
            {"bootstrap.dcs.slots": {"s": {"type": "logical"}}},
            "bootstrap.dcs.slots.s: a logical slot needs database and plugin; ignored",
        ),
        (
            {"bootstrap.dcs.postgresql": {"recovery_conf": {}}},
            "bootstrap.dcs.postgresql.recovery_conf: not used by hasup yet, ignored",
        ),
        ({"bootstrap.wal_e": {"command": "x"}}, "bootstrap.wal_e: not used by hasup yet, ignored"),
        ({"bootstrap.users": {"a": {"options": [], "x": 1}}}, "bootstrap.users.a.x: not used by hasup yet, ignored"),
        ({"watchdog.frob": 1}, "watchdog.frob: not used by hasup yet, ignored"),
        ({"synchronous_mode": "quorum"},
         "synchronous_mode: only read from the dynamic configuration (bootstrap.dcs, then etcd), ignored here"),
        (
            {"ttl": 30},
            "ttl: only read from the dynamic configuration (bootstrap.dcs, then etcd), ignored here",
        ),
        (
            {"postgresql.use_slots": False},
            "postgresql.use_slots: only read from the dynamic configuration (bootstrap.dcs, then etcd), ignored here",
        ),
        (
            {"log.format": ["asctime", "message"]},
            "log.format: a list or mapping of fields is read with log.type json only; using the default",
        ),
        (
            {"etcd": {"host": "e1", "hosts": ["e2"]}},
            "etcd.host: ignored because etcd.hosts is set",
        ),
        (
            {"tags.nofailover": True, "tags.failover_priority": 2},
            "tags.failover_priority: contradicts tags.nofailover: true; nofailover wins",
        ),
        (
            {"bootstrap.post_bootstrap": "/a", "bootstrap.post_init": "/b"},
            "bootstrap.post_init: ignored because bootstrap.post_bootstrap is set",
        ),
    ],
)
def test_unused_keys_are_warnings_not_errors(changes: dict[str, Any], line: str) -> None:
    _, warnings = load(changes)
    assert line in warnings


def test_each_ignored_section_warns_once() -> None:
    _, warnings = load({"ctl": {"insecure": True, "authentication": {"username": "u", "password": "p"}}})
    assert warnings == ["ctl: not used by hasup yet, ignored"]


def test_callbacks_are_read_with_their_timeout() -> None:
    cfg, warnings = load({"postgresql.callbacks": {"on_role_change": "/bin/cb 'a b'", "on_reload": "/bin/r"},
                          "postgresql.callback_timeout": "2.5"})
    assert cfg.postgresql.callbacks == {"on_role_change": "/bin/cb 'a b'", "on_reload": "/bin/r"}
    assert cfg.postgresql.callback_timeout == 2.5
    assert not any("callback" in w for w in warnings)
    assert load()[0].postgresql.callback_timeout == 60 and load()[0].postgresql.callbacks == {}


def test_bad_callbacks_are_reported() -> None:
    problems = problems_of({"postgresql.callbacks": {"on_start": "/bin/cb 'unclosed", "on_stop": "  ",
                                                     "on_restart": ["/bin/cb"]},
                            "postgresql.callback_timeout": 0})
    assert "postgresql.callbacks.on_start: expected a command line (No closing quotation), " \
           "got \"/bin/cb 'unclosed\"" in problems
    assert "postgresql.callbacks.on_stop: expected a command line, got '  '" in problems
    assert "postgresql.callbacks.on_restart: expected a string, got ['/bin/cb']" in problems
    assert "postgresql.callback_timeout: must be at least 1, got 0" in problems


def test_pre_promote_and_before_stop_are_read_and_bad_ones_reported() -> None:
    cfg, warnings = load({"postgresql.pre_promote": "/bin/fence --now", "postgresql.before_stop": "/bin/drain 'a b'"})
    assert (cfg.postgresql.pre_promote, cfg.postgresql.before_stop) == ("/bin/fence --now", "/bin/drain 'a b'")
    assert not any("pre_promote" in w or "before_stop" in w for w in warnings)
    assert (cfg.postgresql.promote_hook_time, cfg.postgresql.stop_hook_time) == (60, 60)
    unset = load()[0].postgresql
    assert (unset.pre_promote, unset.before_stop, unset.promote_hook_time, unset.stop_hook_time) == ("", "", 0, 0)
    problems = problems_of({"postgresql.pre_promote": "/bin/x 'unclosed", "postgresql.before_stop": ["/bin/x"]})
    assert "postgresql.pre_promote: expected a command line (No closing quotation), got \"/bin/x 'unclosed\"" \
        in problems
    assert "postgresql.before_stop: expected a string, got ['/bin/x']" in problems


# -- safety settings hasup must refuse ---------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        # Read from bootstrap.dcs only, as Patroni: at the top level it would bootstrap a primary cluster.
        ({"standby_cluster": {"host": "10.0.0.1"}}, "standby_cluster: only read from bootstrap.dcs"),
    ],
)
def test_safety_settings_are_refused_with_a_reason(changes: dict[str, Any], line: str) -> None:
    problems = problems_of(changes)
    assert len(problems) == 1
    assert problems[0].startswith(line)
    assert "refusing to start rather than" in problems[0]


@pytest.mark.parametrize(
    ("section", "line"),
    [
        ({"host": "10.0.0.1", "port": 70000}, "bootstrap.dcs.standby_cluster: port: must be at most 65535"),
        ({"host": "10.0.0.1", "port": "x"}, "bootstrap.dcs.standby_cluster: port: expected an integer"),
        ({"host": "a b"}, "bootstrap.dcs.standby_cluster: host: expected a host name"),
        ({"host": "h", "primary_slot_name": "Bad-Slot"}, "bootstrap.dcs.standby_cluster: primary_slot_name:"),
        ({"host": "h", "recovery_min_apply_delay": "soon"},
         "bootstrap.dcs.standby_cluster: recovery_min_apply_delay: expected milliseconds"),
        ({"host": "h", "recovery_min_apply_delay": -1}, "bootstrap.dcs.standby_cluster: recovery_min_apply_delay:"),
        ({"restore_command": "'unclosed"}, "bootstrap.dcs.standby_cluster: restore_command: expected a command"),
        ({"host": "h", "archive_cleanup_command": "x\ny"}, "bootstrap.dcs.standby_cluster: archive_cleanup_command:"),
        ({"host": "h", "create_replica_methods": "basebackup"},
         "bootstrap.dcs.standby_cluster: create_replica_methods: expected a list"),
        ({"primary_slot_name": "s"}, "bootstrap.dcs.standby_cluster: expected at least one of host, port, "
                                     "restore_command"),
        ("host=x", "bootstrap.dcs.standby_cluster: expected a mapping"),
    ],
)
def test_a_bad_standby_cluster_section_is_one_line(section: Any, line: str) -> None:
    problems = problems_of({"bootstrap.dcs.standby_cluster": section})
    assert len(problems) == 1 and problems[0].startswith(line), problems


def test_a_standby_cluster_section_is_accepted_with_every_key() -> None:
    section = {"host": "10.0.0.1", "port": 5433, "primary_slot_name": "standby_1",
               "create_replica_methods": ["basebackup"], "restore_command": "cp /archive/%f %p",
               "archive_cleanup_command": "pg_archivecleanup /archive %r", "recovery_min_apply_delay": "5min"}
    cfg, warnings = load({"bootstrap.dcs.standby_cluster": section})
    assert warnings == [] and cfg.bootstrap.dcs["standby_cluster"] == section


@pytest.mark.parametrize(
    "changes",
    [
        {"bootstrap.dcs.synchronous_mode": False},
        {"bootstrap.dcs.synchronous_mode": "off"},
        {"bootstrap.dcs.synchronous_mode": "on", "bootstrap.dcs.synchronous_mode_strict": "yes",
         "bootstrap.dcs.synchronous_node_count": 2},
        {"bootstrap.dcs.synchronous_mode_strict": "no"},
        {"bootstrap.dcs.failsafe_mode": 0},
        {"bootstrap.dcs.standby_cluster": {}},
        {"bootstrap.dcs.standby_cluster": None},
        {"bootstrap.dcs.failsafe_mode": True},
        {"bootstrap.dcs.synchronous_mode": "quorum", "bootstrap.dcs.synchronous_node_count": 2,
         "bootstrap.dcs.maximum_lag_on_syncnode": -1},
        {"watchdog.mode": "off"},
    ],
)
def test_falsy_safety_settings_are_fine(changes: dict[str, Any]) -> None:
    _, warnings = load(changes)
    assert warnings == []


def test_safety_settings_stay_in_the_bootstrap_dcs() -> None:
    cfg, _ = load({"bootstrap.dcs.synchronous_mode": False, "bootstrap.dcs.failsafe_mode": "off"})
    assert cfg.bootstrap.dcs == {"synchronous_mode": False, "failsafe_mode": "off"}


# -- value forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True), (False, False), (1, True), (0, False),
        ("on", True), ("ON", True), ("true", True), ("True", True), ("yes", True), ("1", True), (" Yes ", True),
        ("off", False), ("Off", False), ("false", False), ("no", False), ("NO", False), ("0", False),
    ],
)  # fmt: skip
def test_boolean_forms(value: Any, expected: bool) -> None:
    assert to_bool(value) is expected


@pytest.mark.parametrize("value", ["maybe", 2, -1, 1.0, None, [], "", "y"])
def test_boolean_rejects(value: Any) -> None:
    with pytest.raises(Invalid):
        to_bool(value)


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("automatic", "automatic"), ("auto", "automatic"), ("AUTO", "automatic"),
        ("off", "off"), ("disable", "off"), ("disabled", "off"), (False, "off"),
        ("required", "required"), ("require", "required"),
    ],
)  # fmt: skip
def test_watchdog_mode_aliases(value: Any, mode: str) -> None:
    assert to_watchdog_mode(value) == mode


@pytest.mark.parametrize("text", ["on", "true", "yes", "'on'", "'ON'"])
def test_watchdog_mode_on_is_read_as_automatic_with_one_warning(text: str) -> None:
    cfg, warnings = load_config_text(yaml.safe_dump(MINIMAL) + f"watchdog:\n  mode: {text}\n")
    assert cfg.watchdog.mode == "automatic"
    said = [w for w in warnings if w.startswith("watchdog.mode:")]
    assert len(said) == 1 and said[0].endswith("read as automatic")


def test_watchdog_mode_off_from_yaml_false() -> None:
    cfg, _ = load_config_text(yaml.safe_dump(MINIMAL) + "watchdog:\n  mode: off\n  safety_margin: -1\n")
    assert (cfg.watchdog.mode, cfg.watchdog.safety_margin) == ("off", -1)


@pytest.mark.parametrize(
    ("level", "stored"),
    [("debug", "DEBUG"), ("INFO", "INFO"), ("warn", "WARNING"), ("WARNING", "WARNING"), ("error", "ERROR"),
     ("FATAL", "CRITICAL"), ("critical", "CRITICAL")],
)  # fmt: skip
def test_log_levels_are_normalised(level: str, stored: str) -> None:
    cfg, _ = load({"log.level": level, "log.traceback_level": level})
    assert cfg.log.level == cfg.log.traceback_level == stored


@pytest.mark.parametrize(
    ("etcd", "hosts", "protocol"),
    [
        ({"host": "e1"}, (("e1", 2379),), "http"),
        ({"host": "e1:4001"}, (("e1", 4001),), "http"),
        ({"host": "e1", "port": 4001}, (("e1", 4001),), "http"),
        ({"host": "[::1]:2380"}, (("::1", 2380),), "http"),
        ({"hosts": ["e1:1", "e2"]}, (("e1", 1), ("e2", 2379)), "http"),
        ({"hosts": "e1:1, e2:2,"}, (("e1", 1), ("e2", 2)), "http"),
        ({"hosts": ["https://e1:1", "https://e2:2"]}, (("e1", 1), ("e2", 2)), "https"),
        ({"hosts": ["e1:1"], "protocol": "HTTPS"}, (("e1", 1),), "https"),
        ({"url": "https://e1:2381"}, (("e1", 2381),), "https"),
        ({"url": "http://e1"}, (("e1", 2379),), "http"),
    ],
)
@pytest.mark.parametrize("section", ["etcd", "etcd3"])
def test_etcd_endpoint_forms(section: str, etcd: dict[str, Any], hosts: tuple[tuple[str, int], ...],
                             protocol: str) -> None:
    cfg, _ = load({"etcd": etcd} if section == "etcd" else {"etcd": DELETE, "etcd3": etcd})
    assert (cfg.etcd.hosts, cfg.etcd.protocol, cfg.etcd.section) == (hosts, protocol, section)
    assert cfg.etcd.api_version == (3 if section == "etcd3" else 2)


def test_etcd_url_credentials_are_used_when_not_given_separately() -> None:
    cfg, _ = load({"etcd": {"url": "http://user:pw@e1:2379"}})
    assert (cfg.etcd.username, cfg.etcd.password) == ("user", "pw")
    assert "pw" not in repr(cfg.etcd)


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        (
            ["data-checksums", {"encoding": "UTF8"}, {"locale": "en_US.UTF8"}],
            ("--data-checksums", "--encoding=UTF8", "--locale=en_US.UTF8"),
        ),
        ({"encoding": "UTF8", "locale": "C"}, ("--encoding=UTF8", "--locale=C")),
        (["--data-checksums", {"auth-local": "'peer'"}], ("--data-checksums", "--auth-local=peer")),
        ([{"wal-segsize": 64}], ("--wal-segsize=64",)),
        ([], ()),
    ],
)
def test_initdb_options_are_rendered(value: Any, rendered: tuple[str, ...]) -> None:
    cfg, _ = load({"bootstrap.initdb": value})
    assert cfg.bootstrap.initdb == rendered


def test_basebackup_options_are_rendered() -> None:
    cfg, _ = load({"postgresql.basebackup": [{"max-rate": "100M"}, {"checkpoint": "fast"}, "verbose"]})
    assert cfg.postgresql.basebackup == ("--max-rate=100M", "--checkpoint=fast", "--verbose")


def test_bootstrap_users_pg_hba_and_post_init_alias() -> None:
    cfg, _ = load(
        {
            "bootstrap.users": {"admin": {"password": 1234, "options": ["createrole", "createdb"]}, "app": None},
            "bootstrap.pg_hba": ["host all all 0.0.0.0/0 md5"],
            "bootstrap.post_init": "/usr/local/bin/setup.sh",
        }
    )
    boot = cfg.bootstrap
    assert boot.users["admin"].password == "1234" and boot.users["admin"].options == ("createrole", "createdb")
    assert boot.users["app"].password is None and boot.users["app"].options == ()
    assert boot.pg_hba == ("host all all 0.0.0.0/0 md5",)
    assert boot.post_bootstrap == "/usr/local/bin/setup.sh"


def test_tags_are_typed_and_kept_raw() -> None:
    tags = {"nofailover": "yes", "noloadbalance": "on", "clonefrom": 1, "nosync": "false", "dc": "eu-1"}
    cfg, warnings = load({"tags": tags})
    assert cfg.tags.nofailover and cfg.tags.noloadbalance and cfg.tags.clonefrom and not cfg.tags.nosync
    assert cfg.tags.raw == tags
    assert warnings == []
    cfg, _ = load({"tags": {"failover_priority": "0"}})
    assert cfg.tags.failover_priority == 0


def test_numbers_given_as_strings_are_accepted() -> None:
    cfg, _ = load({"bootstrap.dcs.ttl": "20", "log.file_size": "1000", "watchdog.safety_margin": "-1", "name": 42})
    assert (cfg.log.file_size, cfg.watchdog.safety_margin, cfg.name) == (1000, -1, "42")
    assert cfg.bootstrap.dcs["ttl"] == "20"  # kept as given; initial_dcs_config normalises


def test_raw_holds_the_merged_configuration() -> None:
    cfg, _ = load(env={"PATRONI_NAME": "n7"})
    assert cfg.raw["name"] == "n7" and cfg.raw["scope"] == "main"


def test_reprs_hide_passwords() -> None:
    cfg, _ = load({"restapi.authentication": {"username": "u", "password": "rest-pw"}})
    assert "su-pw" not in repr(cfg) and "repl-pw" not in repr(cfg) and "rest-pw" not in repr(cfg)


# -- the full Patroni sample -------------------------------------------------------------------


def test_full_patroni_configuration_loads_with_warnings() -> None:
    cfg, warnings = load_config(str(DATA / "patroni-full.yml"), {})
    for expected in (
        "restapi.request_queue_size: not used by hasup yet, ignored",
        "ctl: not used by hasup yet, ignored",
        "postgresql.use_unix_socket: not used by hasup yet, ignored",
    ):
        assert expected in warnings
    assert cfg.postgresql.create_replica_methods == ("basebackup",) and cfg.postgresql.replica_methods == {}
    assert not any(w.startswith("postgresql.callback") for w in warnings)
    assert cfg.postgresql.callbacks == dict.fromkeys(("on_start", "on_stop", "on_role_change"),
                                                     "/usr/local/bin/callback.sh")
    assert not any(w.startswith("bootstrap.dcs.postgresql.parameters") for w in warnings)
    assert all(": " in w for w in warnings)
    assert (cfg.scope, cfg.namespace, cfg.name) == ("batman", "service", "postgresql0")
    assert cfg.watchdog.mode == "automatic"
    assert cfg.etcd.hosts == (("10.0.0.21", 2379), ("10.0.0.22", 2379), ("10.0.0.23", 2379))
    assert cfg.bootstrap.initdb == ("--encoding=UTF8", "--data-checksums", "--locale=en_US.UTF8")
    assert cfg.postgresql.rewind.username == "rewind_user"
    assert cfg.restapi.api_url == "https://10.0.0.11:8008/patroni"
    assert cfg.restapi.allowlist == ("10.0.0.0/24", "127.0.0.1") and cfg.restapi.allowlist_include_members
    assert cfg.restapi.http_extra_headers == {"X-Frame-Options": "SAMEORIGIN"}
    assert not any(w.startswith(("restapi.allowlist", "restapi.http_extra")) for w in warnings)
    assert cfg.bootstrap.users["admin"].options == ("createrole", "createdb")
    dynamic, notes = parse_dynamic(cfg.bootstrap.dcs)
    assert notes == []
    assert dynamic.use_pg_rewind and dynamic.check_timeline and dynamic.parameters["max_connections"] == 200


def test_restapi_access_and_tls_settings() -> None:
    cfg, warnings = load({"restapi.certfile": "/c.pem", "restapi.keyfile": "/k.pem", "restapi.keyfile_password": "kpw",
                          "restapi.cafile": "/ca.pem", "restapi.verify_client": "Required",
                          "restapi.allowlist": ["10.0.0.0/8", "db1"], "restapi.allowlist_include_members": "on",
                          "restapi.http_extra_headers": {"X-A": 1}, "restapi.https_extra_headers": {"X-B": "b"}},
                         env={"PATRONI_RESTAPI_ALLOWLIST": "[10.0.0.1]"})
    api = cfg.restapi
    assert (api.keyfile_password, api.cafile, api.verify_client) == ("kpw", "/ca.pem", "required")
    assert api.allowlist == ("10.0.0.1",) and api.allowlist_include_members is True
    assert api.http_extra_headers == {"X-A": "1"} and api.https_extra_headers == {"X-B": "b"}
    assert "kpw" not in repr(cfg) and not any(w.startswith("restapi") for w in warnings)
    assert (RestApiConfig("h:1", "h:1").verify_client, RestApiConfig("h:1", "h:1").allowlist) == ("none", ())


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"restapi.verify_client": "maybe"}, "restapi.verify_client: expected none, optional or required, got 'maybe'"),
        ({"restapi.verify_client": "optional"}, "restapi.verify_client: needs restapi.certfile"),
        ({"restapi.allowlist": "10.0.0.1"}, "restapi.allowlist: expected a list of strings, got '10.0.0.1'"),
        ({"restapi.http_extra_headers": ["X"]}, "restapi.http_extra_headers: expected a mapping, got ['X']"),
    ],
)
def test_restapi_access_settings_problems(changes: dict[str, Any], line: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(changes)
    assert line in info.value.problems


@pytest.mark.parametrize("mode", ["required", "Require"])
def test_watchdog_required_is_accepted(mode: str) -> None:
    cfg, _ = load({"watchdog.mode": mode, "watchdog.driver": "testing", "watchdog.device": "/run/wd.sock"})
    assert (cfg.watchdog.mode, cfg.watchdog.driver, cfg.watchdog.device) == ("required", "testing", "/run/wd.sock")


def test_unknown_watchdog_driver_is_an_error() -> None:
    assert problems_of({"watchdog.driver": "magic"}) == ["watchdog.driver: expected default or testing, got 'magic'"]


UNPROTECTED = "restapi.listen: UNPROTECTED: "


@pytest.mark.parametrize(
    ("changes", "warned"),
    [
        ({"restapi.listen": "0.0.0.0:8008"}, True),
        ({"restapi.listen": ":8008"}, True),
        ({"restapi.listen": "[::]:8008"}, True),
        ({"restapi.listen": "db1.example.com:8008"}, True),  # a name may resolve anywhere
        ({"restapi.listen": "10.0.0.11:8008"}, True),
        ({"restapi.listen": "127.0.0.2:8008"}, False),
        ({"restapi.listen": "[::1]:8008"}, False),
        ({"restapi.listen": "localhost:8008"}, False),
        ({"restapi.listen": "0.0.0.0:8008", "restapi.authentication": {"username": "u", "password": "p"}}, False),
        ({"restapi.listen": "0.0.0.0:8008", "restapi.allowlist": ["10.0.0.0/24"]}, False),
        ({"restapi.listen": "0.0.0.0:8008", "restapi.allowlist_include_members": True}, False),
        ({"restapi.listen": "0.0.0.0:8008", "restapi.certfile": "/c.pem", "restapi.verify_client": "required"},
         False),
    ],
)
def test_a_rest_api_open_beyond_loopback_without_protection_is_warned_about(
        changes: dict[str, Any], warned: bool) -> None:
    cfg, warnings = load(changes)
    unprotected = [w for w in warnings if w.startswith(UNPROTECTED)]
    assert len(unprotected) == int(warned) and cfg.restapi.unprotected is warned  # /metrics shows the same
    if warned:
        assert "restapi.authentication" in unprotected[0] and "PATCH /config" in unprotected[0]


def test_verify_client_optional_is_accepted_with_a_warning() -> None:
    _, warnings = load({"restapi.certfile": "/c.pem", "restapi.verify_client": "optional"})
    assert ("restapi.verify_client: optional is accepted as in Patroni but protects less: clients without a "
            "certificate reach every endpoint, the unsafe ones included; use required, or "
            "restapi.authentication") in warnings


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"bootstrap.dcs.ttl": 3601}, "bootstrap.dcs.ttl: must be at most 3600, got 3601"),
        ({"bootstrap.dcs.retry_timeout": "99999"}, "bootstrap.dcs.retry_timeout: must be at most 3600, got '99999'"),
        ({"bootstrap.dcs.master_start_timeout": -1}, "bootstrap.dcs.master_start_timeout: must be at least 0, got -1"),
        ({"bootstrap.dcs.synchronous_node_count": 1001},
         "bootstrap.dcs.synchronous_node_count: must be at most 1000, got 1001"),
        ({"etcd.port": "65536"}, "etcd.port: must be at most 65535, got '65536'"),
        ({"etcd.host": "127.0.0.1:\u00b2"}, "etcd.host: expected host:port, got '127.0.0.1:\u00b2'"),
        ({"postgresql.callback_timeout": "nan"}, "postgresql.callback_timeout: expected a finite number of seconds, "
                                                 "got 'nan'"),
        ({"postgresql.health_deadline": 10**18}, "postgresql.health_deadline: must be at most 3600, "
                                                 "got 1000000000000000000"),
        ({"log.file_num": 10**6}, "log.file_num: must be at most 1000, got 1000000"),
        ({"watchdog.safety_margin": 86400}, "watchdog.safety_margin: must be at most 3600, got 86400"),
        ({"vip.address": "10.0.0.100", "vip.interface": "eth0", "vip.prefix": 10**9},
         "vip.prefix: must be at most 128, got 1000000000"),
    ],
)
def test_every_number_has_a_maximum(changes: dict[str, Any], line: str) -> None:
    assert line in problems_of(changes)


def test_a_key_with_a_line_break_is_still_one_line() -> None:
    _, warnings = load({"bogus\nkey": 1})
    assert "'bogus\\nkey': not used by hasup yet, ignored" in warnings


def test_a_broken_deadline_rule_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fixed figures hold (tests/unit/test_timing.py); were one changed to break a rule, hasup must
    # refuse to start with that rule's line, like any other wrong value.
    monkeypatch.setattr(Figures, "problems", lambda self: ["timing: /primary may answer from a probe 7.5 s old"])
    assert problems_of({}) == ["timing: /primary may answer from a probe 7.5 s old"]
    assert problems_of({"postgresql.health_deadline": 1}) == [
        "postgresql.health_deadline: must be at least 3, got 1", "timing: /primary may answer from a probe 7.5 s old"]
