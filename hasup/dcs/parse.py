"""The boundary parsers: every value read from etcd, checked once where it enters (docs/design.md §11).

Each `parse_<key>` takes the raw text of one key (None: the key is absent) and returns the typed
value, or a `Bad` that says what is wrong.  None of them raises, whatever the text: a 600-deep
array, a 1 MB string, 1e400, NaN, an integer of a million digits, an unpaired surrogate.  The
value that comes out is one the rest of hasup can use as it is: names are short printable
strings, positions are integers in [0, 2**64), URLs parse, nothing is nested past MAX_DEPTH.

What the caller does with a `Bad` (absent, or the last good value) is decided in hasup.dcs.model
and the election worker; `BadValues` counts them and logs each (key, value) once.

The size limits are per key, a few times what Patroni or hasup ever writes there, and keep what one
read can put into a ClusterView bounded (MAX_MEMBERS member keys at most); fitting the view into one
IPC frame is hasup.ipc's business.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar
from urllib.parse import urlsplit

from hasup.config import parse_dynamic
from hasup.config.schema import DYNAMIC_BOOLS, DYNAMIC_INT_BOUNDS, LEGACY_NAMES
from hasup.config.standby import to_standby_cluster
from hasup.config.values import Invalid, to_bool, to_int, to_mapping, to_str_list, to_sync_mode

log = logging.getLogger("hasup.dcs")
T = TypeVar("T")

MAX_DEPTH = 64  # Patroni's values nest three or four deep; this is far from Python's recursion limit
MAX_VALUES = 50_000  # scalars and containers in one value: bounds the walk below
MAX_NAME = 256  # member names are host names in practice (at most 253)
MAX_URL = 2048
MAX_SHORT = 256  # state, role, versions, tag names, timestamps
MAX_TEXT = 4096  # free text: a history reason
MAX_MEMBERS = 64  # member keys used from one read; more is a flood, not a cluster
MAX_HISTORY = 5_000  # timeline switches; max_timelines_history trims far below this in practice
MAX_SLOTS = 1_000
MAX_TIMELINE = 2**32 - 1  # PostgreSQL's TimeLineID is 32 bits
LSN_END = 2**64  # WAL positions are unsigned 64-bit
INT_MIN = -(2**63)

# Characters (not bytes: cheaper to check, and within 4x of the byte count) per value of each key.
MAX_CONFIG_CHARS = 128 * 1024
MAX_MEMBER_CHARS = 8 * 1024
MAX_HISTORY_CHARS = 512 * 1024
MAX_STATUS_CHARS = 256 * 1024
MAX_SMALL_CHARS = 64 * 1024  # failover, sync, failsafe
MAX_NUMBER_CHARS = 40  # the text of one JSON number; a float that needs more is not a real setting

_DIGITS = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True)
class Bad:
    """A value that failed its check at the boundary; `reason` names the problem, never the value."""

    reason: str


# -- JSON with limits ---------------------------------------------------------------------------------


class _Rejected(ValueError):
    """Raised by the json hooks below; json.loads lets it through to decode_json."""


def _no_constant(name: str) -> Any:
    raise _Rejected(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Rejected("a number with too many digits")
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as inf
        raise _Rejected("a number out of range")
    return value


def _bounded_int(text: str) -> int:
    # Checked on the text first: int() of 4300+ digits raises, and of fewer costs quadratic time.
    if len(text) > 21:
        raise _Rejected("an integer out of range")
    value = int(text)
    if not INT_MIN <= value < LSN_END:
        raise _Rejected("an integer out of range")
    return value


def text_problem(text: str) -> str | None:
    """Why a string from etcd cannot be used anywhere (written to a file, a log, a socket), or None."""
    if "\x00" in text:
        return "a NUL character"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "an unpaired surrogate"
    return None


def tree_problem(value: Any) -> str | None:
    """Why a decoded JSON value is too deep, too big or holds unusable strings; None when it is fine.

    Iterative, so a hostile depth costs a loop, not the stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return f"more than {MAX_VALUES} values"
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return problem
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH}"
            if isinstance(item, dict):
                for key in item:
                    problem = text_problem(key)
                    if problem:
                        return problem
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, float) and not math.isfinite(item):
            return "a number out of range"
    return None


