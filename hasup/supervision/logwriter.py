"""The one log writer: the supervisor formats and writes every worker's records.

One writer means file rotation never races between processes.  Every line
names the worker it came from: plain lines put `[role] ` before the message
(unless the format places %(role)s itself), json lines carry a "role" key.

The `log` section applies as in Patroni: `level` with per-logger `loggers`
overrides (applied at the source in each worker, and again here),
`traceback_level`, `format` and `dateformat`, `type: json` (format then
names the fields), and `dir` with rotation by `file_size` keeping the
current file plus `file_num` rotated ones (hasup.log, hasup.log.1, ...).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from hasup import ipc
from hasup.config import LogConfig

LOG_FILE = "hasup.log"


def level_number(name: str) -> int:
    value = logging.getLevelName(name)
    return value if isinstance(value, int) else logging.INFO


class Levels:
    """The level in force for a logger name: the most specific `loggers` entry, else `level`."""

    def __init__(self, level: str, loggers: Mapping[str, str]) -> None:
        self.root = level_number(level)
        self.loggers = {name: level_number(lvl) for name, lvl in loggers.items()}

    def for_logger(self, name: str) -> int:
        best, best_len = self.root, -1
        for prefix, level in self.loggers.items():
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = level, len(prefix)
        return best


def tracebacks_visible(cfg: LogConfig) -> bool:
    """Patroni's rule: tracebacks show while `level` is at or below `traceback_level`
    (traceback_level DEBUG: only when running at DEBUG)."""
    return level_number(cfg.level) <= level_number(cfg.traceback_level)


def apply_levels(cfg: LogConfig) -> None:
    """Set the root level and the per-logger overrides in this process."""
    logging.getLogger().setLevel(cfg.level)
    for name, level in cfg.loggers.items():
        logging.getLogger(name).setLevel(level)


class PlainFormatter(logging.Formatter):
    def __init__(self, cfg: LogConfig) -> None:
        fmt = cfg.format
        if "%(role)" not in fmt:
            fmt = fmt.replace("%(message)s", "[%(role)s] %(message)s") if "%(message)s" in fmt \
                else "[%(role)s] " + fmt
        super().__init__(fmt, cfg.dateformat)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: the configured fields (renamed by their aliases), the
    static fields, and always the worker's role."""

    def __init__(self, cfg: LogConfig) -> None:
        super().__init__(None, cfg.dateformat)
        self.fields = cfg.json_fields or (("asctime", "asctime"), ("levelname", "levelname"),
                                          ("message", "message"))
        self.static = dict(cfg.static_fields)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        out: dict[str, Any] = {}
        for attr, alias in self.fields:
            if attr == "asctime":
                out[alias] = self.formatTime(record, self.datefmt)
            else:
                out[alias] = getattr(record, attr, None)
        out.update(self.static)
        out.setdefault("role", getattr(record, "role", ""))
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class _ModeRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Rotation as Patroni's: the current file plus backupCount rotated ones; `mode` on each new file."""

    def __init__(self, path: str, max_bytes: int, backups: int, mode: int | None) -> None:
        self.file_mode = mode
        super().__init__(path, maxBytes=max_bytes, backupCount=backups)

    def _open(self) -> Any:
        stream = super()._open()
        if self.file_mode is not None:
            try:
                os.chmod(self.baseFilename, self.file_mode)
            except OSError:
                pass
        return stream


def _handler(cfg: LogConfig) -> logging.Handler:
    if cfg.dir:
        return _ModeRotatingFileHandler(os.path.join(cfg.dir, LOG_FILE), cfg.file_size, cfg.file_num, cfg.mode)
    return logging.StreamHandler(sys.stderr)


class LogWriter:
    def __init__(self, cfg: LogConfig) -> None:
        self.cfg = cfg
        self.problem = ""  # why the configured destination is not used (logged once installed)
        try:
            self.handler = _handler(cfg)
        except OSError as exc:
            # A node must not refuse to run (or loop under systemd) for want of its log directory.
            self.problem = f"log.dir: cannot write {os.path.join(cfg.dir or '', LOG_FILE)} ({exc.strerror}); " \
                           "logging to stderr"
            self.handler = logging.StreamHandler(sys.stderr)
            cfg = replace(cfg, dir=None)
        self.records_lost = 0
        self._adopt(cfg)

    def _adopt(self, cfg: LogConfig) -> None:
        self.cfg = cfg
        self.handler.setFormatter(JsonFormatter(cfg) if cfg.type == "json" else PlainFormatter(cfg))
        self.levels = Levels(cfg.level, cfg.loggers)
        self.level = self.levels.root
        self.tracebacks = tracebacks_visible(cfg)

    def reconfigure(self, cfg: LogConfig) -> None:
        """A reload: new destination, rotation, format and levels take effect from the next record.

        Raises OSError (and keeps the current destination) when the new one cannot be opened."""
        if cfg == self.cfg:
            return
        where = (cfg.dir, cfg.file_size, cfg.file_num, cfg.mode)
        if where != (self.cfg.dir, self.cfg.file_size, self.cfg.file_num, self.cfg.mode):
            old, self.handler = self.handler, _handler(cfg)
            if isinstance(old, logging.FileHandler):
                old.close()
            else:
                old.flush()
        self._adopt(cfg)
        apply_levels(cfg)

    def install(self) -> None:
        """Route the supervisor's own logging through this writer."""
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(_RoleFilterHandler(self, "supervisor"))
        apply_levels(self.cfg)

    def write(self, rec: ipc.LogRecord, role: str) -> None:
        """A worker's record (already filtered at its source; filtered again in case its levels lag)."""
        if rec.level < self.levels.for_logger(rec.logger):
            return
        record = logging.LogRecord(rec.logger, rec.level, "", 0, rec.message, None, None)
        record.created = rec.created
        record.msecs = (rec.created - int(rec.created)) * 1000
        self.emit(record, rec.role or role)

    def emit(self, record: logging.LogRecord, role: str) -> None:
        record.role = role
        if record.exc_info and not self.tracebacks:
            record.exc_info = None
            record.exc_text = None
        try:
            self.handler.emit(record)
        except Exception:
            self.records_lost += 1

    def flush(self) -> None:
        try:
            self.handler.flush()
        except Exception:
            pass

    def close_in_child(self) -> None:
        """A worker must not write through the supervisor's handler."""
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)


class _RoleFilterHandler(logging.Handler):
    def __init__(self, writer: LogWriter, role: str) -> None:
        super().__init__()
        self.writer = writer
        self.role = role

    def emit(self, record: logging.LogRecord) -> None:
        self.writer.emit(record, self.role)
