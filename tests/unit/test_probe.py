"""The probe tells a hung server (no answer by the deadline) from one that refuses at once.

Only the first may be fenced: a PostgreSQL that is starting up answers
"not yet" quickly and is left alone (hasup.workers.postgres).
"""

from __future__ import annotations

import socket
import time

import pytest

from hasup.postgresql.probe import ProbeFailed, Prober, ProbeTimedOut


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)  # the kernel completes handshakes; nobody ever answers, as with a SIGSTOPped postmaster
    yield sock
    sock.close()


def test_a_server_that_never_answers_times_out_within_the_deadline(listener) -> None:
    port = listener.getsockname()[1]
    prober = Prober(f"host=127.0.0.1 port={port} user=x dbname=x connect_timeout=10", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ProbeTimedOut):
        prober.probe()
    assert time.monotonic() - started < 2.0


def test_a_refused_connection_is_a_failure_but_not_a_hang() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused at once
        prober = Prober(f"host=127.0.0.1 port={port} user=x dbname=x", timeout=2.0)
        with pytest.raises(ProbeFailed) as caught:
            prober.probe()
    assert not isinstance(caught.value, ProbeTimedOut)
