"""Patroni's REST API, served by gunicorn from a shared snapshot (see hasup.workers.api)."""

from hasup.api.app import create_app
from hasup.api.health import health_code
from hasup.api.snapshot import Identity, SnapshotBuffer, SnapshotCache, make_snapshot

__all__ = ["Identity", "SnapshotBuffer", "SnapshotCache", "create_app", "health_code", "make_snapshot"]
