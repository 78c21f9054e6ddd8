"""The states the postgres worker reports for its PostgreSQL: Patroni's PostgresqlState strings it uses.

The postgres worker owns them; everyone else reads them off PgState, where
a state outside this set is refused at the boundary (hasup.ipc).  A
StrEnum, so the wire format and /patroni stay plain strings.
"""

from __future__ import annotations

from enum import StrEnum


class PgStatus(StrEnum):
    RUNNING = "running"
    STARTING = "starting"
    STOPPING = "stopping"
    STOPPED = "stopped"  # on purpose, or never started by this worker
    CRASHED = "crashed"  # it was running and went away without being asked to
    UNKNOWN = "unknown"  # a postmaster that has not answered three probes in a row
    RESTARTING = "restarting"
    INITIALIZING = "initializing new cluster"
    CUSTOM_BOOTSTRAP = "running custom bootstrap script"
    CUSTOM_BOOTSTRAP_FAILED = "custom bootstrap failed"
    STARTING_AFTER_CUSTOM_BOOTSTRAP = "starting after custom bootstrap"
    CREATING_REPLICA = "creating replica"
    PROMOTING = "promoting"
    DEMOTING = "demoting"
    REWINDING = "rewinding"


# Not running, and nothing is bringing it up: the policy restarts it (or lets go of the lock).
NOT_RUNNING = frozenset({PgStatus.STOPPED, PgStatus.CRASHED})

# What a request's action reports before its first step says more (hasup.postgresql.lifecycle's on_state).
# Follow and SetSyncStandbys have none: they report what PostgreSQL itself is doing.
ACTION_STATES = {
    "bootstrap": PgStatus.INITIALIZING,
    "createreplica": PgStatus.CREATING_REPLICA,
    "reinitialize": PgStatus.CREATING_REPLICA,
    "start": PgStatus.STARTING,
    "restart": PgStatus.RESTARTING,
    "stop": PgStatus.STOPPING,
    "promote": PgStatus.PROMOTING,
    "demote": PgStatus.DEMOTING,
}

# What a promote's failure reply carries (its result) when the pre_promote script vetoed it: election
# then gives the lock up instead of retrying (hasup.election.protocol).
REFUSED_BY = "refused_by"
PRE_PROMOTE = "pre_promote"
