"""YAML with limits: one document parsed within bounds on size, depth, aliases and numbers.

PyYAML's safe loader still parses without bounds: aliases expand without limit, nesting recurses
until RecursionError, a second `authentication:` silently replaces the first, 10**400 and .inf
are taken as numbers, and a few bad scalars (the date 2024-13-01) escape as plain exceptions.
This loader refuses each of those with the line it happened on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import Resolver

from hasup.config.values import INT64_MAX, shown

try:  # libyaml scans and parses in C: a 1 MiB file in milliseconds rather than seconds
    from yaml._yaml import CParser as _EventSource
except ImportError:  # pragma: no cover -- PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader as _YamlReader
    from yaml.scanner import Scanner

    class _EventSource(_YamlReader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            _YamlReader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)

# -- limits on a configuration file (docs/design.md §11) --------------------------------------
# A real configuration is a few KiB; 1 MiB leaves room for thousands of pg_hba lines and keeps a
# configuration near the size of one IPC frame (hasup.ipc.MAX_FRAME), which a reload sends to the
# workers as JSON (a file close to the limit can still exceed the frame: the IPC side must cope).
MAX_CONFIG_BYTES = 1 << 20
# Patroni's keys nest about six deep; anything near this is generated or hostile, and the limit
# keeps every recursive walk of the result (merging, copying, JSON) far from Python's recursion limit.
MAX_YAML_DEPTH = 64
# Values (scalars, lists, mappings) in one document, counting each alias as the copy it stands for:
# bounds the work of parsing a file and of everything that walks the result later (a "billion
# laughs" file is small on disk but expands exponentially).
MAX_YAML_VALUES = 50_000

_MERGE_TAG = "tag:yaml.org,2002:merge"
_LONGEST_INTEGER = 80  # characters: room for 64 bits in binary with underscores, not for int()'s slow path


class YamlRefused(yaml.MarkedYAMLError):
    """A document broke one of the loader's limits or rules; `problem` says which, `problem_mark` where."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _BoundedComposer(Composer):
    """Builds the node graph with depth, size and alias limits checked as each event arrives, so a
    hostile document is refused after at most MAX_YAML_VALUES values have been read."""

    peek_event: Callable[[], Any]  # from the event source it is mixed with

    def _start_bounds(self) -> None:
        self._depth = 0
        self._values = 0
        self._chars = 0
        # anchor -> (values, scalar characters) of what it names, counted with its own aliases expanded
        self._anchored: dict[Any, tuple[int, int]] = {}
        # mapping node -> its pairs as written: a merge key (<<) later rewrites node.value in place
        self.written_pairs: dict[Node, list[tuple[Node, Node]]] = {}

    def _grow(self, values: int, chars: int, mark: Any, alias: bool) -> None:
        self._values += values
        self._chars += chars
        if self._values > MAX_YAML_VALUES or self._chars > MAX_CONFIG_BYTES:
            what = "YAML aliases expand the document to" if alias else "the document holds"
            raise YamlRefused(f"{what} more than {MAX_YAML_VALUES} values or {MAX_CONFIG_BYTES} characters", mark)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            size = self._anchored.get(event.anchor)
            if size is None and event.anchor in self.anchors:
                # A value containing itself: every walk of it (merge, copy, JSON) would never end.
                raise YamlRefused(f"alias {shown(event.anchor)} is used inside the value it names",
                                  event.start_mark)
            if size is not None:
                self._grow(*size, event.start_mark, alias=True)
            return super().compose_node(parent, index)  # an undefined alias fails there
        if self._depth >= MAX_YAML_DEPTH:
            raise YamlRefused(f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        values, chars = self._values, self._chars
        self._grow(1, len(event.value) if isinstance(event, ScalarEvent) else 0, event.start_mark, alias=False)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if event.anchor is not None:
            self._anchored[event.anchor] = (self._values - values, self._chars - chars)
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        self.written_pairs[node] = list(node.value)
        return node


class _StrictConstructor(SafeConstructor):
    """SafeConstructor that refuses duplicate keys, integers beyond 64 bits and non-finite floats."""

    written_pairs: dict[Node, list[tuple[Node, Node]]]

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, ArithmeticError):
            # The exception's text may quote the value, and the value may be a password.
            raise YamlRefused(f"cannot read this value as {node.tag.rpartition(':')[2]}", node.start_mark) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            self._refuse_duplicates(node)
        return super().construct_mapping(node, deep)

    def _refuse_duplicates(self, node: MappingNode) -> None:
        # Patroni's loader keeps the last of two equal keys: a second `authentication:` that lacks a
        # password would silently turn REST authentication off. Merged keys (<<) may be overridden.
        first: dict[Any, Any] = {}
        pairs: list[tuple[Node, Node]] = self.written_pairs.get(node) or list(node.value)
        for key_node, _ in pairs:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            earlier: Any = first.setdefault(key, key_node.start_mark)
            if earlier is not key_node.start_mark:
                raise YamlRefused(f"duplicate key {shown(key)} (first at line {earlier.line + 1})",
                                  key_node.start_mark)

    def construct_strict_int(self, node: ScalarNode) -> int:
        if len(str(node.value)) > _LONGEST_INTEGER:
            raise YamlRefused(_INTEGER_TOO_LARGE, node.start_mark)
        number: int = self.construct_yaml_int(node)
        if abs(number) > INT64_MAX:
            raise YamlRefused(_INTEGER_TOO_LARGE, node.start_mark)
        return number

    def construct_finite_float(self, node: ScalarNode) -> float:
        number: float = self.construct_yaml_float(node)
        if not math.isfinite(number):
            raise YamlRefused("not a finite number (.inf, .nan and overflowing numbers are refused)",
                              node.start_mark)
        return number

    def construct_timestamp_text(self, node: ScalarNode) -> str:
        # Kept as written: the configuration travels as JSON (IPC, etcd, the member key's tags), which
        # has no dates, and a date object there crashed whoever encoded it.
        return str(self.construct_scalar(node))


_INTEGER_TOO_LARGE = "integer out of range (more than 64 bits); quote it if it is meant as a string"
_StrictConstructor.add_constructor(  # type: ignore[type-var]
    "tag:yaml.org,2002:timestamp", _StrictConstructor.construct_timestamp_text)
_StrictConstructor.add_constructor(  # type: ignore[type-var]
    "tag:yaml.org,2002:int", _StrictConstructor.construct_strict_int)
_StrictConstructor.add_constructor(  # type: ignore[type-var]
    "tag:yaml.org,2002:float", _StrictConstructor.construct_finite_float)


class _BoundedLoader(_BoundedComposer, _EventSource, _StrictConstructor, Resolver):
    def __init__(self, stream: str) -> None:
        _EventSource.__init__(self, stream)
        Composer.__init__(self)
        _StrictConstructor.__init__(self)
        Resolver.__init__(self)
        self._start_bounds()


def load_yaml(text: str) -> Any:
    """One YAML document, parsed within hasup's limits (depth, values, aliases, 64-bit integers,
    finite floats, unique keys). Raises yaml.YAMLError; YamlRefused when a limit was reached."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
