"""No module imports from a layer above its own: the package layout is the process tree, read bottom-up.

foundations  the message protocol and the PostgreSQL states it carries, /proc and signals, timing,
             configuration, the watchdog device
domain       etcd, PostgreSQL, the virtual IP, peers' REST answers, restart requests
runtime      what a worker process and the supervisor run on
roles        the election worker's policy and helpers; the REST API
processes    the worker entry points
entry        the supervisor, the hasup and hasupctl commands

Within a layer, imports are free, except between the two roles: the API
and election only ever talk through the supervisor's pipes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hasup

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundations", ("hasup", "hasup.ipc", "hasup.proc", "hasup.timing", "hasup.config", "hasup.watchdog",
                     "hasup.postgresql.state")),
    ("domain", ("hasup.dcs", "hasup.postgresql", "hasup.vip", "hasup.peers", "hasup.restarts")),
    ("runtime", ("hasup.worker", "hasup.supervision")),
    ("roles", ("hasup.election", "hasup.api")),
    ("processes", ("hasup.workers",)),
    ("entry", ("hasup.supervisor", "hasup.cli", "hasup.__main__", "hasup.ctl")),
]
ISOLATED = (("hasup.election", "hasup.api"),)
ROOT = Path(hasup.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def owner(module: str) -> tuple[int, str]:
    """(layer rank, the prefix that placed it): the longest prefix wins."""
    best = (-1, "")
    for rank, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best[1]):
                best = (rank, prefix)
    assert best[0] >= 0, f"{module} is in no layer: add it to LAYERS"
    return best


def hasup_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "hasup"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "hasup":
            for alias in node.names:  # `from hasup.x import y` may name the submodule hasup.x.y
                sub = f"{node.module}.{alias.name}"
                is_module = (ROOT.parent / Path(*sub.split("."))).with_suffix(".py").exists() or \
                    (ROOT.parent / Path(*sub.split("."))).is_dir()
                found.add(sub if is_module else node.module)
    return found


def violations() -> list[str]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        importer = module_name(path)
        rank, place = owner(importer)
        for imported in sorted(hasup_imports(path)):
            their_rank, their_place = owner(imported)
            if their_rank > rank:
                out.append(f"{importer} ({LAYERS[rank][0]}) imports {imported} ({LAYERS[their_rank][0]})")
            for a, b in ISOLATED:
                if {place, their_place} == {a, b}:
                    out.append(f"{importer} imports {imported}: {a} and {b} talk only through the supervisor")
    return out


def test_no_module_imports_from_a_higher_layer():
    assert violations() == []


def test_every_module_has_a_layer():
    for path in ROOT.rglob("*.py"):
        owner(module_name(path))


def test_the_check_sees_an_upward_import():
    # The walker must find what it is meant to forbid, or the test above proves nothing.
    assert "hasup.workers.election" in hasup_imports(ROOT / "supervisor.py")
    assert owner("hasup.workers.election")[0] > owner("hasup.postgresql.control")[0]
    assert owner("hasup.config.schema") == (0, "hasup.config")
