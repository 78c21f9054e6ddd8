"""Which callbacks a PostgreSQL event calls for, and with which role (docs/operations.md, "Callbacks").

The postgres worker tells an `Announcer` what happened -- an action began or finished, a probe
saw PostgreSQL, its parameters were reloaded -- and gets back the callbacks to run. No I/O here.

The announcer remembers the role it last announced, the way Patroni remembers its own role, so
that a former primary coming back as a replica is a role change (`on_role_change replica`), not a
start. It also remembers whether the PostgreSQL now running was announced at all, so one that
hasup found already running (a restarted hasup) or that came up after a start gave up waiting
still gets its `on_start`, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Actions after which PostgreSQL runs, freshly started (the clone and initdb ones included: the
# Patroni fires nothing while bootstrapping, and `on_start` once it is done).
STARTS = frozenset({"Bootstrap", "CreateReplica", "Reinitialize", "Start"})
FORMER_PRIMARY = frozenset({"primary", "demoted"})


@dataclass(frozen=True)
class Event:
    action: str  # on_start, on_stop, on_restart, on_reload, on_role_change
    role: str  # primary, replica, demoted (Patroni's `promoted` is passed as primary)


@dataclass(frozen=True)
class Before:
    """What the worker knew when an action began."""

    kind: str  # the request's class name: Start, Stop, Promote, ...
    answering_role: str | None  # primary or replica when PostgreSQL answered a probe, else None
    postmaster_running: bool
    reported_role: str | None = None  # the role last reported, even for a stopped PostgreSQL
    following: str | None = None
    as_primary: bool | None = None  # Start only


class Announcer:
    def __init__(self) -> None:
        self.role: str | None = None  # the role last announced
        self.announced = False  # the running PostgreSQL has had its on_start (or role change)
        self.before: Before | None = None

    def began(self, before: Before) -> None:
        self.before = before

    def finished(self, kind: str, ok: bool, result: dict[str, Any], following: str | None,
                 postmaster_running: bool) -> list[Event]:
        """The action `kind` ended; `following` and `postmaster_running` describe the aftermath."""
        b, self.before = self.before, None
        if b is None or b.kind != kind:
            return []
        came_up = result.get("in_recovery")
        up_role = None if came_up is None else ("replica" if came_up else "primary")
        if kind in STARTS:
            if ok:
                default = "primary" if kind == "Bootstrap" or b.as_primary else "replica"
                return self._came_up(up_role or default)
            if kind == "Start" and b.as_primary and self.role == "primary" and not postmaster_running:
                # A leader whose PostgreSQL would not start again (Patroni: post_recover).
                return self._demoted(postmaster_running)
            return []
        if kind == "Stop":
            if not ok or not b.postmaster_running:
                return []  # on_stop only after a stop that signalled PostgreSQL
            self.announced = False
            return [Event("on_stop", b.answering_role or self.role or b.reported_role or "uninitialized")]
        if kind == "Demote":
            if not ok:
                return []
            self.role, self.announced = "demoted", False
            return [Event("on_stop", "primary")]
        if kind == "Restart":
            if not ok:
                self.announced = self.announced and postmaster_running
                return []
            self.role, self.announced = up_role or self.role or b.answering_role or "replica", True
            return [Event("on_restart", self.role)]
        if kind == "Promote":
            return self._promoted() if ok else []
        if kind == "Follow":
            return self._followed(b, ok, up_role, following, postmaster_running)
        return []

    def _followed(self, b: Before, ok: bool, up_role: str | None, following: str | None,
                  postmaster_running: bool) -> list[Event]:
        if not ok:
            if b.answering_role == "primary" and not postmaster_running:
                return self._demoted(postmaster_running)  # stopped to rejoin, then could not start
            return []
        if up_role is not None:  # PostgreSQL was started (after a stop or a rewind)
            return self._came_up(up_role)
        # PostgreSQL kept running and was told where to stream from with a reload.
        if self.role in FORMER_PRIMARY:
            self.role = "replica"
            return [Event("on_role_change", "replica")]
        if following != b.following:
            return [Event("on_reload", self.role or "replica")]
        return []

    def observed(self, busy: str, answering: bool, postmaster_running: bool, role: str) -> list[Event]:
        """A probe's outcome: `role` is primary or replica while PostgreSQL answers."""
        if busy == "promote" and answering and role == "primary":
            # Announce as soon as PostgreSQL left recovery, not after the promote's checkpoint:
            # a VIP-moving on_role_change should not wait for it.
            return self._promoted()
        if busy:
            return []
        if not postmaster_running:
            self.announced = False
            return []
        if answering and not self.announced:
            return self._came_up(role)
        return []

    def reloaded(self, role: str) -> list[Event]:
        """PostgreSQL (running, with `role`) was sent SIGHUP to re-read its configuration."""
        return [Event("on_reload", role or self.role or "replica")]

    def _came_up(self, role: str) -> list[Event]:
        previous, self.role, self.announced = self.role, role, True
        if role == "replica" and previous in FORMER_PRIMARY:
            return [Event("on_role_change", "replica")]
        return [Event("on_start", role)]

    def _promoted(self) -> list[Event]:
        if self.role == "primary" and self.announced:
            return []
        self.role, self.announced = "primary", True
        return [Event("on_role_change", "primary")]

    def _demoted(self, postmaster_running: bool) -> list[Event]:
        self.role, self.announced = "demoted", postmaster_running
        return [Event("on_role_change", "demoted")]