def decode_json(raw: str, max_chars: int) -> Any:
    """The JSON value of raw within the limits, or Bad."""
    if not isinstance(raw, str):
        return Bad("not text")
    if len(raw) > max_chars:
        return Bad(f"longer than {max_chars} characters")
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except _Rejected as exc:
        return Bad(str(exc))
    except RecursionError:  # the decoder recurses per level: a value nested deeper than it can go
        return Bad(f"nested deeper than {MAX_DEPTH}")
    except ValueError as exc:
        return Bad(f"not JSON ({str(exc).split(':')[0][:80]})")
    problem = tree_problem(value)
    return Bad(problem) if problem else value


# -- field checks ---------------------------------------------------------------------------------------


def valid_name(value: Any) -> bool:
    """A member name as a key path segment and a JSON value may carry it: short, printable, no slash."""
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME and "/" not in value and value.isprintable()


def url_problem(value: Any, schemes: tuple[str, ...] = ()) -> str | None:
    """Why value is not a usable URL (one of `schemes` if given, a host, a valid port), or None."""
    if not isinstance(value, str):
        return "not a string"
    if not 0 < len(value) <= MAX_URL:
        return f"not 1 to {MAX_URL} characters"
    if not value.isprintable() or " " in value:
        return "control characters or spaces"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
    except ValueError:
        return "not a URL"
    if not parts.scheme or not parts.hostname:
        return "no scheme or host"
    if schemes and parts.scheme.lower() not in schemes:
        return f"not a {' or '.join(schemes)} URL"
    return None


def is_int(value: Any, low: int, end: int) -> TypeGuard[int]:
    """An integer (not a bool) in [low, end)."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < end


def _short_text(value: Any, limit: int = MAX_SHORT) -> bool:
    return isinstance(value, str) and len(value) <= limit


def _object(raw: str | None, max_chars: int) -> dict[str, Any] | Bad:
    value = decode_json(raw, max_chars) if raw is not None else Bad("absent")
    if isinstance(value, Bad):
        return value
    if not isinstance(value, dict):
        return Bad(f"a JSON {type(value).__name__}, not an object")
    return value


def _optional(data: Mapping[str, Any], key: str, ok: Callable[[Any], bool], what: str) -> str | None:
    """Why data[key] is neither absent, null nor `what`; None when it is fine."""
    value = data.get(key)
    if value is None or ok(value):
        return None
    return f"{key}: expected {what}"


# -- one parser per key -----------------------------------------------------------------------------------


def parse_leader(raw: str | None) -> str | None | Bad:
    """The leader key holds the leader's name as plain text; None when absent or empty."""
    if raw is None or raw == "":
        return None
    return raw if valid_name(raw) else Bad("not a member name")


def parse_initialize(raw: str | None) -> str | None | Bad:
    """None: absent; "": a bootstrap in progress; else the database system identifier (digits)."""
    if raw is None or raw == "":
        return raw
    return raw if isinstance(raw, str) and _DIGITS.fullmatch(raw) else Bad("not a system identifier")


def parse_optime(raw: str | None) -> int | None | Bad:
    """The legacy optime/leader key: a WAL position as decimal text."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or not _DIGITS.fullmatch(raw) or int(raw) >= LSN_END:
        return Bad("not a WAL position")
    return int(raw)


# What Patroni and hasup write; anything else (file:, data:) is not a member's address.
_MEMBER_URLS = {"conn_url": ("postgres", "postgresql"), "api_url": ("http", "https")}
_MEMBER_TEXTS = ("state", "role", "version", "hasup_version", "replication_state")
_MEMBER_POSITIONS = ("xlog_location", "receive_lsn", "replay_lsn")


def member_problem(data: Mapping[str, Any]) -> str | None:
    """Why a member key's object is unusable, or None.  Fields hasup does not read are kept as they are."""
    for key, schemes in _MEMBER_URLS.items():
        if data.get(key) is not None:
            problem = url_problem(data[key], schemes)
            if problem:
                return f"{key}: {problem}"
    for key in _MEMBER_TEXTS:
        problem = _optional(data, key, _short_text, f"a string of at most {MAX_SHORT} characters")
        if problem:
            return problem
    for key in _MEMBER_POSITIONS:
        problem = _optional(data, key, lambda v: is_int(v, 0, LSN_END), "a WAL position")
        if problem:
            return problem
    problem = _optional(data, "timeline", lambda v: is_int(v, 0, MAX_TIMELINE + 1), "a timeline")
    if problem:
        return problem
    tags = data.get("tags")
    # Values may be anything (Patroni lets users tag freely); what hasup reads of them copes with any type.
    if tags is not None and not (isinstance(tags, dict) and all(_short_text(k) for k in tags)):
        return "tags: expected an object"
    return None


