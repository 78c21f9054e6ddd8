"""Configuration from environment variables (HASUP_*, and the PATRONI_* names for drop-in use).

The table maps each variable hasup reads to the key it sets; `take_environment` removes them
from the daemon's own environment at start and keeps them for reloads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import yaml

from hasup.config.bounded_yaml import load_yaml
from hasup.config.schema import DCS_SECTIONS, OTHER_DCS, VIP_USED

ENV_PREFIXES = ("PATRONI_", "HASUP_")  # later wins
CONFIGURATION_VARIABLE = "CONFIGURATION"

_CREDENTIAL_SUFFIXES = (
    "USERNAME", "PASSWORD", "SSLMODE", "SSLKEY", "SSLPASSWORD", "SSLCERT", "SSLROOTCERT", "SSLCRL",
    "SSLCRLDIR", "SSLNEGOTIATION", "GSSENCMODE", "CHANNEL_BINDING",
)
_LOG_SUFFIXES = (
    "TYPE", "LEVEL", "TRACEBACK_LEVEL", "FORMAT", "DATEFORMAT", "STATIC_FIELDS", "MAX_QUEUE_SIZE", "DIR",
    "MODE", "FILE_SIZE", "FILE_NUM", "LOGGERS", "DEDUPLICATE_HEARTBEAT_LOGS",
)
_RESTAPI_SUFFIXES = (
    "LISTEN", "CONNECT_ADDRESS", "CERTFILE", "KEYFILE", "KEYFILE_PASSWORD", "CAFILE", "CIPHERS",
    "VERIFY_CLIENT", "HTTP_EXTRA_HEADERS", "HTTPS_EXTRA_HEADERS", "ALLOWLIST",
    "ALLOWLIST_INCLUDE_MEMBERS", "REQUEST_QUEUE_SIZE", "SERVER_TOKENS",
)
_CTL_SUFFIXES = ("INSECURE", "CACERT", "CERTFILE", "KEYFILE", "KEYFILE_PASSWORD")
_POSTGRESQL_SUFFIXES = (
    "LISTEN", "CONNECT_ADDRESS", "PROXY_ADDRESS", "CONFIG_DIR", "DATA_DIR", "PGPASS", "BIN_DIR",
)
_PG_BINARIES = ("PG_CTL", "INITDB", "PG_CONTROLDATA", "PG_BASEBACKUP", "POSTGRES", "PG_ISREADY", "PG_REWIND")
# Values that hold YAML structures (lists, mappings) rather than plain strings.
_STRUCTURED = frozenset({"LOG_FORMAT", "LOG_STATIC_FIELDS", "LOG_LOGGERS", "RESTAPI_ALLOWLIST"})
# The variables of the environment file that Patroni-derived HA tools ship with their unit
# (VIP=..., VIPNETMASKBIT=...): read without a prefix, below the HASUP_VIP_* spellings.
SEED_VIP_VARIABLES = {
    "VIP": ("vip", "address"),
    "VIPNETMASKBIT": ("vip", "prefix"),
    "VIPNETMASK": ("vip", "netmask"),
    "VIPBRD": ("vip", "broadcast"),
    "VIPDEV": ("vip", "interface"),
    "VIPLABEL": ("vip", "label"),
}
_STRUCTURED |= {"RESTAPI_HTTP_EXTRA_HEADERS", "RESTAPI_HTTPS_EXTRA_HEADERS"}


def _env_table() -> dict[str, tuple[str, ...]]:
    """Variable name (without prefix) -> key path. Legacy names come first so newer ones win."""
    table: dict[str, tuple[str, ...]] = {
        "LOGLEVEL": ("log", "level"),
        "LOGFORMAT": ("log", "format"),
        "LOG_DATEFMT": ("log", "dateformat"),
        "NAME": ("name",),
        "SCOPE": ("scope",),
        "NAMESPACE": ("namespace",),
        "THREAD_POOL_SIZE": ("thread_pool_size",),
        "THREAD_STACK_SIZE": ("thread_stack_size",),
        "RESTAPI_USERNAME": ("restapi", "authentication", "username"),
        "RESTAPI_PASSWORD": ("restapi", "authentication", "password"),
        "CTL_USERNAME": ("ctl", "authentication", "username"),
        "CTL_PASSWORD": ("ctl", "authentication", "password"),
    }
    table.update({f"LOG_{s}": ("log", s.lower()) for s in _LOG_SUFFIXES})
    table.update({f"RESTAPI_{s}": ("restapi", s.lower()) for s in _RESTAPI_SUFFIXES})
    table.update({f"CTL_{s}": ("ctl", s.lower()) for s in _CTL_SUFFIXES})
    table.update({f"VIP_{s.upper()}": ("vip", s) for s in VIP_USED})
    table.update({f"POSTGRESQL_{s}": ("postgresql", s.lower()) for s in _POSTGRESQL_SUFFIXES})
    table.update({f"POSTGRESQL_BIN_{b}": ("postgresql", "bin_name", b.lower()) for b in _PG_BINARIES})
    for role in ("SUPERUSER", "REPLICATION", "REWIND"):
        key = ("postgresql", "authentication", role.lower())
        table.update({f"{role}_{s}": (*key, s.lower()) for s in _CREDENTIAL_SUFFIXES})
    return table


ENV_TABLE = _env_table()


def _dcs_key(name: str) -> tuple[str, ...] | None:
    """`ETCD_HOSTS` -> ("etcd", "hosts"), `ETCD3_CACERT` -> ("etcd3", "cacert"): every DCS section can be
    built from the environment (a refused one too, so the refusal names it)."""
    for dcs in (*DCS_SECTIONS, *OTHER_DCS):
        head = dcs.upper() + "_"
        if name.startswith(head) and len(name) > len(head):
            return (dcs, name[len(head) :].lower())
    return None


def _env_value(name: str, value: str) -> Any:
    if name in _STRUCTURED or name.endswith("_HOSTS"):
        # A YAML list or mapping is taken as such; anything else stays the string it was.
        try:
            parsed = load_yaml(value)
        except (yaml.YAMLError, RecursionError):
            return value
        return parsed if isinstance(parsed, list | dict) else value
    return value


def env_key(name: str) -> tuple[str, ...] | None:
    """The key path a variable name (without prefix) sets, or None if hasup does not read it."""
    return ENV_TABLE.get(name) or _dcs_key(name)


def env_names(env: Mapping[str, str]) -> list[str]:
    """Every variable in `env` that hasup reads as configuration (both prefixes)."""
    found = []
    for full in env:
        if full in SEED_VIP_VARIABLES:
            found.append(full)
            continue
        for prefix in ENV_PREFIXES:
            if full.startswith(prefix):
                name = full[len(prefix) :]
                if name == CONFIGURATION_VARIABLE or env_key(name):
                    found.append(full)
    return found


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """The configuration the variables in `env` describe, as a nested dict (HASUP_ over PATRONI_)."""
    result: dict[str, Any] = {}
    for name, (section, key) in SEED_VIP_VARIABLES.items():
        if env.get(name):
            result.setdefault(section, {})[key] = env[name]
    for prefix in ENV_PREFIXES:
        for name in _ordered(env, prefix):
            value = env[prefix + name]
            path = env_key(name)
            if path is None or value == "":
                continue
            node = result
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = _env_value(name, value)
    return result


def _ordered(env: Mapping[str, str], prefix: str) -> Iterable[str]:
    # Table order, so a legacy name never overrides its newer spelling; DCS names after.
    names = {full[len(prefix) :] for full in env if full.startswith(prefix)}
    yield from (name for name in ENV_TABLE if name in names)
    yield from sorted(name for name in names if name not in ENV_TABLE)


def env_configuration(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable name, YAML text) of a whole configuration given in HASUP_ or PATRONI_CONFIGURATION."""
    for prefix in reversed(ENV_PREFIXES):
        text = env.get(prefix + CONFIGURATION_VARIABLE)
        if text:
            return prefix + CONFIGURATION_VARIABLE, text
    return None


# Variables taken out of the process environment by `take_environment`; reloads read them here.
_taken_environment: dict[str, str] | None = None


def take_environment(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Remove hasup's configuration variables from `environ` and remember them.

    PostgreSQL, its tools and hook scripts inherit the daemon's environment, and passwords given
    as variables must not reach them. Later `load_config(path)` calls (reloads) use the saved copy.
    """
    global _taken_environment
    taken = {name: environ.pop(name) for name in env_names(environ)}
    _taken_environment = {**(_taken_environment or {}), **taken}
    return dict(_taken_environment)


def effective_environment(env: Mapping[str, str] | None) -> Mapping[str, str]:
    if env is not None:
        return env
    return _taken_environment if _taken_environment is not None else os.environ
