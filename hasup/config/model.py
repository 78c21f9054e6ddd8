"""The typed configuration: frozen dataclasses for every section of the local file.

Built by `hasup.config.file.build_config`; the cluster-wide settings kept in etcd are
`hasup.config.dynamic.DynamicConfig`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from hasup.config.addresses import split_host_port
from hasup.config.methods import BASEBACKUP, BootstrapMethod, ReplicaMethod
from hasup.timing import DEFAULT_CALLBACK_TIMEOUT, DEFAULT_HEALTH_DEADLINE


class ConfigError(Exception):
    """The configuration cannot be used. `problems` holds one line per problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str | None = None
    sslmode: str | None = None

    def __repr__(self) -> str:  # never show the password
        return f"Credentials(username={self.username!r}, password={'******' if self.password else None})"


@dataclass(frozen=True)
class RestApiConfig:
    listen: str  # host:port
    connect_address: str  # host:port
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = field(default=None, repr=False)
    cafile: str | None = None
    verify_client: str = "none"  # none, optional, required
    allowlist: tuple[str, ...] = ()  # hosts, IPs or CIDRs allowed to call the unsafe endpoints
    allowlist_include_members: bool = False
    http_extra_headers: dict[str, str] = field(default_factory=dict)
    https_extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        scheme = "https" if self.certfile else "http"
        return f"{scheme}://{self.connect_address}/patroni"

    @property
    def unprotected(self) -> bool:
        """Reachable from other hosts with nothing guarding the unsafe endpoints (warned at start, in /metrics)."""
        return _beyond_loopback(self.listen) and self.username is None and not self.allowlist \
            and not self.allowlist_include_members and self.verify_client != "required"


@dataclass(frozen=True)
class EtcdConfig:
    """Where etcd is and how to reach it: the `etcd:` (v2 API) or `etcd3:` (v3 API) section."""

    hosts: tuple[tuple[str, int], ...]  # from host, hosts (list or comma string) or url
    protocol: str = "http"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    api_version: int = 2  # 2 for `etcd:`, 3 for `etcd3:`
    cacert: str | None = None  # CA bundle that signed etcd's server certificates
    cert: str | None = None  # client certificate (may hold the key too)
    key: str | None = None  # client certificate's private key
    key_password: str | None = field(default=None, repr=False)

    @property
    def section(self) -> str:
        """The configuration section these settings came from, for messages."""
        return "etcd3" if self.api_version == 3 else "etcd"


@dataclass(frozen=True)
class UserSpec:
    password: str | None = field(default=None, repr=False)
    options: tuple[str, ...] = ()  # e.g. ("createrole", "createdb")


@dataclass(frozen=True)
class BootstrapConfig:
    dcs: dict[str, Any]  # initial dynamic configuration, as given (validated)
    initdb: tuple[str, ...]  # rendered initdb arguments, e.g. ("--data-checksums", "--encoding=UTF8")
    pg_hba: tuple[str, ...]
    users: dict[str, UserSpec]
    post_bootstrap: str | None
    method: BootstrapMethod | None = None  # a custom bootstrap.method; None: initdb


