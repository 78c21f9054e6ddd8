"""Bounds on what a REST request may carry (docs/design.md §11): body size, JSON nesting and numbers.

Both the gunicorn worker (which buffers a request before a thread sees it)
and the falcon app (which answers 413/400) read the same numbers from here.
parse_json never raises and never recurses past MAX_DEPTH: the depth is
measured on the text before json.loads sees it, because CPython's decoder
recurses once per level and a deep enough document raises RecursionError
(or, in a thread with a small stack, worse).
"""

from __future__ import annotations

import json
import math
import re
from array import array
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

MAX_BODY = 1024 * 1024  # bytes of request body; more is 413 (a dynamic configuration is a few KiB)
MAX_DEPTH = 64  # levels of JSON nesting in a body; Patroni's configuration needs 4
# Characters of a configuration as the store writes it (compact, ASCII-escaped JSON).  It travels
# in every ClusterView (an IPC frame, docs/design.md §2) and every api snapshot (256 KiB,
# hasup/api/snapshot.py), next to the members and the history: a value far bigger than any real
# configuration would crowd them out on every node.  Half of what the etcd reader accepts
# (hasup/dcs/parse.py MAX_CONFIG_CHARS).
MAX_CONFIG_CHARS = 64 * 1024
MAX_INT_DIGITS = 20  # past 2**64 no hasup or PostgreSQL setting means anything

# A JSON string: what may hide brackets that are not structure.  Unrolled so a long string
# costs one pass and no backtracking.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")
_DEPTH_STEP = str.maketrans({"[": "\x01", "{": "\x01", "]": "\xff", "}": "\xff"})


class BadJson(ValueError):
    """A body that is not JSON, or not JSON this server will hold; str() is the reason for the client."""


def nesting_exceeds(text: str, limit: int = MAX_DEPTH) -> bool:
    """True when text's brackets (outside strings) open more than limit levels at some point."""
    if text.count("[") + text.count("{") <= limit:
        return False  # cannot be deeper than it has brackets: the common case costs two counts
    brackets = "".join(_BRACKETS.findall(_STRING.sub("", text)))
    # +1/-1 per bracket as signed bytes, summed by C code: a megabyte of brackets takes milliseconds.
    steps = array("b", brackets.translate(_DEPTH_STEP).encode("latin-1"))
    return max(accumulate(steps), default=0) > limit


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJson(f"the number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadJson(f"the number {text[:40]}... is out of range")
    return int(text)


def _no_constant(name: str) -> Any:
    raise BadJson(f"{name} is not a number JSON allows")


def parse_json(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """The decoded document; raises BadJson (with a reason fit for the client) for anything else.

    Bytes must be UTF-8, as Patroni reads them.  NaN, Infinity, numbers that
    overflow a float (1e400) and integers over MAX_INT_DIGITS digits are refused.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise BadJson("the body is not UTF-8") from None
    if nesting_exceeds(text, max_depth):
        raise BadJson(f"the body is nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_float=_finite, parse_int=_bounded_int, parse_constant=_no_constant)
    except BadJson:
        raise
    except (ValueError, RecursionError):
        raise BadJson("the body is not valid JSON") from None


def _children(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        yield from value.values()
    elif isinstance(value, list | tuple):
        yield from value


def depth_of(value: Any, stop_after: int = MAX_DEPTH + 1) -> int:
    """Levels of dict/list nesting in a decoded value (a scalar is 0), counting no further than stop_after.

    Iterative, so a value built deeper than the interpreter's recursion limit is measured all the same.
    """
    deepest = 0
    stack = [(value, 1)] if isinstance(value, dict | list | tuple) else []
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if deepest >= stop_after:
            break
        stack.extend((child, level + 1) for child in _children(node) if isinstance(child, dict | list | tuple))
    return deepest
