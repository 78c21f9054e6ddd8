"""Is the cluster ready for the next step of a migration or rolling upgrade? (pure; docs/migration.md)

Between two steps an operator wants every member back and streaming, caught up with the leader,
a synchronous standby named when synchronous mode is on, the leader's slot record covering every
member, and no maintenance mode left behind.  `readiness()` reads all that from the cluster's
keys alone, so it works whichever kind (hasup or Patroni) each member runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from hasup.ctl import views
from hasup.dcs.model import Cluster, Member
from hasup.postgresql.slots import slot_name

MB = 1024 * 1024


@dataclass(frozen=True)
class MemberCheck:
    name: str
    kind: str  # "hasup <version>" or "Patroni <version>", from the member key
    role: str
    problem: str = ""  # empty: ready
    protection: str = ""  # what enforces a hasup node's lease, and its last fence; empty for Patroni


def kind_of(member: Member) -> str:
    """hasup members publish their own version next to the Patroni one they speak for."""
    own = member.data.get("hasup_version")
    if isinstance(own, str) and own:
        return f"hasup {own[:40]}"
    version = member.data.get("version")
    return f"Patroni {str(version)[:40]}" if version is not None else "unknown"


def protection_of(member: Member) -> str:
    """hasup publishes which protection holds its lease (device, software fence, none) and when it last fenced."""
    protection = member.data.get("lease_protection")
    if not isinstance(protection, str) or not protection:
        return ""
    last_fence = member.data.get("last_fence")
    fenced = f", fenced {str(last_fence)[:40]}" if last_fence else ""
    return protection[:40] + fenced


def _streams(member: Member) -> bool:
    return member.data.get("replication_state") == "streaming" or member.state == "streaming"


def readiness(cluster: Cluster, expected: int | None, max_lag_mb: float) -> tuple[list[MemberCheck], list[str]]:
    """Each member's check, and the problems of the cluster as a whole (empty lists of problems: ready)."""
    problems: list[str] = []
    leader = cluster.leader.name if cluster.leader is not None else None
    if leader is None or leader not in cluster.members:
        problems.append("no leader" if leader is None else f"the leader {leader} has no member key")
    if cluster.paused:
        problems.append("maintenance mode is on (resume first)")
    if expected is not None and len(cluster.members) != expected:
        problems.append(f"{len(cluster.members)} member keys, expected {expected}")
    config = cluster.config or {}
    if config.get("synchronous_mode") not in (None, False, "off", "false") and not views.sync_names(cluster):
        problems.append("synchronous mode is on but no synchronous standby is named")
    pg = config.get("postgresql")
    use_slots = not (isinstance(pg, dict) and pg.get("use_slots") is False)
    listed = cluster.status.get("retain_slots")
    kept = set(listed) if isinstance(listed, list) else set()
    checks: list[MemberCheck] = []
    for member in views.sorted_members(cluster):
        role = views.dcs_role(cluster, member.name)
        problem = ""
        if member.state != "running" and not (member.name != leader and _streams(member)):
            problem = f"state {member.state}"
        elif member.name != leader:
            lag = None if cluster.optime is None else max(0, cluster.optime - member.wal_position) / MB
            if not _streams(member):
                problem = f"not streaming ({member.data.get('replication_state') or member.state})"
            elif lag is None:
                problem = "the leader publishes no position to compare with"
            elif lag > max_lag_mb:
                problem = f"{lag:.1f} MB behind the leader"
        if not problem and use_slots and kept and not member.tags.get("nostream") \
                and slot_name(member.name) not in kept:
            problem = f"the leader's status key does not retain slot {slot_name(member.name)}"
        checks.append(MemberCheck(member.name, kind_of(member), role, problem, protection_of(member)))
    return checks, problems
