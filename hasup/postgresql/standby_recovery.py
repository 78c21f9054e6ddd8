"""Recovery settings of a standby cluster's members (hasup.config.standby).

The standby leader streams from standby_cluster's host with this node's replication credentials
(the password from the pgpass file, never in postgresql.conf), through primary_slot_name when set,
and restores, cleans up and delays as the section says.  The other members cascade from the standby
leader as ordinary replicas do, and restore from the same archive when the leader's WAL is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hasup.config import Config
from hasup.config.standby import remote_address
from hasup.postgresql import conf

# Also for the cascading members: their upstream may have recycled WAL they still need.
_ARCHIVE_KEYS = ("restore_command", "archive_cleanup_command")


def archive_settings(section: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: section[k] for k in _ARCHIVE_KEYS if section and section.get(k)}


def remote_settings(cfg: Config, section: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the standby leader's postgresql.conf carries for recovery."""
    params: dict[str, Any] = {"recovery_target_timeline": "latest", **archive_settings(section)}
    address = remote_address(section)
    if address is not None:
        host, port = address
        params["primary_conninfo"] = conf.dsn(
            host, port, cfg.postgresql.replication, application_name=cfg.name,
            passfile=cfg.postgresql.pgpass, gssencmode="prefer", target_session_attrs="any")
        slot = (section or {}).get("primary_slot_name")
        if slot:
            params["primary_slot_name"] = slot
    delay = (section or {}).get("recovery_min_apply_delay")
    if delay is not None:
        params["recovery_min_apply_delay"] = delay
    return params