@dataclass(frozen=True)
class PostgresConfig:
    listen: str  # host[,host2]:port
    connect_address: str  # host:port
    data_dir: str
    bin_dir: str  # "" = look up PATH
    config_dir: str  # defaults to data_dir
    pgpass: str
    superuser: Credentials
    replication: Credentials
    rewind: Credentials  # defaults to superuser
    parameters: dict[str, Any]  # local postgresql.parameters
    pg_hba: tuple[str, ...] | None
    pg_ctl_timeout: int = 60
    use_pg_rewind: bool | None = None  # None: take the dynamic config's value
    custom_conf: str | None = None
    database: str = "postgres"
    basebackup: tuple[str, ...] = ()  # rendered options, e.g. ("--checkpoint=fast",)
    # hasup's own: how long a live postgres worker may fail to reach the leader's PostgreSQL before it
    # is fenced (killed) and the lock released (docs/operations.md, hasup.timing).
    health_deadline: float = DEFAULT_HEALTH_DEADLINE
    # postgresql.callbacks: action (on_start, ...) -> command line; hasup's own callback_timeout bounds
    # each run (hasup/postgresql/callbacks.py).
    callbacks: dict[str, str] = field(default_factory=dict)
    callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT
    # postgresql.pre_promote and before_stop: command lines the postgres worker runs and waits for, each
    # bounded by callback_timeout (hasup/postgresql/hooks.py); "" when not set.
    pre_promote: str = ""
    before_stop: str = ""
    # A replica that cannot rejoin its leader's history is emptied and cloned again, instead of waiting
    # for an operator (off by default, as in Patroni: it throws data away).
    remove_data_directory_on_rewind_failure: bool = False
    remove_data_directory_on_diverged_timelines: bool = False
    # How a replica's data directory is built, tried in order (hasup/postgresql/replica_methods.py),
    # and the settings of each method other than the built-in basebackup.
    create_replica_methods: tuple[str, ...] = (BASEBACKUP,)
    replica_methods: dict[str, ReplicaMethod] = field(default_factory=dict)
    # postgresql.recovery_conf: recovery parameters a replica runs with (restore_command, ...).
    recovery_conf: dict[str, Any] = field(default_factory=dict)

    @property
    def stop_hook_time(self) -> float:
        """The longest a stop may wait for before_stop: what every bound around a stop must allow for."""
        return self.callback_timeout if self.before_stop else 0.0

    @property
    def promote_hook_time(self) -> float:
        return self.callback_timeout if self.pre_promote else 0.0

    @property
    def listen_hosts(self) -> list[str]:
        return self.listen.rsplit(":", 1)[0].split(",")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def conn_url(self) -> str:
        return f"postgres://{self.connect_address}/{self.database}"


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"
    traceback_level: str = "ERROR"
    format: str = "%(asctime)s %(levelname)s: %(message)s"
    dateformat: str | None = None
    dir: str | None = None
    file_num: int = 4
    file_size: int = 25000000
    type: str = "plain"  # plain or json
    # json: (record attribute, key in the output) pairs, from `format` as a string, list or mapping
    json_fields: tuple[tuple[str, str], ...] = ()
    static_fields: dict[str, Any] = field(default_factory=dict)  # json: added to every line
    mode: int | None = None  # permission bits of the log file
    loggers: dict[str, str] = field(default_factory=dict)  # logger name -> level


@dataclass(frozen=True)
class VipConfig:
    """The virtual IP that follows the leader (hasup's own section; Patroni has none)."""

    address: str  # without prefix
    prefix: int
    interface: str
    label: str | None = None  # IPv4 only, "<interface>:<suffix>"
    broadcast: str | None = None  # None: derived from address and prefix ("brd +")

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix}"

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version


@dataclass(frozen=True)
class WatchdogConfig:
    mode: str = "automatic"  # off, automatic, required
    device: str = "/dev/watchdog"
    safety_margin: int = 5
    driver: str = "default"
    # hasup's own: the watchdog worker kills PostgreSQL itself when the lease runs out unrenewed, before
    # any device would fire (docs/operations.md, "The software fence").  Independent of mode, which is
    # about the device alone, as in Patroni.
    software_fence: bool = True


@dataclass(frozen=True)
class Tags:
    nofailover: bool = False
    failover_priority: int = 1
    noloadbalance: bool = False
    clonefrom: bool = False
    nosync: bool = False
    raw: dict[str, Any] = field(default_factory=dict)  # every tag as configured (published in member keys)


@dataclass(frozen=True)
class Config:
    scope: str
    namespace: str  # normalised: leading and trailing slash removed, e.g. "service"
    name: str
    restapi: RestApiConfig
    etcd: EtcdConfig
    bootstrap: BootstrapConfig
    postgresql: PostgresConfig
    tags: Tags
    log: LogConfig
    watchdog: WatchdogConfig
    raw: dict[str, Any] = field(repr=False, default_factory=dict)  # the merged YAML + env, for reload/ConfigChanged
    vip: VipConfig | None = None


def _beyond_loopback(listen: str) -> bool:
    """Whether restapi.listen accepts connections from other hosts: any address but a loopback one;
    a host name counts as reachable (it is not resolved here, and may resolve anywhere later)."""
    host = split_host_port(listen, allow_empty_host=True)[0].strip().lower()
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True
