"""Where the election worker stands in a multi-step protocol, and the answers that move it on.

A phase is entered by the action that starts the protocol (a demote, a
promote, a fence, a bootstrap, a shutdown) and left by the answer to it
(the postgres worker's reply, the supervisor's fence result) or by what a
later cycle sees.  Phases are frozen values held by the worker and handed
to `policy.decide()` with every other input, so each step of every
protocol is a decision a table test can show.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hasup.election.actions import Action


@dataclass(frozen=True)
class Idle:
    pass


@dataclass(frozen=True)
class Bootstrapping:
    """initdb (or a custom bootstrap) runs; we hold the initialize key."""


@dataclass(frozen=True)
class Promoting:
    require_lsn: int | None = None


@dataclass(frozen=True)
class Demoting:
    candidate: str | None


@dataclass(frozen=True)
class Fencing:
    """The supervisor kills our hung PostgreSQL; the lock is kept until it says whether that is confirmed."""


@dataclass(frozen=True)
class FenceUnconfirmed:
    """A process of the hung PostgreSQL may survive: no lock writes, the lease runs out, the watchdog fires."""


@dataclass(frozen=True)
class SittingOut:
    """We let go of the lock because our PostgreSQL was hung or down, or the pre_promote script refused
    the promotion: the next race is for the others."""

    until: float  # monotonic
    why: str = ""  # said in every decision while it lasts ("": our PostgreSQL was hung or down)


PRE_PROMOTE_FAILED = "the pre-promote script failed"


@dataclass(frozen=True)
class ShuttingDown:
    stopping: bool  # a fast stop is in flight (False: paused, PostgreSQL is left running)
    lock_writes: bool = True  # False: an unconfirmed fence forbids them to the end


Phase = Idle | Bootstrapping | Promoting | Demoting | Fencing | FenceUnconfirmed | SittingOut | ShuttingDown
PHASES: tuple[type[Phase], ...] = (Idle, Bootstrapping, Promoting, Demoting, Fencing, FenceUnconfirmed, SittingOut,
                                   ShuttingDown)


# -- answers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replied:
    """The postgres worker answered the request `action` sent."""

    action: Action
    ok: bool
    message: str = ""
    result: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fenced:
    """The supervisor's answer to FencePostgres."""

    confirmed: bool
    reason: str


@dataclass(frozen=True)
class ShutdownAsked:
    """The supervisor stops the node (SIGTERM, systemd stop)."""


@dataclass(frozen=True)
class GaveUp:
    """The supervisor gives up on this node (a worker keeps crashing): it stopped PostgreSQL itself, and
    /proc confirms none of it is left."""

    reason: str


Event = Replied | Fenced | ShutdownAsked | GaveUp
