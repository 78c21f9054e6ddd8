"""make test's second part: the serial files run on one worker in order, each soak file on another."""

from tests.conftest import SERIAL_FILES, SOAK_FILES, part_two_group


def test_every_serial_file_is_one_unit_and_each_soak_file_its_own():
    serial = {part_two_group(f"tests/integration/{name}::test_x[v2]") for name in SERIAL_FILES}
    soak = {part_two_group(f"tests/integration/{name}::test_y") for name in SOAK_FILES}
    assert serial == {"serial"}
    assert soak == set(SOAK_FILES) and not soak & serial
    assert part_two_group("tests/unit/test_ipc.py::test_z") == "tests/unit/test_ipc.py::test_z"