def parse_member(raw: str | None) -> dict[str, Any] | Bad:
    data = _object(raw, MAX_MEMBER_CHARS)
    if isinstance(data, Bad):
        return data
    problem = member_problem(data)
    return Bad(problem) if problem else data


def history_entry_problem(entry: Any) -> str | None:
    """[timeline, switch LSN, reason] and, from Patroni 2 on, a timestamp and the new leader."""
    if not isinstance(entry, list) or not 3 <= len(entry) <= 5:
        return "an entry is not a list of 3 to 5 items"
    if not is_int(entry[0], 1, MAX_TIMELINE + 1):
        return "an entry's timeline is not an integer from 1 to 2**32-1"
    if not is_int(entry[1], 0, LSN_END):
        return "an entry's LSN is not a WAL position"
    if not _short_text(entry[2], MAX_TEXT):
        return "an entry's reason is not a string"
    if len(entry) > 3 and not (entry[3] is None or _short_text(entry[3])):
        return "an entry's timestamp is not a string"
    if len(entry) > 4 and not (entry[4] is None or valid_name(entry[4])):
        return "an entry's leader is not a member name"
    return None


def parse_history(raw: str | None) -> list[list[Any]] | Bad:
    """The timeline switches, oldest first; [] when the key is absent."""
    if raw is None:
        return []
    value = decode_json(raw, MAX_HISTORY_CHARS)
    if isinstance(value, Bad):
        return value
    if not isinstance(value, list):
        return Bad("not a list")
    if len(value) > MAX_HISTORY:
        return Bad(f"more than {MAX_HISTORY} entries")
    for entry in value:
        problem = history_entry_problem(entry)
        if problem:
            return Bad(problem)
    return value


def _optional_name(value: Any) -> bool:
    return value is None or value == "" or valid_name(value)


def parse_failover(raw: str | None) -> dict[str, Any] | None | Bad:
    """A switchover or failover request: leader, member (the candidate), scheduled_at.

    None when absent or cleared (`{}`).  Only these three fields are kept, each a non-empty string:
    a request is acted on as a whole, so one bad field makes the whole value bad (treated as absent:
    no switchover is safer than one to a candidate nobody named)."""
    if raw is None:
        return None
    data = _object(raw, MAX_SMALL_CHARS)
    if isinstance(data, Bad):
        return data
    for key in ("leader", "member"):
        if not _optional_name(data.get(key)):
            return Bad(f"{key}: not a member name")
    if not (data.get("scheduled_at") is None or _short_text(data["scheduled_at"], 64)):
        return Bad("scheduled_at: not a timestamp")
    kept = {k: data[k] for k in ("leader", "member", "scheduled_at") if data.get(k)}
    return kept or None


def _standby_list(value: Any) -> bool:
    if isinstance(value, str):
        if len(value) > MAX_NAME * MAX_MEMBERS:
            return False
        return all(valid_name(n.strip()) for n in value.split(",") if n.strip())
    if isinstance(value, list):
        return len(value) <= MAX_MEMBERS and all(valid_name(n) for n in value)
    return False


def parse_sync(raw: str | None) -> dict[str, Any] | None | Bad:
    """Who is synchronous: leader, sync_standby (comma-separated names, or a list), quorum."""
    if raw is None:
        return None
    data = _object(raw, MAX_SMALL_CHARS)
    if isinstance(data, Bad):
        return data
    if not _optional_name(data.get("leader")):
        return Bad("leader: not a member name")
    if not (data.get("sync_standby") is None or _standby_list(data["sync_standby"])):
        return Bad("sync_standby: not a list of member names")
    if not (data.get("quorum") is None or is_int(data["quorum"], 0, MAX_MEMBERS + 1)):
        return Bad("quorum: not a member count")
    return {k: data[k] for k in ("leader", "sync_standby", "quorum") if k in data}


def parse_status(raw: str | None) -> dict[str, Any] | None | Bad:
    """The leader's status: optime (its WAL position), slots {name: position}, retain_slots [name]."""
    if raw is None:
        return None
    data = _object(raw, MAX_STATUS_CHARS)
    if isinstance(data, Bad):
        return data
    if not (data.get("optime") is None or is_int(data["optime"], 0, LSN_END)):
        return Bad("optime: not a WAL position")
    slots = data.get("slots")
    if slots is not None and not (isinstance(slots, dict) and len(slots) <= MAX_SLOTS and all(
            valid_name(k) and is_int(v, 0, LSN_END) for k, v in slots.items())):
        return Bad("slots: not an object of slot names to WAL positions")
    retain = data.get("retain_slots")
    if retain is not None and not (isinstance(retain, list) and len(retain) <= MAX_SLOTS
                                   and all(valid_name(n) for n in retain)):
        return Bad("retain_slots: not a list of slot names")
    return {k: data[k] for k in ("optime", "slots", "retain_slots") if data.get(k) is not None}


