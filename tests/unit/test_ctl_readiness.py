"""hasupctl check: ready for the next migration step, read from the keys of either kind."""

from __future__ import annotations

from typing import Any

from hasup.ctl.readiness import kind_of, readiness
from hasup.dcs.model import Cluster, Leader, Member

MB = 1024 * 1024


def cluster(members: dict[str, dict[str, Any]], optime: int = 100 * MB, sync: str | None = "node2",
            paused: bool = False, retain: list[str] | None = None) -> Cluster:
    config: dict[str, Any] = {"synchronous_mode": True, **({"pause": True} if paused else {})}
    status = {"optime": optime, "retain_slots": retain if retain is not None else sorted(members)}
    return Cluster("1", config, 1, Leader("node1", 10), {n: Member(n, d) for n, d in members.items()}, [], None,
                   {"leader": "node1", "sync_standby": sync} if sync else None, optime, status=status)


LEADER = {"state": "running", "role": "primary", "xlog_location": 100 * MB, "version": "4.1.5", "hasup_version": "0.9"}


def replica(lsn: int = 100 * MB, state: str = "streaming") -> dict[str, Any]:
    return {"state": "running", "role": "replica", "replication_state": state, "xlog_location": lsn,
            "version": "4.1.5"}


def problems_of(c: Cluster, expected: int | None = 3, max_lag: float = 1.0) -> list[str]:
    checks, problems = readiness(c, expected, max_lag)
    return problems + [f"{m.name}: {m.problem}" for m in checks if m.problem]


def test_ready_when_every_member_streams_caught_up() -> None:
    c = cluster({"node1": LEADER, "node2": replica(), "node3": replica(100 * MB - MB // 2)})
    checks, problems = readiness(c, 3, 1.0)
    assert problems == [] and [m.problem for m in checks] == ["", "", ""]
    assert [m.kind for m in checks] == ["hasup 0.9", "Patroni 4.1.5", "Patroni 4.1.5"]
    assert [m.role for m in checks] == ["leader", "sync_standby", "replica"]


def test_not_ready_for_each_reason() -> None:
    assert problems_of(cluster({"node1": LEADER, "node2": replica()})) == ["2 member keys, expected 3"]
    assert problems_of(cluster({"node1": LEADER, "node2": replica(), "node3": replica(90 * MB)})) == \
        ["node3: 10.0 MB behind the leader"]
    assert problems_of(cluster({"node1": LEADER, "node2": replica(), "node3": replica(state="in archive recovery")})) \
        == ["node3: not streaming (in archive recovery)"]
    assert problems_of(cluster({"node1": LEADER, "node2": replica(), "node3": replica()}, sync=None)) == \
        ["synchronous mode is on but no synchronous standby is named"]
    assert problems_of(cluster({"node1": LEADER, "node2": replica(), "node3": replica()}, paused=True)) == \
        ["maintenance mode is on (resume first)"]
    # A leader that leaves itself out of retain_slots (hasup before it wrote the key as Patroni does).
    left_out = cluster({"node1": LEADER, "node2": replica(), "node3": replica()}, retain=["node2", "node3"])
    assert problems_of(left_out) == ["node1: the leader's status key does not retain slot node1"]
    stopped = {**replica(), "state": "stopped"}
    del stopped["replication_state"]
    assert problems_of(cluster({"node1": LEADER, "node2": replica(), "node3": stopped})) == ["node3: state stopped"]


def test_kind_from_the_member_key() -> None:
    assert kind_of(Member("a", {"version": "4.1.5"})) == "Patroni 4.1.5"
    assert kind_of(Member("a", {"version": "4.1.5", "hasup_version": "1.2"})) == "hasup 1.2"
    assert kind_of(Member("a", {})) == "unknown"
