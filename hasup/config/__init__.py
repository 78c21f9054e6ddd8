"""Patroni-style YAML configuration: the typed settings of the local file, and the cluster-wide
(dynamic) settings kept in etcd.

The bottom layer: nothing here imports from the rest of hasup but `hasup.timing`.  The names
most modules need are re-exported here; the rest live in their own modules:

    values, addresses     raw values into typed ones, and how they are named in messages
    schema                which keys hasup reads, and the Reader that collects every problem
    bounded_yaml          the YAML loader with limits
    environment, sources  where a configuration comes from (variables, files, directories)
    model                 the frozen dataclasses of the local file
    restapi, etcd, postgresql, bootstrap, log, vip
                          one module per section of the file
    file                  the whole file into a `Config` (load_config)
    dynamic               the dynamic configuration (etcd's `config` key)
    slot_settings         its replication slot settings
"""

from hasup.config.dynamic import DynamicConfig, dynamic_problems, initial_dcs_config, parse_dynamic
from hasup.config.environment import take_environment
from hasup.config.file import build_config, load_config, load_config_text, load_vip
from hasup.config.model import (
    BootstrapConfig,
    Config,
    ConfigError,
    Credentials,
    EtcdConfig,
    LogConfig,
    PostgresConfig,
    RestApiConfig,
    Tags,
    UserSpec,
    VipConfig,
    WatchdogConfig,
)

__all__ = [
    "BootstrapConfig",
    "Config",
    "ConfigError",
    "Credentials",
    "DynamicConfig",
    "EtcdConfig",
    "LogConfig",
    "PostgresConfig",
    "RestApiConfig",
    "Tags",
    "UserSpec",
    "VipConfig",
    "WatchdogConfig",
    "build_config",
    "dynamic_problems",
    "initial_dcs_config",
    "load_config",
    "load_config_text",
    "load_vip",
    "parse_dynamic",
    "take_environment",
]
