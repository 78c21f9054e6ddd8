"""Asking other members how they are (their /patroni), as the leader race needs."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hasup.dcs.model import Member
from hasup.ha import PeerStatus

# Peers on the other side of a partition must not hold up the race for long.
PEER_TIMEOUT = 2.0
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def parse_status(name: str, body: dict[str, Any]) -> PeerStatus:
    xlog = body.get("xlog") or {}
    if "location" in xlog:
        wal = int(xlog["location"])
    else:
        wal = max(int(xlog.get("received_location") or 0), int(xlog.get("replayed_location") or 0))
    tags = body.get("tags") or {}
    priority = tags.get("failover_priority", 1)
    return PeerStatus(
        name=name,
        role=str(body.get("role", "unknown")),
        state=str(body.get("state", "unknown")),
        wal_position=wal,
        timeline=body.get("timeline") if isinstance(body.get("timeline"), int) else None,
        nofailover=bool(tags.get("nofailover")) or priority == 0,
        failover_priority=priority if isinstance(priority, int) else 1,
        watchdog_failed=bool(body.get("watchdog_failed")),
    )


def fetch_status(member: Member, timeout: float = PEER_TIMEOUT) -> PeerStatus | None:
    if not member.api_url:
        return None
    try:
        with _opener.open(member.api_url, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 answers still carry the status JSON
        try:
            body = json.loads(exc.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None
    return parse_status(member.name, body) if isinstance(body, dict) else None


def fetch_all(members: list[Member]) -> dict[str, PeerStatus | None]:
    if not members:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(members))) as pool:
        results = pool.map(fetch_status, members)
        return {m.name: r for m, r in zip(members, results, strict=True)}
