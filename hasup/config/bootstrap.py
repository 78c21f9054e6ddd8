"""The bootstrap section: how a new cluster is created (initdb, users, the first dynamic configuration)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hasup.config.dynamic import check_dcs
from hasup.config.methods import read_bootstrap_method
from hasup.config.model import BootstrapConfig, UserSpec
from hasup.config.postgresql import read_options
from hasup.config.schema import BOOTSTRAP_USED, INITDB_FORBIDDEN, Reader
from hasup.config.values import shown, to_mapping, to_str, to_str_list

_NO_STRINGS: tuple[str, ...] = ()


def _users(r: Reader, users: Mapping[str, Any]) -> dict[str, UserSpec]:
    result = {}
    for name, spec in users.items():
        path = f"bootstrap.users.{name}"
        fields = r.convert(path, spec, to_mapping)
        if fields is None:
            continue
        password = r.get(fields, f"{path}.password", to_str, None)
        options = r.get(fields, f"{path}.options", to_str_list, _NO_STRINGS)
        r.ignore_rest(fields, path, ("password", "options"))
        result[str(name)] = UserSpec(password, options)
    return result


def read_bootstrap(r: Reader, top: Mapping[str, Any]) -> BootstrapConfig:
    """The bootstrap section, its dcs checked strictly (and kept as given: it seeds etcd's config key)."""
    sec = r.section(top, "bootstrap")
    dcs = r.section(sec, "bootstrap.dcs")
    check_dcs(r, dcs, "bootstrap.dcs")
    name = r.get(sec, "bootstrap.method", to_str, "initdb")
    method = None
    if name in BOOTSTRAP_USED:
        if name != "initdb":
            r.problem("bootstrap.method", f"{shown(name)} is a key of the bootstrap section, not a method name")
    else:
        method = read_bootstrap_method(r, sec, name)
    initdb = read_options(r, sec, "bootstrap.initdb", INITDB_FORBIDDEN)
    pg_hba = r.get(sec, "bootstrap.pg_hba", to_str_list, _NO_STRINGS)
    users = _users(r, r.section(sec, "bootstrap.users"))
    post_bootstrap = r.get(sec, "bootstrap.post_bootstrap", to_str, None)
    if post_bootstrap is None:
        post_bootstrap = r.get(sec, "bootstrap.post_init", to_str, None)
    elif sec.get("post_init") is not None:
        r.warn("bootstrap.post_init", "ignored because bootstrap.post_bootstrap is set")
    r.ignore_rest(sec, "bootstrap", (*BOOTSTRAP_USED, name))
    return BootstrapConfig(dict(dcs), initdb, pg_hba, users, post_bootstrap, method)
