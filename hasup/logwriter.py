"""The one log writer: the supervisor formats and writes every worker's records.

One writer means file rotation never races between processes.  Records
carry the worker role; with the default format it leads the message.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from hasup import ipc
from hasup.config import LogConfig


class LogWriter:
    def __init__(self, cfg: LogConfig) -> None:
        self.cfg = cfg
        self.handler: logging.Handler
        if cfg.dir:
            self.handler = logging.handlers.RotatingFileHandler(
                os.path.join(cfg.dir, "hasup.log"), maxBytes=cfg.file_size, backupCount=cfg.file_num)
        else:
            self.handler = logging.StreamHandler(sys.stderr)
        fmt = cfg.format if "%(role)" in cfg.format else cfg.format.replace("%(message)s", "%(role)s%(message)s")
        self.handler.setFormatter(logging.Formatter(fmt, cfg.dateformat))
        self.level = logging.getLevelName(cfg.level)
        self.records_lost = 0

    def install(self) -> None:
        """Route the supervisor's own logging through this writer."""
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(_RoleFilterHandler(self, "supervisor"))
        root.setLevel(self.level)

    def write(self, rec: ipc.LogRecord, role: str) -> None:
        if rec.level < self.level:
            return
        record = logging.LogRecord(rec.logger, rec.level, "", 0, rec.message, None, None)
        record.created = rec.created
        record.msecs = (rec.created - int(rec.created)) * 1000
        self.emit(record, rec.role or role)

    def emit(self, record: logging.LogRecord, role: str) -> None:
        record.role = f"[{role}] " if role else ""
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
