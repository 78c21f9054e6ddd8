"""The etcd member nemeses' verdict (tests/chaos/nemesis.py): the hold fails when the hasup leader changed.

No cluster: a fake etcd whose leader key changes on cue and a fake leader node.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.chaos.nemesis import ETCD_MEMBER_KINDS, KINDS, MIXED_KINDS, Nemeses, kinds_for
from tests.chaos.run import Plan, run


@dataclass
class FakeEtcd:
    leader_keys: list[dict[str, Any] | None]  # what each read of the leader key returns; the last one sticks

    def key(self, key: str) -> dict[str, Any] | None:
        assert key == "/service/s/leader"
        return self.leader_keys.pop(0) if len(self.leader_keys) > 1 else self.leader_keys[0]


@dataclass
class FakeNode:
    name: str
    timelines: list[int]
    in_recovery: bool = False
    calls: list[str] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        return {"timeline": self.timelines.pop(0) if len(self.timelines) > 1 else self.timelines[0]}

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        self.calls.append(query)
        return [(self.in_recovery,)]


@dataclass
class FakeCluster:
    etcd: FakeEtcd
    dcs: dict[str, Any] = field(default_factory=lambda: {"ttl": 10})

    @staticmethod
    def key(rel: str) -> str:
        return f"/service/s/{rel}"


def key(value: str, created: int) -> dict[str, Any]:
    return {"value": value, "createdIndex": created, "modifiedIndex": created + 5}


def nemeses(etcd: FakeEtcd) -> Nemeses:
    return Nemeses(FakeCluster(etcd), None, random.Random(1), True, None)  # type: ignore[arg-type]


def test_the_same_leader_throughout_passes() -> None:
    node = FakeNode("node1", [2])
    hold = nemeses(FakeEtcd([key("node1", 7)]))._same_leader(node, 0)  # type: ignore[arg-type]
    hold()
    assert node.calls == ["SELECT pg_is_in_recovery()"]


@pytest.mark.parametrize("after, message", [
    (key("node2", 9), "the hasup leader changed"),
    (key("node1", 9), "the hasup leader changed"),  # expired and taken again by the same node: a new key
])
def test_a_new_leader_key_fails_the_hold(after: dict[str, Any], message: str) -> None:
    hold = nemeses(FakeEtcd([key("node1", 7), after]))._same_leader(FakeNode("node1", [2]), 0)  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match=message):
        hold()


def test_a_demoted_or_re_promoted_leader_fails_the_hold() -> None:
    etcd = FakeEtcd([key("node1", 7)])
    demoted = FakeNode("node1", [2], in_recovery=True)
    with pytest.raises(AssertionError, match="no longer a primary"):
        nemeses(etcd)._same_leader(demoted, 0)()  # type: ignore[arg-type]
    promoted_again = FakeNode("node1", [2, 3])
    with pytest.raises(AssertionError, match="from timeline 2 to 3"):
        nemeses(etcd)._same_leader(promoted_again, 0)()  # type: ignore[arg-type]


def test_member_nemeses_only_on_the_etcd3_cluster() -> None:
    assert set(kinds_for(True)) == set(KINDS)
    assert set(kinds_for(False)) == set(KINDS) - set(ETCD_MEMBER_KINDS)
    with pytest.raises(AssertionError, match="etcd3"):
        nemeses(FakeEtcd([None]))._members()


def test_a_cluster_with_patroni_nodes_draws_only_from_the_nemeses_that_apply_to_both() -> None:
    mixed = Plan(synchronous=True, faults=["sigstop-leader-hasup"], seed=1, nodes=("patroni", "hasup", "hasup"))
    assert set(mixed.catalogue()) == set(MIXED_KINDS) - set(ETCD_MEMBER_KINDS)
    assert "sigstop-leader-postgres" not in Plan(True, [], 1, etcd3=True, nodes=mixed.nodes).catalogue()
    assert Plan(True, [], 1).catalogue() == kinds_for(False)
    with pytest.raises(ValueError, match="Patroni nodes"):
        run(mixed)  # refused before anything starts
