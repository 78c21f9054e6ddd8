"""The log section: level, format (plain or json), and where the log files go."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hasup.config.model import LogConfig
from hasup.config.schema import LOG_USED, Reader
from hasup.config.values import Invalid, int_between, shown, to_int, to_log_level, to_mapping, to_str

_MAX_LOG_FILES = 1000
_MAX_LOG_FILE_SIZE = 1 << 40  # bytes: beyond a TiB per file, rotation has stopped meaning anything


_FORMAT_FIELD = re.compile(r"%\((\w+)\)")


def _json_fields(r: Reader, value: Any) -> tuple[tuple[str, str], ...] | None:
    """log.format for the json type: a format string (its %(field)s names), a list of names or
    {name: alias} mappings, or one such mapping."""
    pairs: list[tuple[str, str]] = []
    if isinstance(value, str):
        pairs = [(f, f) for f in _FORMAT_FIELD.findall(value)]
    elif isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                pairs.append((item, item))
            elif isinstance(item, dict):
                pairs.extend((str(k), str(v)) for k, v in item.items())
            else:
                r.problem("log.format", f"expected field names or {{field: alias}} mappings, got {shown(item)}")
                return None
    else:
        r.problem("log.format", f"expected a string, a list or a mapping, got {shown(value)}")
        return None
    if not pairs:
        r.problem("log.format", "names no fields")
        return None
    return tuple(pairs)


def _file_mode(value: Any) -> int:
    """Permission bits: an integer (YAML reads 0640 as octal), or a string such as '0o640' or '0640'."""
    if isinstance(value, str) and value.strip().lower().lstrip("0o").isdigit():
        try:
            return int(value.strip().lower().replace("0o", "", 1), 8)
        except ValueError:
            raise Invalid("expected octal permission bits", value) from None
    return to_int(value)


def read_log(r: Reader, top: Mapping[str, Any]) -> LogConfig:
    """The log section; a bad value is a problem, and its default stands in for it."""
    sec = r.section(top, "log")
    default = LogConfig()
    log_type = r.get(sec, "log.type", to_str, default.type).strip().lower()
    if log_type not in ("plain", "json"):
        r.problem("log.type", f"expected plain or json, got {log_type!r}")
        log_type = default.type
    log_format = sec.get("format")
    json_fields: tuple[tuple[str, str], ...] = ()
    if log_type == "json":
        json_fields = _json_fields(r, log_format if log_format is not None else default.format) or ()
        log_format = None
    elif log_format is not None and not isinstance(log_format, str):
        r.warn("log.format", "a list or mapping of fields is read with log.type json only; using the default")
        log_format = None
    loggers: dict[str, str] = {}
    no_loggers: dict[str, Any] = {}
    for name, level in r.get(sec, "log.loggers", to_mapping, no_loggers).items():
        converted = r.convert(f"log.loggers.{name}", level, to_log_level)
        if converted is not None:
            loggers[str(name)] = converted
    mode = r.get(sec, "log.mode", _file_mode, None)
    if mode is not None and not 0 <= mode <= 0o777:
        r.problem("log.mode", f"expected permission bits between 0 and 0o777, got {mode}")
        mode = None
    no_fields: dict[str, Any] = {}
    static = r.get(sec, "log.static_fields", to_mapping, no_fields)
    if static and log_type != "json":
        r.warn("log.static_fields", "only used with log.type json, ignored")
    r.ignore_rest(sec, "log", LOG_USED)
    return LogConfig(
        level=r.get(sec, "log.level", to_log_level, default.level),
        traceback_level=r.get(sec, "log.traceback_level", to_log_level, default.traceback_level),
        format=log_format or default.format,
        dateformat=r.get(sec, "log.dateformat", to_str, None),
        dir=r.get(sec, "log.dir", to_str, None),
        file_num=r.get(sec, "log.file_num", int_between(0, _MAX_LOG_FILES), default.file_num),
        file_size=r.get(sec, "log.file_size", int_between(0, _MAX_LOG_FILE_SIZE), default.file_size),
        type=log_type,
        json_fields=json_fields,
        static_fields=dict(static),
        mode=mode,
        loggers=loggers,
    )
