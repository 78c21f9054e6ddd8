"""Raw configuration values: converters, and how a value or a key is named in a message.

Converters turn one raw YAML, environment or etcd value into a typed value (bounded: no integer
beyond 64 bits, no inf or NaN) or raise `Invalid`; they know nothing of hasup's dataclasses.
"""

from __future__ import annotations

import math
import re
import reprlib
import shlex
from collections.abc import Callable
from typing import Any

# Keys whose values never appear in a message (the same names hasup.ipc redacts).
SECRET_KEYS = frozenset({"password", "keyfile_password", "sslpassword", "key_password"})
# Keys under which a wrong-typed value may still hold a secret (e.g. `authentication: "user:pw"`).
SECRET_CONTAINERS = frozenset({"authentication", "superuser", "replication", "rewind", "users"})

_TRUE = frozenset({"on", "true", "yes", "1"})
_FALSE = frozenset({"off", "false", "no", "0"})
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_DIGITS = re.compile(r"[+-]?[0-9]+")

# Every integer hasup keeps fits PostgreSQL's bigint and JSON readers in other languages; beyond it a
# value is a typo or an attack, and Python would happily carry a 10**400 into every computation.
INT64_MAX = 2**63 - 1
_URL_USERINFO = re.compile(r"(//[^/@:\s]*):[^/@\s]*@")  # user:password@ in a URL, masked in messages

LOG_LEVELS = {
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARN": "WARNING",
    "WARNING": "WARNING",
    "ERROR": "ERROR",
    "FATAL": "CRITICAL",
    "CRITICAL": "CRITICAL",
}

WATCHDOG_MODES = {
    "off": "off",
    "disable": "off",
    "disabled": "off",
    "false": "off",
    "automatic": "automatic",
    "auto": "automatic",
    "required": "required",
    "require": "required",
}

# Seconds, for the bounds of durations.
HOUR = 3600
DAY = 86400


class Invalid(ValueError):
    """A raw value cannot be converted. `message` reads after the key: `expected an integer`."""

    def __init__(self, message: str, got: Any) -> None:
        super().__init__(message)
        self.message = message
        self.got = got

    def render(self, show_value: bool) -> str:
        if not show_value:
            return self.message
        return f"{self.message}, got {shown(self.got)}"


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxdict, _SHORT_REPR.maxlist, _SHORT_REPR.maxstring = 2, 4, 4, 80
_SHORT_REPR.maxother = 80


def shown(value: Any, limit: int = 60) -> str:
    """A short repr for messages; user:password in URLs is masked.

    Bounded whatever the value: a huge or deeply nested one (from etcd, or an alias bomb) must not
    cost seconds, memory or a RecursionError just to be named in a warning.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        # repr() of an integer past 4300 digits raises ValueError; its size is what matters here
        text = f"<an integer of {value.bit_length()} bits>"
    elif isinstance(value, str):
        text = repr(value[: limit + 1])
    elif isinstance(value, dict | list | tuple | set):
        text = _SHORT_REPR.repr(value)
    else:
        text = repr(value)
    text = _URL_USERINFO.sub(r"\1:******@", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_secret_path(path: str) -> bool:
    parts = path.split(".")
    return parts[-1] in SECRET_KEYS or any(p in SECRET_CONTAINERS for p in parts)


# -- scalar converters ------------------------------------------------------------------


def to_str(value: Any) -> str:
    # YAML turns `password: 12345` into an int; accept that, but not bools (`yes` is rarely a name).
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= INT64_MAX:
        return str(value)
    raise Invalid("expected a string", value)


def to_command(value: Any) -> str:
    """A command line, split shell-style when it runs; refused here if it cannot be split."""
    text = to_str(value)
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise Invalid(f"expected a command line ({exc})", value) from None
    if not words:
        raise Invalid("expected a command line", value)
    return text


def to_int(value: Any) -> int:
    """An integer within 64 bits, from an int or a string of digits (environment variables, etcd)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value.strip())
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        raise Invalid(f"out of range (at most {INT64_MAX})", value)
    else:
        raise Invalid("expected an integer", value)
    if abs(number) > INT64_MAX:
        raise Invalid(f"out of range (at most {INT64_MAX})", value)
    return number


def int_between(minimum: int, maximum: int) -> Callable[[Any], int]:
    """A converter for integers from `minimum` to `maximum`, both included."""

    def convert(value: Any) -> int:
        number = to_int(value)
        if number < minimum:
            raise Invalid(f"must be at least {minimum}", value)
        if number > maximum:
            raise Invalid(f"must be at most {maximum}", value)
        return number

    return convert


