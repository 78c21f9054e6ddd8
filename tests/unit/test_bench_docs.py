"""docs/benchmarks.md and docs/chaos.md are what bench/report.py and bench/chaos.py render from the committed
result files, and every result they show names the commit it measured, so that every figure can be reproduced."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
COMMIT = re.compile(r"[0-9a-f]{40}")


def bench_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered_benchmarks() -> tuple[str, list[str]]:
    report = bench_module("report")
    results = report.Results(str(RESULTS))
    return report.render(results), list(results.used)


def assert_reproducible(name: str, result: dict[str, Any]) -> None:
    assert COMMIT.fullmatch(result.get("commit") or ""), f"{name} names no commit: rerun its benchmark"
    assert "hasup_dirty" in result, f"{name} does not say whether hasup/ matched the commit"
    assert result["date"] and result["settings"] and result["command"], name
    machine = result["machine"]
    for key in ("cpu_model", "cores", "memory_mib", "kernel", "python", "postgresql", "etcd", "load_average"):
        assert machine.get(key) is not None, f"{name}: the machine's {key} is not recorded"


def test_benchmarks_md_is_what_the_results_render():
    text, used = rendered_benchmarks()
    assert used, "docs/benchmarks.md shows no result file"
    assert text == (ROOT / "docs" / "benchmarks.md").read_text(), "docs/benchmarks.md is stale: run `make bench-docs`"


def test_every_result_the_benchmarks_page_shows_names_its_commit_settings_and_machine():
    text, used = rendered_benchmarks()
    for name in used:
        assert_reproducible(name, json.loads((RESULTS / name).read_text()))
        assert f"`{name}`" in text, f"docs/benchmarks.md does not name {name}, which it draws figures from"


def test_chaos_md_is_what_the_results_render():
    chaos = bench_module("chaos")
    assert chaos.render(chaos.load_runs(str(RESULTS))) + "\n" == (ROOT / "docs" / "chaos.md").read_text(), \
        "docs/chaos.md is stale: run `python bench/chaos.py --report`"


def test_every_chaos_result_names_its_commit_and_measured_lag():
    for path in sorted(RESULTS.glob("chaos-*.json")):
        result = json.loads(path.read_text())
        assert_reproducible(path.name, result)
        assert result.get("replication_lag"), f"{path.name} has no measured replication lag: rerun `make chaos`"


def test_every_result_file_is_shown_somewhere():
    """A result no page shows is a figure nobody can check, or a stale one that a rename left behind."""
    _, used = rendered_benchmarks()
    shown = set(used) | {p.name for p in RESULTS.glob("chaos-*.json")}
    assert sorted(p.name for p in RESULTS.glob("*.json") if p.name not in shown) == []
