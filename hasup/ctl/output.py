"""Tables in the four output formats: pretty (boxed), tsv, json and yaml (pure: returns lines)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml

FORMATS = ("pretty", "tsv", "json", "yaml", "yml")


def cell(value: Any, multiline: bool = False) -> str:
    """A value as table text: mappings as `k: v` pairs, None as blank, newlines folded unless multiline."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {cell(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value)
    return str(value) if multiline else " ".join(str(value).split("\n"))


def records(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Rows as dicts for json/yaml; blank cells are left out, as patronictl does."""
    return [{c: v for c, v in zip(columns, row, strict=True) if v is not None and v != ""} for row in rows]


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "pretty", title: str | None = None,
           right: Sequence[str] = ()) -> list[str]:
    if fmt == "json":
        return [json.dumps(records(columns, rows), default=str)]
    if fmt in ("yaml", "yml"):
        return yaml.safe_dump(records(columns, rows), sort_keys=False, allow_unicode=True,
                              default_flow_style=False).splitlines()
    if fmt == "tsv":
        return ["\t".join(columns)] + ["\t".join(cell(v) for v in row) for row in rows]
    return _boxed(list(columns), [[cell(v, multiline=True) for v in row] for row in rows], title, set(right))


def _boxed(columns: list[str], cells: list[list[str]], title: str | None, right: set[str]) -> list[str]:
    """A framed table; when a cell spans several lines, every row is framed so rows stay apart."""
    split = [[c.split("\n") for c in row] for row in cells]
    widths = [max([len(c)] + [len(line) for r in split for line in r[i]]) for i, c in enumerate(columns)]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    top = sep
    if title:
        head = f"+ {title} "
        top = head + sep[len(head):] if len(head) < len(sep) else head + "+"
    lines = [top, _line(columns, widths, set()), sep]
    aligned = {i for i, c in enumerate(columns) if c in right}
    framed = any(len(parts) > 1 for r in split for parts in r)
    for row in split:
        height = max([len(parts) for parts in row] or [1])
        for n in range(height):
            lines.append(_line([parts[n] if n < len(parts) else "" for parts in row], widths, aligned))
        if framed:
            lines.append(sep)
    if not framed:
        lines.append(sep)
    return lines


def _line(values: Sequence[str], widths: Sequence[int], right: set[int]) -> str:
    parts = [v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))]
    return "| " + " | ".join(parts) + " |"
