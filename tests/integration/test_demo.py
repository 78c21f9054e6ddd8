"""`make demo` brings up a 3-node cluster and shows it (DEMO_EXIT=1 stops it after the table)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_brings_up_three_nodes_and_prints_the_table():
    env = dict(os.environ, DEMO_EXIT="1")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py")], capture_output=True, text=True,
                         timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.stdout.splitlines()
            if line.startswith("| node")]
    assert sorted(r[0] for r in rows) == ["node1", "node2", "node3"]
    assert sorted((r[2], r[3]) for r in rows) == [("Leader", "running"), ("Replica", "streaming"),
                                                   ("Replica", "streaming")]
    assert "+ Cluster: demo (" in out.stdout
