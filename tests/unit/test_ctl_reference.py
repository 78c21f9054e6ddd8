"""docs/hasupctl.md is generated from the commands' help: it must match them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "ctl_reference.py"


def test_the_reference_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("ctl_reference", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render()
    for command in ("list", "switchover", "edit-config", "query", "remove"):
        assert f"\n## {command}\n" in text and f"Usage: hasupctl {command} " in text
    assert Path(module.DOC).read_text() == text, "run: python tools/ctl_reference.py"
