"""Lost log records on /metrics, from the supervisor's LogLoss through the api worker's snapshot; and the
replay a restarted api reads before it serves (its first /primary answer comes from it)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from hasup import ipc
from hasup.api import health, metrics
from hasup.api.snapshot import Identity, SnapshotBuffer, SnapshotCache
from hasup.worker import WorkerContext
from hasup.workers.api import ChannelReader, SnapshotRenderer
from tests.unit.test_supervisor import config

LABELS = '{name="n1",scope="main"}'


@pytest.fixture
def renderer() -> SnapshotRenderer:
    return SnapshotRenderer(Identity("main", "n1"), SnapshotBuffer())


def scrape(renderer: SnapshotRenderer, now: float | None = None) -> str:
    snap = SnapshotCache(renderer.buffer)()
    return metrics.render(snap, now if now is not None else snap["produced_at"])


def test_lost_log_records_are_a_counter_on_metrics(renderer):
    assert renderer.absorb(ipc.LogLoss(7))
    renderer.render()
    text = scrape(renderer)
    assert f"hasup_log_records_lost_total{LABELS} 7.0" in text
    assert "# TYPE hasup_log_records_lost_total counter" in text


def test_none_lost_until_the_supervisor_says_otherwise(renderer):
    renderer.render()
    assert f"hasup_log_records_lost_total{LABELS} 0.0" in scrape(renderer)


@pytest.mark.parametrize("value", [-3, "12", None, 1.5, True, [1]])
def test_a_nonsense_count_in_the_snapshot_reads_as_zero(value):
    snap = {"identity": {"scope": "main", "name": "n1"}, "supervisor": {"log_records_lost": value}}
    assert f"hasup_log_records_lost_total{LABELS} 0.0" in metrics.render(snap, 1.0)
    assert f"hasup_log_records_lost_total{LABELS} 0.0" in metrics.render({**snap, "supervisor": "x"}, 1.0)


@pytest.mark.parametrize("lost", [-1, "7", 10**16, True, 2.5, None])
def test_log_loss_is_parsed_with_bounds_at_the_boundary(lost):
    frame = json.dumps({"k": "LogLoss", "s": 1, "t": 0.0, "b": {"lost": lost}}).encode()
    with pytest.raises(ipc.ProtocolError):
        ipc.decode(frame)
    assert ipc.decode(ipc.encode(ipc.LogLoss(ipc.MAX_COUNT), 1, 0.0)).message == ipc.LogLoss(ipc.MAX_COUNT)


# -- a restarted api: what waits on its pipe is published before the request worker exists ------------------------


@pytest.fixture
def pipe() -> Iterator[tuple[ipc.Channel, ipc.Channel]]:
    a, b = socket.socketpair()
    supervisor, api = ipc.Channel(a, "api"), ipc.Channel(b, "supervisor")
    yield supervisor, api
    supervisor.close()
    api.close()


def test_catch_up_publishes_the_replay_and_answers_the_ping(renderer, pipe, tmp_path: Any):
    supervisor, api = pipe
    now = 1000.0
    view = ipc.ClusterView(now, 1.0, "node1", True, now + 30, {}, {"ttl": 30}, (), None, None, None, None, False)
    pg = ipc.PgState("running", "primary", False, True, now, postmaster_pid=42)
    for msg in (view, pg, ipc.LogLoss(2), ipc.Ping(1)):
        supervisor.send(msg)
    supervisor.flush()
    ctx = WorkerContext("api", config(tmp_path), api, None, 0)
    reader = ChannelReader(ctx, renderer, None, lambda: None, threading.RLock())  # type: ignore[arg-type]
    reader.catch_up()
    snap = SnapshotCache(renderer.buffer)()
    assert health.health_code("/primary", {}, snap, now + 1) == 200
    assert f"hasup_log_records_lost_total{LABELS} 2.0" in metrics.render(snap, now + 1)
    assert [e.message for e in supervisor.receive()] == [ipc.Pong(1)]


def test_catch_up_with_nothing_waiting_keeps_the_empty_snapshot(renderer, pipe, tmp_path: Any):
    _supervisor, api = pipe
    renderer.render()
    before = renderer.buffer.read()
    ctx = WorkerContext("api", config(tmp_path), api, None, 0)
    ChannelReader(ctx, renderer, None, lambda: None, threading.RLock()).catch_up()  # type: ignore[arg-type]
    assert renderer.buffer.read() == before
    assert health.health_code("/primary", {}, SnapshotCache(renderer.buffer)(), 1.0) == 503
