import json
import logging
import os
import socket
import stat
import sys

import pytest

from hasup import ipc
from hasup.config import load_config_text
from hasup.supervision.logwriter import LOG_FILE, Levels, LogWriter, tracebacks_visible
from hasup.worker import PipeLogHandler, WorkerContext, answer_ping

BASE = """
scope: main
name: n1
restapi: {listen: 127.0.0.1:8008, connect_address: 10.0.0.1:8008}
etcd: {host: 127.0.0.1:2379}
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 10.0.0.1:5432
  data_dir: /tmp/d
  authentication: {superuser: {username: postgres}, replication: {username: replicator}}
"""


def log_config(text: str):
    cfg, _ = load_config_text(BASE + text)
    return cfg.log


def record(message: str, level: int = logging.INFO, logger: str = "hasup.election", role: str = "election"):
    return ipc.LogRecord(level, logger, message, 1_700_000_000.25, role)


def test_rotation_keeps_the_current_file_and_file_num_rotated_ones(tmp_path):
    cfg = log_config(f"log: {{dir: {tmp_path}, file_size: 2000, file_num: 3}}")
    writer = LogWriter(cfg)
    for i in range(400):
        writer.write(record(f"line {i} " + "x" * 40), "election")
    writer.flush()
    assert sorted(os.listdir(tmp_path)) == [LOG_FILE, f"{LOG_FILE}.1", f"{LOG_FILE}.2", f"{LOG_FILE}.3"]
    assert all(os.path.getsize(tmp_path / name) <= 2000 for name in os.listdir(tmp_path))
    last = (tmp_path / LOG_FILE).read_text().splitlines()[-1]
    assert "[election] line 399" in last


def test_log_file_mode(tmp_path):
    writer = LogWriter(log_config(f"log: {{dir: {tmp_path}, mode: 0o640}}"))
    writer.write(record("hello"), "api")
    writer.flush()
    assert stat.S_IMODE(os.stat(tmp_path / LOG_FILE).st_mode) == 0o640


def test_every_plain_line_names_its_worker(tmp_path):
    writer = LogWriter(log_config(f"log: {{dir: {tmp_path}, format: '%(levelname)s %(name)s %(message)s'}}"))
    writer.write(record("from election"), "election")
    writer.write(record("from api", logger="hasup.api", role="api"), "api")
    writer.flush()
    assert (tmp_path / LOG_FILE).read_text().splitlines() == [
        "INFO hasup.election [election] from election", "INFO hasup.api [api] from api"]


def test_json_lines_carry_fields_aliases_static_fields_and_role(tmp_path):
    cfg = log_config(f"""
log:
  type: json
  dir: {tmp_path}
  format: [asctime, {{levelname: level}}, message, name]
  dateformat: '%Y'
  static_fields: {{app: hasup}}
""")
    writer = LogWriter(cfg)
    writer.write(record("hi \"there\""), "election")
    writer.flush()
    line = json.loads((tmp_path / LOG_FILE).read_text())
    assert line == {"asctime": "2023", "level": "INFO", "message": 'hi "there"', "name": "hasup.election",
                    "app": "hasup", "role": "election"}


def test_json_format_string_names_the_fields():
    cfg = log_config("log: {type: json, format: '%(asctime)s %(levelname)s: %(message)s'}")
    assert cfg.json_fields == (("asctime", "asctime"), ("levelname", "levelname"), ("message", "message"))


def test_per_logger_levels(tmp_path):
    cfg = log_config(f"log: {{dir: {tmp_path}, level: WARNING, loggers: {{hasup.election: DEBUG, hasup: ERROR}}}}")
    levels = Levels(cfg.level, cfg.loggers)
    assert levels.for_logger("hasup.election") == logging.DEBUG
    assert levels.for_logger("hasup.election.x") == logging.DEBUG
    assert levels.for_logger("hasup.electionx") == logging.ERROR
    assert levels.for_logger("gunicorn.error") == logging.WARNING
    writer = LogWriter(cfg)
    writer.write(record("kept", logging.DEBUG), "election")
    writer.write(record("dropped", logging.WARNING, logger="hasup.api"), "api")
    writer.write(record("kept too", logging.WARNING, logger="gunicorn.error"), "api")
    writer.flush()
    text = (tmp_path / LOG_FILE).read_text()
    assert "kept" in text and "kept too" in text and "dropped" not in text


