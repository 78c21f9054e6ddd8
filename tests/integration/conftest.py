import os
import shutil

import pytest

from tests.harness import PG_BIN, hasup_bin


def pytest_collection_modifyitems(config, items):
    missing = [what for what, ok in (("etcd", shutil.which("etcd")), ("PostgreSQL 15", os.path.isdir(PG_BIN)),
                                     ("hasup", os.path.exists(hasup_bin()))) if not ok]
    if missing and not os.environ.get("CI"):
        skip = pytest.mark.skip(reason="missing " + ", ".join(missing) + " (run `make test`)")
        for item in items:
            if "integration" in str(item.fspath):
                item.add_marker(skip)
