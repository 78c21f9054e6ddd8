"""The harness's ports: a cluster's etcd, PostgreSQL and REST ports are told apart by free_port alone."""

from __future__ import annotations

import pytest

from tests import harness


def ports_of(monkeypatch: pytest.MonkeyPatch, ephemeral: tuple[int, int], taken: frozenset[int] = frozenset(),
             start: int | None = None) -> None:
    """free_port on a kernel with this ephemeral range, where the ports in taken are in use."""
    monkeypatch.setattr(harness, "_ephemeral_range", lambda: ephemeral)
    monkeypatch.setattr(harness, "_bindable", lambda port: port not in taken)
    monkeypatch.setattr(harness, "_handed_out", set())
    monkeypatch.setattr(harness, "_cursor", [] if start is None else [start])


def test_ports_are_never_in_the_ephemeral_range_where_an_outgoing_connection_could_take_them(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    ports_of(monkeypatch, (32768, 60999))
    handed = [harness.free_port() for _ in range(500)]
    assert all(10000 <= p < 32768 for p in handed)
    ports_of(monkeypatch, (1024, 60999))  # a kernel that leaves no room below: above it, then
    assert all(61000 <= harness.free_port() <= 65535 for _ in range(500))


def test_a_port_is_handed_out_once_and_a_taken_one_never(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    ports_of(monkeypatch, (32768, 60999), taken=frozenset({32766}), start=32765)
    assert [harness.free_port() for _ in range(3)] == [32765, 32767, 10000]  # and it wraps round
    handed = [harness.free_port() for _ in range(32768 - 10000 - 4)]
    assert len(set(handed)) == len(handed) and 32765 not in handed and 32766 not in handed
    with pytest.raises(RuntimeError, match="no free port"):
        harness.free_port()


def test_two_xdist_workers_hand_out_disjoint_ports(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    handed: dict[str, list[int]] = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        ports_of(monkeypatch, (32768, 60999), taken=frozenset({20003}), start=20000)
        handed[worker] = [harness.free_port(), harness.free_port()]
    assert handed == {"gw0": [20000, 20002], "gw1": [20001, 20005]}
