"""The configuration against this machine: what `hasup --validate-config` checks beyond the file.

As Patroni's validator does: PostgreSQL's programs in bin_dir, a data directory PostgreSQL could use
(or create), the listen addresses free, plus what only hasup can tell: a watchdog the cluster's
timing could never arm, and a PostgreSQL older than hasup runs.  Each finding is one line naming
its key; problems make the file unusable here, warnings are things to look at.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
from dataclasses import dataclass, field

from hasup.config import Config, parse_dynamic
from hasup.postgresql.version import binary_major, data_dir_major, too_old
from hasup.timing import Deadlines, device_timeout, settings_problem

# What hasup runs (hasup.postgresql.lifecycle); pg_rewind only with use_pg_rewind.
REQUIRED_BINARIES = ("postgres", "pg_ctl", "initdb", "pg_controldata", "pg_basebackup")
CONNECT_TIMEOUT = 1.0  # seconds: a listener on this host answers at once
# PostgreSQL refuses a data directory group-writable or open to others (0700, or 0750 with group access).
BAD_DATA_DIR_BITS = 0o027


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_host(config: Config, ignore_listen_port: bool = False, euid: int | None = None) -> Findings:
    found = Findings()
    uid = os.geteuid() if euid is None else euid
    major = _binaries(config, found)
    _data_dir(config, found, major, uid)
    if not ignore_listen_port:
        _listen(config.restapi.listen, "restapi.listen", found)
        _listen(config.postgresql.listen, "postgresql.listen", found)
    _watchdog(config, found)
    return found


def start_problem(config: Config) -> str | None:
    """At start: the one check that must stop it, a PostgreSQL older than hasup runs (binaries or data)."""
    major = binary_major(config.postgresql.bin_dir)
    problem = too_old(major, f"postgresql.bin_dir: {_where(config.postgresql.bin_dir)}/postgres") \
        if major is not None else None
    if problem is None:
        on_disk = data_dir_major(config.postgresql.data_dir)
        if on_disk is not None:
            problem = too_old(on_disk, f"postgresql.data_dir: {config.postgresql.data_dir} (PG_VERSION)")
    return problem


def _where(bin_dir: str) -> str:
    return bin_dir or "$PATH"


def _binaries(config: Config, found: Findings) -> int | None:
    bin_dir = config.postgresql.bin_dir
    if bin_dir and not os.path.isdir(bin_dir):
        found.problems.append(f"postgresql.bin_dir: {bin_dir} is not a directory")
        return None
    for name in REQUIRED_BINARIES:
        if not shutil.which(name, path=bin_dir or None):
            found.problems.append(f"postgresql.bin_dir: no executable {name} in {_where(bin_dir)}")
    rewind = parse_dynamic(config.bootstrap.dcs)[0].use_pg_rewind
    if rewind and not shutil.which("pg_rewind", path=bin_dir or None):
        found.warnings.append(f"postgresql.bin_dir: no executable pg_rewind in {_where(bin_dir)}, "
                              "but bootstrap.dcs turns use_pg_rewind on")
    major = binary_major(bin_dir)
    if major is not None and (old := too_old(major, f"postgresql.bin_dir: {_where(bin_dir)}/postgres")):
        found.problems.append(old)
    return major


def _data_dir(config: Config, found: Findings, major: int | None, uid: int) -> None:
    path = config.postgresql.data_dir
    key = "postgresql.data_dir"
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        _creatable(path, found, uid)
        return
    except OSError as exc:
        found.problems.append(f"{key}: {path} cannot be examined ({exc.strerror or type(exc).__name__})")
        return
    if not stat.S_ISDIR(st.st_mode):
        found.problems.append(f"{key}: {path} is not a directory")
        return
    try:
        empty = not os.listdir(path)
    except OSError as exc:
        found.problems.append(f"{key}: {path} cannot be listed ({exc.strerror or type(exc).__name__})")
        return
    if uid != 0 and st.st_uid != uid:
        found.problems.append(f"{key}: {path} is owned by uid {st.st_uid}, not by uid {uid} that runs hasup")
    mode = stat.S_IMODE(st.st_mode)
    if mode & BAD_DATA_DIR_BITS:
        line = f"{key}: {path} has mode {mode:04o}; PostgreSQL needs 0700 or 0750"
        # initdb and a base backup set the mode of the directory they fill; a cluster in it will not start.
        (found.warnings if empty else found.problems).append(line + (" (set when it is filled)" if empty else ""))
    if empty:
        return
    on_disk = data_dir_major(path)
    if on_disk is None:
        found.problems.append(f"{key}: {path} is not empty and has no PG_VERSION: not a PostgreSQL data directory")
        return
    if not os.path.isdir(os.path.join(path, "pg_wal")):
        found.problems.append(f"{key}: {path} has no pg_wal directory")
    if (old := too_old(on_disk, f"{key}: {path} (PG_VERSION)")) is not None:
        found.problems.append(old)
    elif major is not None and major != on_disk:
        found.problems.append(f"{key}: {path} holds PostgreSQL {on_disk} data, but {_where(config.postgresql.bin_dir)}"
                              f"/postgres is PostgreSQL {major}")


def _creatable(path: str, found: Findings, uid: int) -> None:
    """A data directory that does not exist yet is made by hasup (with its parents) before initdb or a
    base backup: the nearest existing parent must let us."""
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        found.problems.append(f"postgresql.data_dir: {path} cannot be created: {parent} is not a directory")
    elif uid != 0 and not os.access(parent, os.W_OK | os.X_OK):
        found.problems.append(f"postgresql.data_dir: {path} cannot be created: {parent} is not writable by uid {uid}")


def _listen(value: str, key: str, found: Findings) -> None:
    """Something already accepting connections at a listen address (Patroni's test: a connect that works)."""
    hosts_part, _, port_text = value.rpartition(":")
    try:
        port = int(port_text)  # the file's checks already made it host[,host]:port
    except ValueError:
        found.problems.append(f"{key}: {value!r} is not host:port")
        return
    for host in hosts_part.strip("[]").split(","):
        host = host.strip()
        target = {"": "127.0.0.1", "*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        try:
            infos = socket.getaddrinfo(target, port, 0, socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            found.problems.append(f"{key}: {host} cannot be resolved ({exc})")
            continue
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as s:
            s.settimeout(CONNECT_TIMEOUT)
            if s.connect_ex(address) == 0:
                found.problems.append(f"{key}: port {port} is already in use on {host or '*'}")


def _watchdog(config: Config, found: Findings) -> None:
    """The cluster's timing as bootstrap.dcs sets it, against the device's rules (hasup.timing)."""
    mode = config.watchdog.mode
    if mode == "off":
        return
    dynamic = parse_dynamic(config.bootstrap.dcs)[0]
    d = Deadlines.of(dynamic.ttl, dynamic.loop_wait, dynamic.retry_timeout, config.watchdog.safety_margin)
    why = settings_problem(d.ttl, d.loop_wait, d.retry_timeout, d.safety_margin)
    if why is None and device_timeout(d.ttl, d.loop_wait, d.safety_margin) is None:
        why = "no device timeout of at least 1 s fits ttl - safety_margin - loop_wait"
    if why is None:
        return
    if mode == "required":
        found.problems.append(f"watchdog.mode: required, but bootstrap.dcs's timings can never arm the device, so "
                              f"no node would ever lead: {why}")
    else:
        found.warnings.append(f"watchdog.mode: automatic, but bootstrap.dcs's timings can never arm the device, so "
                              f"leaders would run without it: {why}")
