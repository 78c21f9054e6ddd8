"""Rendering of PostgreSQL's configuration (pure functions)."""

from __future__ import annotations

import pytest

from hasup.config import ConfigError, DynamicConfig, load_config_text
from hasup.postgresql import conf

BASE = """
scope: main
name: node1
restapi: {listen: 127.0.0.1:8008, connect_address: 127.0.0.1:8008}
etcd: {host: 127.0.0.1:2379}
postgresql:
  listen: 127.0.0.1,10.0.0.5:5433
  connect_address: 10.0.0.5:5433
  data_dir: /data/pg
  pgpass: /run/hasup/pgpass
  authentication:
    superuser: {username: postgres, password: "s:ecret\\\\x"}
    replication: {username: replicator, password: rep-pw}
  parameters: {work_mem: 8MB, max_connections: 500, port: 9999}
"""


def cfg(extra: str = ""):
    return load_config_text(BASE + extra)[0]


def with_parameters(more: str):
    return load_config_text(BASE.replace("parameters: {", "parameters: {" + more + ", "))[0]


def test_controlled_defaults_and_identity():
    params, warnings = conf.effective_parameters(cfg(), DynamicConfig())
    assert params["max_connections"] == 100  # local value of a controlled parameter is ignored...
    assert any("postgresql.parameters.max_connections" in w for w in warnings)  # ...and said so
    assert any("postgresql.parameters.port" in w for w in warnings)
    assert params["work_mem"] == "8MB"
    assert (params["max_locks_per_transaction"], params["max_worker_processes"],
            params["max_prepared_transactions"]) == (64, 8, 0)
    assert (params["wal_level"], params["wal_log_hints"], params["track_commit_timestamp"]) == ("replica", "on", "off")
    assert params["listen_addresses"] == "127.0.0.1,10.0.0.5" and params["port"] == 5433
    assert params["cluster_name"] == "main"


def test_dynamic_parameters_apply_with_minimums():
    dyn = DynamicConfig(parameters={"max_connections": 300, "max_wal_senders": 1, "wal_level": "hot_standby"})
    params, warnings = conf.effective_parameters(cfg(), dyn)
    assert params["max_connections"] == 300
    assert params["max_wal_senders"] == 10 and any("max_wal_senders" in w for w in warnings)
    assert params["wal_level"] == "replica"


def test_postgresql_conf_includes_base_first_and_keeps_wal_keep_off_the_command_line():
    c = cfg()
    params, _ = conf.effective_parameters(c, DynamicConfig())
    text = conf.render_postgresql_conf(c, params, {"primary_conninfo": "host=x"})
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "include '/data/pg/postgresql.base.conf'"
    assert "hba_file = '/data/pg/pg_hba.conf'" in lines and "primary_conninfo = 'host=x'" in lines
    opts = conf.command_line_options(params)
    assert "--max_connections=100" in opts and not any(o.startswith("--wal_keep_size") for o in opts)


def test_custom_conf_replaces_the_base():
    c = cfg("  custom_conf: /etc/pg/custom.conf\n")
    text = conf.render_postgresql_conf(c, {}, {})
    assert "include '/etc/pg/custom.conf'" in text


def test_recovery_settings_carry_no_password():
    c = cfg()
    rec = conf.recovery_parameters(c, "postgres://10.0.0.7:5432/postgres", None)
    info = rec["primary_conninfo"]
    assert "host=10.0.0.7" in info and "port=5432" in info and "user=replicator" in info
    assert "application_name=node1" in info and "passfile=/run/hasup/pgpass" in info
    assert "rep-pw" not in info and "password" not in info
    assert rec["recovery_target_timeline"] == "latest"


def test_pgpass_escapes_separators():
    line = conf.pgpass_line("*", "*", cfg().postgresql.superuser)
    assert line == "*:*:*:postgres:s\\:ecret\\\\x"


def test_pg_hba_local_wins_over_dynamic():
    dyn = DynamicConfig(pg_hba=("host all all 0.0.0.0/0 md5",))
    assert "0.0.0.0/0" in (conf.render_pg_hba(cfg(), dyn) or "")
    local = cfg("  pg_hba: [local all all trust]\n")
    assert conf.render_pg_hba(local, dyn) == "# Written by hasup from postgresql.pg_hba\nlocal all all trust\n"
    assert conf.render_pg_hba(cfg(), DynamicConfig()) is None



def test_only_the_parameters_that_must_stay_go_on_the_command_line():
    c = with_parameters("archive_command: 'curl -u user:s3cret https://x/%f', hasup_test.token: s3cret")
    params, _ = conf.effective_parameters(c, DynamicConfig(parameters={"max_connections": 300}))
    opts = conf.command_line_options(params)
    names = {o.partition("=")[0].removeprefix("--") for o in opts}
    assert names == {"listen_addresses", "port", "cluster_name", "max_connections", "max_wal_senders",
                     "max_replication_slots", "max_worker_processes", "max_prepared_transactions",
                     "max_locks_per_transaction", "track_commit_timestamp", "wal_level", "wal_log_hints",
                     "hot_standby"}
    assert "--max_connections=300" in opts and not any("s3cret" in o for o in opts)
    text = conf.render_postgresql_conf(c, params, {})
    assert "archive_command = 'curl -u user:s3cret https://x/%f'" in text and "hasup_test.token = 's3cret'" in text


def test_values_are_escaped_so_postgresql_conf_stays_one_setting_per_line():
    assert conf.quote("a\nb\\c'd\te") == "'a\\nb\\\\c''d\\te'"
    text = conf.render_postgresql_conf(cfg(), {"application_name": "x\ninclude '/etc/shadow'"}, {})
    assert "include '/etc/shadow'" not in text.splitlines()
    assert "application_name = 'x\\ninclude ''/etc/shadow'''" in text


def test_names_that_are_not_parameters_never_reach_postgresql_conf():
    dyn = DynamicConfig(parameters={"work_mem = '1GB'": 1, "include": "/etc/shadow", "Port": 1,
                                    "HBA_FILE": "/tmp/hba", "temp_buffers": None, "Work_Mem": "2MB"})
    params, warnings = conf.effective_parameters(cfg(), dyn)
    assert "work_mem = '1GB'" not in params and "include" not in params and "temp_buffers" not in params
    assert params["port"] == 5433 and "Port" not in params and "HBA_FILE" not in params
    assert params["work_mem"] == "8MB" and "Work_Mem" not in params  # local wins, one spelling kept
    assert sum("ignored" in w for w in warnings) >= 4


def test_the_file_refuses_a_parameter_name_with_an_equals_sign():
    with pytest.raises(ConfigError) as info:
        with_parameters("'port=1 --hba_file': x")
    assert info.value.problems == ["postgresql.parameters: 'port=1 --hba_file': not a parameter name (letters, "
                                   "digits and _, with one dot for an extension's parameter)"]
