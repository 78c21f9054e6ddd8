"""The short chaos run (issue 7, acceptance 1): synchronous mode, fixed seed, one fault of several kinds.

etcd and three nodes each on a network-namespace host (tests/chaos/run.py);
after each fault the cluster must be whole again within the heal bound.
The checker then finds 0 acknowledged writes lost and 0 dual-primary
windows.  The long run of every kind is bench/chaos.py.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest

from tests.chaos.run import Plan, run
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


def test_short_chaos_run_in_synchronous_mode_loses_nothing_and_heals():
    faults = list(FAULTS)
    random.Random(SEED).shuffle(faults)
    result = run(Plan(synchronous=True, faults=faults, seed=SEED))
    verdict = result.verdict
    print(f"\nchaos short run, synchronous mode, seed {SEED}:\n{verdict.summary()}")
    assert verdict.lost == ()
    assert verdict.discarded_by_rewind == ()
    assert verdict.dual_primary == ()
    assert verdict.failed_but_present == () and verdict.unknown_present == ()
    assert [r.name for r in result.faults] == faults and verdict.all_healed
    assert [r.name for r in result.faults if not r.reacted] == []  # e.g. a frozen PostgreSQL was fenced
    assert verdict.acknowledged > 1000
    # Only a frozen supervisor needs the watchdog; a leader cut off from etcd steps down by itself.
    resets = {(r.name, note) for r in result.faults for note in r.notes if note.startswith("watchdog reset")}
    frozen = next(r for r in result.faults if r.name == "sigstop-leader-hasup")
    assert resets == {("sigstop-leader-hasup", f"watchdog reset {frozen.target}")}
