"""The harness's ports: a cluster's etcd, PostgreSQL and REST ports are told apart by free_port alone."""

from __future__ import annotations

import socket

from tests import harness


def test_free_port_never_hands_out_a_port_twice_even_when_the_kernel_offers_it_again(monkeypatch):
    offers = iter([41000, 41000, 41000, 41001])  # the kernel may well repeat a port just closed

    class Socket:
        def __init__(self) -> None:
            self.port = next(offers)

        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return "127.0.0.1", self.port

    monkeypatch.setattr(harness, "_handed_out", set())
    monkeypatch.setattr(socket, "socket", Socket)
    assert [harness.free_port(), harness.free_port()] == [41000, 41001]