def parse_failsafe(raw: str | None) -> dict[str, str] | None | Bad:
    """The members a leader cut off from etcd must hear from: {name: api_url}."""
    if raw is None:
        return None
    data = _object(raw, MAX_SMALL_CHARS)
    if isinstance(data, Bad):
        return data
    if len(data) > MAX_MEMBERS:
        return Bad(f"more than {MAX_MEMBERS} members")
    for name, url in data.items():
        if not valid_name(name) or url_problem(url, _MEMBER_URLS["api_url"]):
            return Bad("not an object of member names to REST API URLs")
    return data


# What parse_dynamic reads leniently (a bad value there falls back to its default): here each must
# have the right type, or the whole configuration is bad and the last good one stays in force.  A
# default ttl or an unpaused cluster is a change nobody asked for.
def _dynamic_checks() -> list[tuple[tuple[str, ...], Callable[[Any], Any]]]:
    checks: list[tuple[tuple[str, ...], Callable[[Any], Any]]] = []
    for key in DYNAMIC_INT_BOUNDS:
        checks.append(((key,), to_int))
        if key in LEGACY_NAMES:
            checks.append(((LEGACY_NAMES[key],), to_int))
    checks += [((key,), to_bool) for key in DYNAMIC_BOOLS]
    checks += [(("synchronous_mode",), to_sync_mode), (("standby_cluster",), to_standby_cluster),
               (("postgresql",), to_mapping), (("postgresql", "use_pg_rewind"), to_bool),
               (("postgresql", "use_slots"), to_bool), (("postgresql", "parameters"), to_mapping),
               (("postgresql", "pg_hba"), to_str_list)]
    return checks


_DYNAMIC_CHECKS = _dynamic_checks()


def config_problem(config: Mapping[str, Any]) -> str | None:
    """Why the dynamic configuration cannot be used as a whole, or None."""
    for path, convert in _DYNAMIC_CHECKS:
        value: Any = config
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            continue
        try:
            convert(value)
        except Invalid as exc:
            return f"{'.'.join(path)}: {exc.message}"
        except Exception as exc:  # a converter's own bug must cost this value, not the worker
            return f"{'.'.join(path)}: unreadable ({type(exc).__name__})"
    try:
        parse_dynamic(config)
    except Exception as exc:  # parse_dynamic promises never to fail; a value it missed must not slip through
        return f"unreadable ({type(exc).__name__})"
    return None


def parse_config(raw: str | None) -> dict[str, Any] | None | Bad:
    """The dynamic configuration (bootstrap.dcs's shape); None when the key is absent."""
    if raw is None:
        return None
    data = _object(raw, MAX_CONFIG_CHARS)
    if isinstance(data, Bad):
        return data
    problem = config_problem(data)
    return Bad(problem) if problem else data


# -- counting and logging the bad ones ----------------------------------------------------------------------


class BadValues:
    """How many values were rejected, and a small memory of recent (key, value) pairs so that each
    is logged once while it stays: a corrupt key is read every cycle, and one line says enough."""

    def __init__(self, memo: int = 128) -> None:
        self.total = 0
        self.memo = memo
        self._recent: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._lock = threading.Lock()  # reads run on the election worker's helper thread, and in hasupctl

    def report(self, key: str, raw: str | None, bad: Bad) -> None:
        """Count one rejected read of `key`; log it unless this very value was logged recently."""
        text = raw if isinstance(raw, str) else ""
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        with self._lock:
            self.total += 1
            seen = (key, digest)
            if seen in self._recent:
                self._recent.move_to_end(seen)
                return
            self._recent[seen] = None
            if len(self._recent) > self.memo:
                self._recent.popitem(last=False)
        # The reason, not the value: a value can be huge, and may hold a secret.
        log.warning("ignoring the value of etcd key %s (%d characters): %s", key[:MAX_NAME + 8], len(text),
                    bad.reason)


BAD_VALUES = BadValues()  # this process's count (the election worker's is in /metrics)


def checked(key: str, raw: str | None, parser: Callable[[str | None], T | Bad],
            bad_values: BadValues | None = None) -> T | Bad:
    """parser(raw), with a rejection counted and logged."""
    value = parser(raw)
    if isinstance(value, Bad):
        (bad_values or BAD_VALUES).report(key, raw, value)
    return value
