"""Asking other members how they are (their /patroni), as the leader race needs.

Peers that serve https are verified against restapi.cafile (the system CAs
when it is unset), and this node shows its own restapi certificate, for
peers that require client certificates (contract §1.11: outgoing requests
fall back to the restapi files).
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hasup.config import RestApiConfig
from hasup.dcs.model import Member
from hasup.ha import PeerStatus

log = logging.getLogger(__name__)

# Peers on the other side of a partition must not hold up the race for long.
PEER_TIMEOUT = 2.0
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def parse_status(name: str, body: dict[str, Any]) -> PeerStatus:
    xlog = body.get("xlog") or {}
    if "location" in xlog:
        wal = int(xlog["location"])
    elif xlog.get("paused"):
        # Replay paused (by an operator, on purpose): what it received is not what it could serve.
        wal = int(xlog.get("replayed_location") or 0)
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


def client_context(restapi: RestApiConfig) -> ssl.SSLContext | None:
    """The context for https peers; None when this node has no TLS settings (urllib's default then)."""
    if not restapi.certfile and not restapi.cafile:
        return None
    try:
        context = ssl.create_default_context(cafile=restapi.cafile or None)
    except (OSError, ssl.SSLError) as exc:
        log.warning("restapi.cafile %s unusable for talking to peers: %s", restapi.cafile, exc)
        context = ssl.create_default_context()
    if restapi.certfile:
        try:
            context.load_cert_chain(restapi.certfile, restapi.keyfile or None, password=restapi.keyfile_password)
        except (OSError, ssl.SSLError) as exc:  # the api worker reports the same problem loudly
            log.warning("no client certificate for peers: %s", exc)
    return context


def _opener_for(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    if context is None:
        return _opener
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))


def fetch_status(member: Member, timeout: float = PEER_TIMEOUT,
                 context: ssl.SSLContext | None = None) -> PeerStatus | None:
    if not member.api_url:
        return None
    try:
        with _opener_for(context).open(member.api_url, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 answers still carry the status JSON
        try:
            body = json.loads(exc.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None
    return parse_status(member.name, body) if isinstance(body, dict) else None


def fetch_all(members: list[Member], context: ssl.SSLContext | None = None) -> dict[str, PeerStatus | None]:
    if not members:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(members))) as pool:
        results = pool.map(lambda m: fetch_status(m, context=context), members)
        return {m.name: r for m, r in zip(members, results, strict=True)}


def _failsafe_url(api_url: str) -> str:
    # Members publish .../patroni; the failsafe endpoint lives beside it.
    base = api_url.rsplit("/", 1)[0] if api_url.rstrip("/").endswith("patroni") else api_url.rstrip("/")
    return base + "/failsafe"


def ping_failsafe(api_url: str, body: dict[str, Any], auth: str | None, context: ssl.SSLContext | None,
                  timeout: float = PEER_TIMEOUT, attempts: int = 2) -> bool:
    """POST /failsafe to one member: True only for its `200 Accepted` (it is not leading and will not)."""
    data = json.dumps(body).encode()
    for _ in range(attempts):
        req = urllib.request.Request(_failsafe_url(api_url), data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        if auth:
            req.add_header("Authorization", auth)
        try:
            with _opener_for(context).open(req, timeout=timeout) as resp:
                return resp.status == 200
        except urllib.error.HTTPError as exc:
            log.warning("failsafe: %s answered %s", api_url, exc.code)
            return False
        except OSError:
            continue
    return False


def failsafe_confirmed(members: dict[str, str], body: dict[str, Any], auth: str | None,
                       context: ssl.SSLContext | None) -> bool:
    """Every listed member (api_url by name) confirms it is not leading; an empty list confirms trivially."""
    if not members:
        return True
    with ThreadPoolExecutor(max_workers=min(8, len(members))) as pool:
        answers = list(pool.map(lambda url: ping_failsafe(url, body, auth, context), members.values()))
    return all(answers)
