"""The short chaos runs: synchronous mode, fixed seed, one fault of several kinds.

First a single v2 etcd and three nodes, each on a network-namespace host
(tests/chaos/run.py); then the same on the production-like etcd (3 members, v3 only, client-certificate
TLS, each member on a host of its own) with the etcd member nemeses: one
member killed, one cut from the leader's node, a raft leader change; hasup
must ride each out with the same leader; then a cluster mid-migration, node1
running Patroni, with the faults that apply to both kinds.  After each fault the cluster must
be whole again within the heal bound; the checker then finds 0 acknowledged
writes lost and 0 dual-primary windows.  The long runs are bench/chaos.py.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest

from tests.chaos.run import Plan, Result, run
from tests.harness import PG_BIN, hasup_bin
from tests.harness.netns import netns_available, nft_available

pytestmark = [
    pytest.mark.skipif(not (netns_available() and nft_available()), reason="needs root, `ip netns` and `nft`"),
    pytest.mark.skipif(not (shutil.which("etcd") and os.path.isdir(PG_BIN) and os.path.exists(hasup_bin())),
                       reason="needs etcd, PostgreSQL 15 and hasup (run `make test`)"),
]

SEED = 7
FAULTS = ["partition-leader", "partition-leader-etcd", "sigkill-leader-tree", "sigstop-leader-hasup",
          "sigstop-leader-postgres", "etcd-down-failsafe", "switchover"]
# The three etcd member nemeses, and three that predate them: on the cluster partition-leader-etcd cuts the
# leader from every member.
FAULTS_ETCD3 = ["etcd-member-down", "partition-leader-etcd-member", "etcd-leader-change", "sigkill-leader-tree",
                "partition-leader-etcd", "switchover"]
# A cluster in the middle of a migration: what applies to Patroni and hasup nodes alike (MIXED_KINDS), in
# this order: the Patroni node leads through etcd's outage (failsafe: it pings the hasup nodes, they answer)
# and is then killed, so that a hasup node takes over from it.
FAULTS_MIXED = ["etcd-down-failsafe", "sigkill-leader-tree", "partition-leader", "switchover", "partition-leader-etcd"]


def assert_sound(result: Result, faults: list[str]) -> None:
    """0 lost, 0 dual primary, every fault healed within the bound, every reaction as expected."""
    verdict = result.verdict
    assert verdict.lost == ()
    assert verdict.discarded_by_rewind == ()
    assert verdict.dual_primary == ()
    assert verdict.failed_but_present == () and verdict.unknown_present == ()
    assert [r.name for r in result.faults] == faults and verdict.all_healed
    assert [r.name for r in result.faults if not r.reacted] == []  # e.g. a frozen PostgreSQL was fenced
    assert verdict.acknowledged > 1000


def test_short_chaos_run_in_synchronous_mode_loses_nothing_and_heals():
    faults = list(FAULTS)
    random.Random(SEED).shuffle(faults)
    result = run(Plan(synchronous=True, faults=faults, seed=SEED))
    print(f"\nchaos short run, synchronous mode, seed {SEED}:\n{result.verdict.summary()}")
    assert_sound(result, faults)
    # Only a frozen supervisor needs the watchdog; a leader cut off from etcd steps down by itself.
    resets = {(r.name, note) for r in result.faults for note in r.notes if note.startswith("watchdog reset")}
    frozen = next(r for r in result.faults if r.name == "sigstop-leader-hasup")
    assert resets == {("sigstop-leader-hasup", f"watchdog reset {frozen.target}")}


@pytest.mark.skipif(not (shutil.which("etcdctl") and shutil.which("openssl")), reason="needs etcdctl and openssl")
def test_short_chaos_run_on_a_3_member_tls_etcd3_rides_out_etcd_member_faults():
    faults = list(FAULTS_ETCD3)
    random.Random(SEED).shuffle(faults)
    result = run(Plan(synchronous=True, faults=faults, seed=SEED, etcd3=True))
    print(f"\nchaos short run on etcd3 (3 members, TLS), synchronous mode, seed {SEED} "
          f"({result.seconds:.0f} s):\n{result.verdict.summary()}")
    for r in result.faults:
        print(f"  {r.name}@{r.target}: {'; '.join(r.notes) or 'no notes'}")
    assert_sound(result, faults)
    # Losing one etcd member of three costs nothing: the member faults' holds saw the same leader (reacted),
    # and no node needed its watchdog.
    assert [n for r in result.faults for n in r.notes if n.startswith("watchdog reset")] == []


def test_short_chaos_run_on_a_mixed_cluster_of_patroni_and_hasup_loses_nothing_and_heals():
    """Mid-migration (docs/migration.md): node1 runs Patroni and leads first, node2 and node3 run hasup."""
    faults = list(FAULTS_MIXED)
    result = run(Plan(synchronous=True, faults=faults, seed=SEED, nodes=("patroni", "hasup", "hasup")))
    print(f"\nchaos short run, 1 Patroni + 2 hasup, synchronous mode, seed {SEED} ({result.seconds:.0f} s):\n"
          f"{result.verdict.summary()}")
    for r in result.faults:
        print(f"  {r.name}@{r.target}: {'; '.join(r.notes) or 'no notes'}")
    assert_sound(result, faults)
    assert [r.target for r in result.faults[:2]] == ["node1", "node1"]  # both hit the Patroni leader
