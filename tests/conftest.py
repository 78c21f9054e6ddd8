import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.harness import become_subreaper, reap_zombies  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _subreaper():
    # Orphans of killed nodes re-parent to us, so cleanup can find them by PID.
    become_subreaper()
    yield
    reap_zombies()
