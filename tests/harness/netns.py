"""Test hosts in network namespaces: a bridge in a namespace of its own, one namespace per host.

Nothing touches the host's own interfaces or routes: every link lives in
namespaces this module creates (named with a per-run tag, and deleted by
those names).  The test process reaches a host by running a call on a
helper thread that has entered the host's namespace (setns applies to one
thread), so urllib and psycopg2 work unchanged.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SUBNET = "198.18.0"  # RFC 2544's benchmarking range: never a real network's address
PREFIX = 24


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def nft(ns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, capture_output=True, text=True,
                   check=True, timeout=20)


def nft_available() -> bool:
    return shutil.which("nft") is not None


def netns_available() -> bool:
    if os.geteuid() != 0:
        return False
    name = f"hasup-probe-{os.getpid()}"
    try:
        ok = ip("netns", "add", name, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    ip("netns", "del", name, check=False)
    return ok


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run fn on a thread inside network namespace ns; sockets it opens stay in that namespace."""
    result: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    t = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]  # type: ignore[no-any-return]


@dataclass
class Host:
    ns: str
    address: str  # on its eth0, in SUBNET
    mac: str = ""


@dataclass
class Network:
    """A bridge namespace plus named hosts, each with eth0 on the bridge."""

    tag: str
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def bridge_ns(self) -> str:
        return f"hasup-{self.tag}-br"

    def namespaces(self) -> list[str]:
        return [self.bridge_ns] + [h.ns for h in self.hosts.values()]

    def create(self, names: list[str]) -> None:
        try:
            ip("netns", "add", self.bridge_ns)
            ip("-n", self.bridge_ns, "link", "set", "lo", "up")
            ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            for i, name in enumerate(names):
                host = Host(f"hasup-{self.tag}-{name}", f"{SUBNET}.{10 + i}")
                self.hosts[name] = host
                ip("netns", "add", host.ns)
                ip("-n", host.ns, "link", "set", "lo", "up")
                port = f"p{i}"
                # Both ends are created in the bridge namespace, then one moves into the host's.
                ip("-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0")
                ip("-n", self.bridge_ns, "link", "set", "eth0", "netns", host.ns)
                ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
                ip("-n", host.ns, "addr", "add", f"{host.address}/{PREFIX}", "dev", "eth0")
                ip("-n", host.ns, "link", "set", "eth0", "up")
                host.mac = ip("-n", host.ns, "-br", "link", "show", "eth0").stdout.split()[2]
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        for ns in self.namespaces():
            with contextlib.suppress(Exception):
                ip("netns", "del", ns, check=False)

    def cut(self, name: str, peers: list[str]) -> None:
        """Silently drop every packet between host `name` and each of `peers`, both ways (nftables).

        Dropped, not refused: established connections hang until their own
        timeouts, as across a real partition.  Only `name`'s namespace gets the
        rules, so `heal` has one place to undo.
        """
        addresses = ", ".join(self.hosts[p].address for p in peers)
        nft(self.hosts[name].ns, f"""
table inet hasup_chaos {{
  set cut {{ type ipv4_addr; }}
  chain input {{ type filter hook input priority 0; ip saddr @cut drop; }}
  chain output {{ type filter hook output priority 0; ip daddr @cut drop; }}
}}
add element inet hasup_chaos cut {{ {addresses} }}
""")

    def heal(self, name: str) -> None:
        """Undo every `cut` of host `name`."""
        nft(self.hosts[name].ns, "table inet hasup_chaos {}\ndelete table inet hasup_chaos\n")

    def addresses(self, name: str) -> set[str]:
        """The IPv4 addresses on a host's eth0 now."""
        out = ip("-n", self.hosts[name].ns, "-4", "-o", "addr", "show", "dev", "eth0", check=False).stdout
        return {line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3}
