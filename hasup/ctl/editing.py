"""Changing the dynamic configuration as edit-config does: --set paths, --pg shorthands, YAML files, the diff."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from hasup.api.admin import patch_config

PG_PARAMETERS = ("postgresql", "parameters")


class EditError(Exception):
    """A change that cannot be applied; the message is one line."""


def as_yaml(config: Mapping[str, Any]) -> str:
    """The configuration as an operator reads and edits it (keys sorted, block style)."""
    if not config:
        return ""
    return yaml.safe_dump(dict(config), default_flow_style=False, allow_unicode=True, width=200)


def parse_yaml_mapping(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise EditError(f"{source}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EditError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _set_path(config: dict[str, Any], path: list[str], value: Any) -> None:
    if len(path) == 1:
        if value is None:
            config.pop(path[0], None)
        else:
            config[path[0]] = value
        return
    child = config.get(path[0])
    if not isinstance(child, dict):
        child = config[path[0]] = {}
    _set_path(child, path[1:], value)
    if not child:
        del config[path[0]]


def set_values(config: Mapping[str, Any], pairs: Iterable[str]) -> dict[str, Any]:
    """Apply `dotted.key=yaml value` pairs; `null` removes the key.

    Below postgresql.parameters the rest of the path is one name, since PostgreSQL
    parameter names may contain dots (e.g. `pg_stat_statements.max`).
    """
    result = copy.deepcopy(dict(config))
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        path = [p.strip() for p in key.strip().split(".")]
        if not sep or not all(path):
            raise EditError(f"invalid setting {pair!r}: expected key.path=value")
        if tuple(path[:2]) == PG_PARAMETERS and len(path) > 2:
            path = [*PG_PARAMETERS, ".".join(path[2:])]
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise EditError(f"invalid value in {pair!r}: not YAML") from None
        _set_path(result, path, value)
    return result


def pg_pairs(pairs: Iterable[str]) -> list[str]:
    """`--pg name=value` is `--set postgresql.parameters.name=value`."""
    return [f"{'.'.join(PG_PARAMETERS)}.{p.strip()}" for p in pairs]


def merge_yaml(config: Mapping[str, Any], text: str, source: str) -> dict[str, Any]:
    """Merge a YAML document over the configuration (PATCH rules: null deletes, mappings merge)."""
    return patch_config(config, parse_yaml_mapping(text, source))


def diff_lines(before: str, after: str) -> list[str]:
    return [line.rstrip("\n") for line in difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), "before", "after")]
