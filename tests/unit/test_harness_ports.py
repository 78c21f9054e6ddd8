"""The harness's ports: a cluster's etcd, PostgreSQL and REST ports are told apart by free_port alone."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests import harness


def kernel_offering(monkeypatch: pytest.MonkeyPatch, offers: Iterator[int],
                    taken: frozenset[int] = frozenset()) -> None:
    """socket.socket as the harness uses it: bind(port 0) gets the next offer; binding a taken port fails."""

    class Socket:
        port = 0

        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            if address[1] in taken:
                raise OSError("in use")
            self.port = address[1] or next(offers)

        def getsockname(self) -> tuple[str, int]:
            return "127.0.0.1", self.port

    monkeypatch.setattr(harness, "_handed_out", set())
    monkeypatch.setattr(socket, "socket", Socket)


def test_free_port_never_hands_out_a_port_twice_even_when_the_kernel_offers_it_again(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    kernel_offering(monkeypatch, iter([41000, 41000, 41000, 41001]))  # the kernel may well repeat a port just closed
    assert [harness.free_port(), harness.free_port()] == [41000, 41001]


def test_two_xdist_workers_hand_out_disjoint_ports_though_the_kernel_offers_even_ones(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    handed: dict[str, list[int]] = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        kernel_offering(monkeypatch, iter([41000, 41002, 41004, 41006]), taken=frozenset({41003}))
        handed[worker] = [harness.free_port(), harness.free_port()]
    assert handed == {"gw0": [41000, 41002], "gw1": [41001, 41005]}
