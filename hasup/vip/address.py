"""The virtual IP: putting it on an interface, taking it off, announcing it.

Addresses are changed with iproute2's `ip` (CAP_NET_ADMIN), and the move is
announced with gratuitous ARP sent on a raw AF_PACKET socket (CAP_NET_RAW),
so neither sudo nor arping is needed: the unit grants both capabilities.

`wanted` is the rule the vip worker applies, kept pure for tests.  The
module is also the `hasup-vip` command that systemd runs as ExecStopPost:
after a crash nobody else would take the address off.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence

from hasup.config import ConfigError, VipConfig, load_vip
from hasup.ipc import ClusterView, PgState

IP_TIMEOUT = 5.0  # seconds for one `ip` call; netlink answers in milliseconds
LEASE_MARGIN = 1.0  # drop the address this long before our leader key could expire
ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
BROADCAST_MAC = b"\xff" * 6
# PostgreSQL states in which a primary that holds the lock keeps the address.
SERVING_STATES = frozenset({"running", "starting", "restarting"})
# Actions after which it no longer serves: drop the address when they start, not when they end.
LEAVING_ACTIONS = frozenset({"demote", "stop", "fence"})


class VipError(Exception):
    """An address change failed."""


def wanted(view: ClusterView | None, pg: PgState | None, now: float) -> bool:
    """Whether this node should carry the virtual IP at monotonic time `now`.

    Only while it holds the leader lock with time to spare (the lock's validity is a
    lease: the next leader cannot get the key before it runs out) and its PostgreSQL
    is a primary that is not being demoted or stopped.
    """
    if view is None or pg is None or not view.holds_lock:
        return False
    if now >= view.lock_valid_until - LEASE_MARGIN:
        return False
    return pg.role == "primary" and pg.state in SERVING_STATES and pg.busy not in LEAVING_ACTIONS


# -- addresses --------------------------------------------------------------------------


def ip_command() -> str:
    found = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip")
                                        if os.access(p, os.X_OK)), None)
    if found is None:
        raise VipError("the `ip` command (iproute2) is not installed")
    return found


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([ip_command(), *args], capture_output=True, text=True, timeout=IP_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise VipError(f"`ip {' '.join(args)}` did not finish in {IP_TIMEOUT:.0f}s") from exc


def present(cfg: VipConfig) -> bool:
    """Whether the address is on the interface now."""
    result = _ip("-j", "addr", "show", "dev", cfg.interface)
    if result.returncode != 0:
        raise VipError(f"cannot list the addresses of {cfg.interface}: {result.stderr.strip()}")
    try:
        links = json.loads(result.stdout or "[]")
    except ValueError as exc:
        raise VipError(f"unreadable `ip -j addr` output: {exc}") from exc
    target = ipaddress.ip_address(cfg.address)
    for link in links:
        for info in link.get("addr_info", []):
            try:
                if ipaddress.ip_address(info.get("local", "")) == target:
                    return True
            except ValueError:
                continue
    return False


def add(cfg: VipConfig) -> bool:
    """Put the address on; True if it was added now, False if it was there already."""
    if present(cfg):
        return False
    args = ["addr", "add", cfg.cidr, "dev", cfg.interface]
    if cfg.version == 4:
        args += ["brd", cfg.broadcast or "+"]
        if cfg.label:
            args += ["label", cfg.label]
    result = _ip(*args)
    if result.returncode != 0:
        if "File exists" in result.stderr:
            return False
        raise VipError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return True


def remove(cfg: VipConfig) -> bool:
    """Take the address off; True if it was removed now, False if it was not there."""
    if not present(cfg):
        return False
    result = _ip("addr", "del", cfg.cidr, "dev", cfg.interface)
    if result.returncode != 0:
        if "Cannot assign requested address" in result.stderr:
            return False
        raise VipError(f"`ip addr del {cfg.cidr} dev {cfg.interface}` failed: {result.stderr.strip()}")
    return True


# -- gratuitous ARP --------------------------------------------------------------------------


def garp_frame(mac: bytes, address: str) -> bytes:
    """A gratuitous ARP request: who-has ADDRESS tell ADDRESS, from MAC, to everyone.

    Sender and target protocol address are both the virtual IP, so neighbours that
    cached the previous owner's MAC for it take ours instead.
    """
    ip = ipaddress.IPv4Address(address).packed
    ethernet = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip
    return ethernet + arp


def announce(cfg: VipConfig) -> bool:
    """Send one gratuitous ARP for an IPv4 address; False for IPv6 (the kernel's DAD and
    unsolicited neighbour advertisements cover it)."""
    if cfg.version != 4:
        return False
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
            sock.bind((cfg.interface, ETH_P_ARP))
            mac = sock.getsockname()[4]
            if len(mac) != 6:
                raise VipError(f"{cfg.interface} has no Ethernet address")
            sock.send(garp_frame(mac, cfg.address), socket.MSG_DONTWAIT)
    except OSError as exc:
        raise VipError(f"cannot send gratuitous ARP on {cfg.interface}: {exc}") from exc
    return True


# -- hasup-vip: the ExecStopPost helper ----------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hasup-vip",
        description="Remove (down) or show (status) this node's virtual IP, as the vip section of the "
                    "hasup configuration and the VIP*/HASUP_VIP_* variables describe it. "
                    "systemd runs `hasup-vip down` as ExecStopPost, so a crashed node lets go of it.")
    parser.add_argument("action", choices=("down", "status"))
    parser.add_argument("config", nargs="?", default=os.environ.get("CONFIG_FILE", ""),
                        help="hasup configuration file or directory (default: $CONFIG_FILE)")
    args = parser.parse_args(argv)
    try:
        cfg = load_vip(args.config, dict(os.environ))
    except ConfigError as exc:
        for line in exc.problems:
            print(f"hasup-vip: {line}", file=sys.stderr)
        return 2
    if cfg is None:
        print("hasup-vip: no virtual IP configured", file=sys.stderr)
        return 0
    try:
        if args.action == "status":
            on = present(cfg)
            print(f"{cfg.cidr} on {cfg.interface}: {'present' if on else 'absent'}")
            return 0 if on else 3
        removed = remove(cfg)
    except VipError as exc:
        print(f"hasup-vip: {exc}", file=sys.stderr)
        return 1
    print(f"hasup-vip: {cfg.cidr} {'removed from' if removed else 'was not on'} {cfg.interface}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
