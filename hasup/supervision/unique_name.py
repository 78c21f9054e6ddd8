"""Before anything starts: is this node's `name` already used by a running member of the cluster?

Two nodes under one name would refresh the same member key, and the leader key that names it, each
believing it is that member.  A member key under our name is not enough to refuse: it may be this
node's own, left by a crash or a kill, and its TTL still running.  Only a live process at the key's
REST address that says it is this member of this cluster proves the name taken.  This node's own REST
API is not up yet, so a node restarted after a crash never meets itself there.
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Callable
from typing import Any

from hasup.config import Config
from hasup.dcs import parse
from hasup.dcs.backends import open_store
from hasup.dcs.model import Member
from hasup.dcs.store import DCSError
from hasup.peers import MAX_BODY, client_context, request

log = logging.getLogger("hasup.supervisor")

ASK_TIMEOUT = 3.0  # seconds: a live member answers /patroni in milliseconds
ETCD_TIMEOUT = 5.0  # seconds for the one read; an unreachable etcd is the election worker's business


def claims(body: Any, name: str, scope: str) -> bool:
    """A /patroni answer from a node calling itself `name` in `scope` (a scope it leaves out counts)."""
    if not isinstance(body, dict):
        return False
    ident = body.get("patroni")
    if not isinstance(ident, dict) or ident.get("name") != name:
        return False
    return ident.get("scope") in (None, scope)


def name_in_use(member: Member | None, name: str, scope: str, ask: Callable[[str], Any]) -> str | None:
    """Why `name` is taken (one line), or None.  `ask(url)` returns the decoded /patroni answer, or None."""
    if member is None or not member.api_url:
        return None
    if not claims(ask(member.api_url), name, scope):
        return None  # silent (our own stale key, a dead node), or something else now at that address
    return (f"name {name!r} is already in use by a running member of cluster {scope!r} "
            f"(its REST API at {member.api_url} answers as {name!r}); refusing to start")


def _ask(config: Config) -> Callable[[str], Any]:
    context = client_context(config.restapi)

    def ask(url: str) -> Any:
        try:
            _status, data = request(url, context=context, timeout=ASK_TIMEOUT)
            body = parse.decode_json(data.decode("utf-8"), MAX_BODY)
        except (OSError, http.client.HTTPException, ValueError):
            return None
        return None if isinstance(body, parse.Bad) else body
    return ask


def check_unique_name(config: Config) -> str | None:
    """One line when the name is taken; None when it is free or cannot be told (etcd unreachable)."""
    try:
        cluster = open_store(config.etcd, config.namespace, config.scope, ETCD_TIMEOUT).get_cluster()
    except DCSError as exc:
        log.warning("could not check that name %r is not in use (etcd: %s)", config.name, exc)
        return None
    except Exception as exc:  # noqa: BLE001 -- the check must never be what stops a start with a traceback
        log.warning("could not check that name %r is not in use (%s)", config.name, type(exc).__name__)
        return None
    return name_in_use(cluster.members.get(config.name), config.name, config.scope, _ask(config))