def seconds_between(minimum: float, maximum: float) -> Callable[[Any], float]:
    """A converter for a finite duration in (possibly fractional) seconds within [minimum, maximum]."""

    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise Invalid("expected a number of seconds", value)
        if isinstance(value, str) and len(value) > 40:  # float() of a long digit string is slow and inf
            raise Invalid("expected a number of seconds", value)
        try:
            number = float(value)
        except (ValueError, OverflowError):  # float(10**400) overflows
            raise Invalid("expected a number of seconds", value) from None
        if not math.isfinite(number):
            raise Invalid("expected a finite number of seconds", value)
        if number < minimum:
            raise Invalid(f"must be at least {minimum:g}", value)
        if number > maximum:
            raise Invalid(f"must be at most {maximum:g}", value)
        return number

    return convert


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise Invalid("expected a boolean (on/off, true/false, yes/no, 1/0)", value)


def to_sync_mode(value: Any) -> bool | str:
    """synchronous_mode: bool-ish, or the word `quorum`."""
    if isinstance(value, str) and value.strip().lower() == "quorum":
        return "quorum"
    try:
        return to_bool(value)
    except Invalid:
        raise Invalid("expected a boolean or 'quorum'", value) from None


def to_mapping(value: Any) -> dict[str, Any]:
    # `ctl:` with nothing under it is YAML null: an empty section, not an error.
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise Invalid("expected a mapping", value)


def to_str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise Invalid("expected a list of strings", value)
    try:
        return tuple(to_str(item) for item in value)
    except Invalid:
        raise Invalid("expected a list of strings", value) from None


def to_log_level(value: Any) -> str:
    level = to_str(value).strip().upper()
    if level not in LOG_LEVELS:
        raise Invalid("expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL", value)
    return LOG_LEVELS[level]


def to_watchdog_mode(value: Any) -> str:
    if value is False:
        return "off"
    if isinstance(value, str) and value.strip().lower() in WATCHDOG_MODES:
        return WATCHDOG_MODES[value.strip().lower()]
    raise Invalid("expected one of off, automatic, required", value)


def to_protocol(value: Any) -> str:
    protocol = to_str(value).strip().lower()
    if protocol not in ("http", "https"):
        raise Invalid("expected http or https", value)
    return protocol


# -- PostgreSQL parameters ----------------------------------------------------------------

# A parameter name as PostgreSQL's configuration-file lexer reads one: an identifier, or two joined
# by a dot (an extension's parameter, e.g. pg_stat_statements.max). Anything else (`=`, spaces,
# quotes, a newline) could smuggle a second setting into postgresql.conf.
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}(\.[A-Za-z_][A-Za-z0-9_]{0,99})?")
# Directives of postgresql.conf, not parameters: `include = 'file'` would pull any file the postgres
# user can read into the server's configuration.
CONF_DIRECTIVES = frozenset({"include", "include_dir", "include_if_exists"})
MAX_PARAMETER_VALUE = 65536  # characters; the longest real values (archive_command, preload lists) are < 1 KiB


def parameter_problem(name: Any, value: Any) -> str | None:
    """Why `name: value` cannot be written into postgresql.conf, or None when it can."""
    if not isinstance(name, str) or not _PARAMETER_NAME.fullmatch(name):
        return "not a parameter name (letters, digits and _, with one dot for an extension's parameter)"
    if name.lower() in CONF_DIRECTIVES:
        return "a postgresql.conf directive, not a parameter"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if abs(value) <= INT64_MAX else f"out of range (at most {INT64_MAX})"
    if isinstance(value, float):
        return None if math.isfinite(value) else "expected a finite number"
    if isinstance(value, str):
        if "\0" in value:
            return "contains a NUL character"  # no configuration file can carry one
        if len(value) > MAX_PARAMETER_VALUE:
            return f"longer than {MAX_PARAMETER_VALUE} characters"
        return None
    return "expected a string, a number or a boolean"


# -- keys in messages -----------------------------------------------------------------------


def join_key(prefix: str, key: Any) -> str:
    # A key with a newline, control character or megabytes of text must not break "one line per
    # problem": such a key is shown as a short repr.
    name = key if isinstance(key, str) and key.isprintable() and len(key) <= 100 else shown(key)
    return f"{prefix}.{name}" if prefix else str(name)


def leaf(path: str) -> str:
    return path.rpartition(".")[2]