@pytest.mark.parametrize(("level", "traceback_level", "visible"), [
    ("INFO", "ERROR", True), ("INFO", "DEBUG", False), ("DEBUG", "DEBUG", True), ("ERROR", "WARNING", False),
])
def test_traceback_level(level, traceback_level, visible):
    assert tracebacks_visible(log_config(f"log: {{level: {level}, traceback_level: {traceback_level}}}")) is visible


def test_supervisor_tracebacks_follow_traceback_level(tmp_path):
    for tb_level, expected in (("ERROR", True), ("DEBUG", False)):
        d = tmp_path / tb_level
        d.mkdir()
        writer = LogWriter(log_config(f"log: {{dir: {d}, traceback_level: {tb_level}}}"))
        try:
            raise ValueError("boom")
        except ValueError:
            rec = logging.LogRecord("hasup.supervisor", logging.ERROR, "", 0, "failed", None, sys.exc_info())
        writer.emit(rec, "supervisor")
        writer.flush()
        text = (d / LOG_FILE).read_text()
        assert "[supervisor] failed" in text
        assert ("Traceback" in text) is expected


def test_bad_log_settings_are_reported():
    from hasup.config import ConfigError
    with pytest.raises(ConfigError) as exc:
        log_config("log: {type: xml, loggers: {a: LOUD}, mode: 0o1777}")
    problems = "\n".join(exc.value.problems)
    assert "log.type" in problems and "log.loggers.a" in problems and "log.mode" in problems


def test_a_missing_log_dir_falls_back_to_stderr(tmp_path, capsys):
    writer = LogWriter(log_config(f"log: {{dir: {tmp_path / 'missing'}}}"))
    assert "log.dir: cannot write" in writer.problem and writer.cfg.dir is None
    writer.write(record("still logged"), "election")
    writer.flush()
    assert "[election] still logged" in capsys.readouterr().err
    # A reload to a directory that exists starts writing there.
    writer.reconfigure(log_config(f"log: {{dir: {tmp_path}}}"))
    writer.write(record("in the file"), "election")
    writer.flush()
    assert "[election] in the file" in (tmp_path / LOG_FILE).read_text()


# -- lost records: counted where they are lost, added up by the supervisor for /metrics ------------------------


def test_a_record_the_destination_refuses_is_counted_as_lost(tmp_path):
    writer = LogWriter(log_config(""))

    class Refusing(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise OSError(28, "No space left on device")

    writer.handler = Refusing()
    writer.write(record("one"), "election")
    writer.write(record("two"), "election")
    assert writer.records_lost == 2


def test_a_worker_counts_records_its_full_pipe_dropped_and_says_so_in_its_pongs(tmp_path):
    ours, theirs = socket.socketpair()
    channel, supervisor = ipc.Channel(theirs, "supervisor"), ipc.Channel(ours, "election")
    try:
        handler = PipeLogHandler(channel, "election")
        channel.max_queued = 0  # as full as a pipe the supervisor has stopped reading
        for i in range(3):
            handler.emit(logging.LogRecord("hasup.election", logging.INFO, "", 0, f"line {i}", None, None))
        assert handler.lost == 3
        channel.max_queued = 10
        ctx = WorkerContext("election", None, channel, log_handler=handler)  # type: ignore[arg-type]
        assert answer_ping(ctx, ipc.Envelope(ipc.Ping(5), 1, 0.0))
        assert [e.message for e in supervisor.receive()] == [ipc.Pong(5, logs_lost=3)]
    finally:
        channel.close()
        supervisor.close()
