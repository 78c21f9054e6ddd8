"""Where a configuration comes from: a file, a directory of them, or the environment alone.

`read_sources` returns the merged, unvalidated mapping; every source that cannot be read is a
`SourceError` with one line per problem.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Any

import yaml

from hasup.config.bounded_yaml import MAX_CONFIG_BYTES, YamlRefused, load_yaml
from hasup.config.environment import env_configuration, env_overrides


class SourceError(Exception):
    """A configuration source cannot be read; `problems` holds one line each (hasup.config
    raises them again as ConfigError)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any], drop_none: bool = True) -> dict[str, Any]:
    """A new dict: `override` over `base`, mappings merged key by key.

    With `drop_none`, a null in `override` removes the key, as a later config file may do.
    """
    merged: dict[str, Any] = dict(base)
    for key, value in override.items():
        if value is None and drop_none:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value, drop_none)
        else:
            merged[key] = value
    return merged


def _position(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"


def _too_large(source: str, size: int) -> str:
    return f"{source}: {size} bytes, more than the {MAX_CONFIG_BYTES} a configuration may have"


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    if len(text) > MAX_CONFIG_BYTES:
        raise SourceError([_too_large(source, len(text.encode("utf-8", "replace")))])
    try:
        data = load_yaml(text)
    except YamlRefused as exc:
        raise SourceError([f"{source}: {_position(exc.problem_mark)}: {exc.problem}"]) from None
    except yaml.MarkedYAMLError as exc:
        # Only the position and the parser's complaint: the offending line may hold a password.
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({exc.context} at line {exc.context_mark.line + 1})" if exc.context and exc.context_mark else ""
        raise SourceError([f"{source}: invalid YAML{where}: {exc.problem}{context}"]) from None
    except (yaml.YAMLError, RecursionError):
        raise SourceError([f"{source}: invalid YAML"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SourceError([f"{source}: expected a mapping at the top level"])
    return data


def _read_text(path: str) -> str:
    """The file's text; refused before reading when it is not a regular file or is too large."""
    try:
        # Non-blocking, so that opening a FIFO does not wait for a writer; fstat then says what it is.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError([f"{path}: cannot read ({exc.strerror})"]) from None
    except ValueError:  # a NUL in the path
        raise SourceError([f"{path!r}: cannot read (not a valid path)"]) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SourceError([f"{path}: cannot read (not a regular file)"])
        if info.st_size > MAX_CONFIG_BYTES:
            raise SourceError([_too_large(path, info.st_size)])
        try:
            # Read one byte past the limit: a file that grew since fstat is caught too.
            data = handle.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise SourceError([f"{path}: cannot read ({exc.strerror})"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise SourceError([_too_large(path, len(data))])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError([f"{path}: cannot read (not UTF-8 text)"]) from None


def _read_path(path: str) -> dict[str, Any]:
    """One file, or every *.yml / *.yaml file of a directory merged in name order (later wins)."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith((".yml", ".yaml")))
        files = [p for p in (os.path.join(path, n) for n in names) if os.path.isfile(p)]
    else:
        files = [path]
    merged: dict[str, Any] | None = None
    problems: list[str] = []
    total = 0
    for name in files:
        try:
            text = _read_text(name)
            total += len(text)
            if total > MAX_CONFIG_BYTES:
                # Each file may be small, yet together they are one configuration.
                problems.append(f"{path}: its YAML files hold more than the {MAX_CONFIG_BYTES} bytes "
                                "a configuration may have")
                break
            data = parse_yaml(text, name)
        except SourceError as exc:
            problems.extend(exc.problems)
            continue
        # The first file is taken as written; a null in a later one removes what came before.
        merged = data if merged is None else deep_merge(merged, data)
    if problems:
        raise SourceError(problems)
    return merged or {}


def read_sources(path: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The merged, unvalidated configuration: the file(s) at `path` with `env` over them.

    Without a file, like Patroni: the whole YAML in HASUP_/PATRONI_CONFIGURATION (then no other
    variable applies), else the configuration the variables alone describe.
    """
    if path and os.path.exists(path):
        return deep_merge(_read_path(path), env_overrides(env), drop_none=False)
    whole = env_configuration(env)
    if whole is not None:
        variable, text = whole
        return parse_yaml(text, variable)
    overrides = env_overrides(env)
    if overrides:
        return overrides
    missing = f"{path}: no such file" if path else "no configuration file given, and none in the environment"
    raise SourceError([missing])
