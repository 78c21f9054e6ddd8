"""PostgreSQL states are one enum owned by the postgres side, and nothing else crosses the pipe."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from hasup import ipc
from hasup.postgresql import lifecycle
from hasup.postgresql.state import ACTION_STATES, NOT_RUNNING, PgStatus


def pg_state(state: str) -> ipc.PgState:
    return ipc.PgState(state=state, role="replica", data_dir_empty=False, probe_ok=True, probe_at=0.0)


def test_a_state_travels_as_its_string_and_comes_back_as_the_enum():
    payload = ipc.encode(pg_state("creating replica"), 1, 0.0)
    assert json.loads(payload)["b"]["state"] == "creating replica"
    back = ipc.decode(payload).message
    assert isinstance(back, ipc.PgState) and back.state is PgStatus.CREATING_REPLICA


@pytest.mark.parametrize("bad", ["start failed", "setsyncstandbys", "", 7, None])
def test_a_state_the_worker_never_emits_is_a_broken_frame(bad):
    good = json.loads(ipc.encode(pg_state("running"), 1, 0.0))
    good["b"]["state"] = bad
    with pytest.raises(ipc.ProtocolError):
        ipc.decode(json.dumps(good).encode())


def test_every_state_the_lifecycle_reports_is_a_member_of_the_enum():
    tree = ast.parse(Path(lifecycle.__file__).read_text())
    reported = [node.args[0] for node in ast.walk(tree) if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute) and node.func.attr == "on_state"]
    assert reported, "the walker found no on_state calls"
    for arg in reported:
        assert isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name) and arg.value.id == "PgStatus", \
            ast.unparse(arg)
        assert arg.attr in PgStatus.__members__


def test_the_tables_hold_only_states():
    assert NOT_RUNNING <= set(PgStatus)
    assert set(ACTION_STATES.values()) <= set(PgStatus)
