"""docs/etcd.md's load table is the one bench/etcd_load.py renders from its committed results."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_table_matches_the_results_files():
    spec = importlib.util.spec_from_file_location("etcd_load", ROOT / "bench" / "etcd_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.load_results(str(ROOT / "bench" / "results"))
    assert [r["supervisor"]["name"] for r in results][:1] == ["hasup"]
    for result in results:
        assert result["commit"] and result["machine"]["cores"] and result["rows"]
    assert module.section(results) in (ROOT / "docs" / "etcd.md").read_text(), \
        "run: python bench/etcd_load.py --render"
