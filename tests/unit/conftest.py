"""Fixtures shared by the unit tests that kill fake process trees (tests/unit/proctrees.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.proctrees import Sandbox, install_fake_bin, open_sandbox


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return install_fake_bin(tmp_path_factory.mktemp("fakebin"))


@pytest.fixture
def sandbox(tmp_path: Path, fake_bin: tuple[str, str]) -> Iterator[Sandbox]:
    with open_sandbox(tmp_path, fake_bin) as box:
        yield box
