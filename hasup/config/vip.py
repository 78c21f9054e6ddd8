"""The vip section: the virtual IP that follows the leader (hasup's own; Patroni has none)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from hasup.config.model import VipConfig
from hasup.config.schema import VIP_USED, Reader
from hasup.config.values import Invalid, int_between, shown, to_str


def read_vip(r: Reader, top: Mapping[str, Any]) -> VipConfig | None:
    """The vip section; None when it is absent or has no address (no virtual IP)."""
    sec = r.section(top, "vip")
    r.ignore_rest(sec, "vip", VIP_USED)
    raw_address = r.get(sec, "vip.address", to_str, "").strip()
    if not raw_address:
        return None
    try:
        iface = ipaddress.ip_interface(raw_address)
    except ValueError:
        r.problem("vip.address", f"expected an IP address, optionally with /prefix, got {shown(raw_address)}")
        return None
    full: int = iface.network.max_prefixlen
    prefix = iface.network.prefixlen if "/" in raw_address else None
    if sec.get("prefix") not in (None, ""):
        prefix = r.get(sec, "vip.prefix", int_between(1, 128), full)
    elif sec.get("netmask") not in (None, ""):
        try:
            prefix = ipaddress.ip_network(f"0.0.0.0/{to_str(sec['netmask']).strip()}").prefixlen
        except (ValueError, Invalid):
            r.problem("vip.netmask", f"expected a dotted netmask, got {shown(sec['netmask'])}")
    if prefix is None:
        prefix = full
    if prefix > full:
        r.problem("vip.prefix", f"must be at most {full} for {iface.ip}")
    interface = r.get(sec, "vip.interface", to_str, "").strip()
    if not interface:
        r.problem("vip.interface", "required with vip.address (the device the address goes on)")
    label = r.get(sec, "vip.label", to_str, "").strip() or None
    if label is not None:
        if ":" not in label:
            label = f"{interface}:{label}"  # VIPLABEL=1 means eth0:1, as `ip ... label ${VIPDEV}:${VIPLABEL}`
        if not label.startswith(f"{interface}:"):
            r.problem("vip.label", f"must start with the interface name and a colon ({interface}:...)")
        if len(label) > 15:
            r.problem("vip.label", "at most 15 characters (the kernel's interface name limit)")
        if iface.version == 6:
            r.warn("vip.label", "labels exist for IPv4 addresses only, ignored")
            label = None
    broadcast = r.get(sec, "vip.broadcast", to_str, "").strip() or None
    if broadcast is not None:
        try:
            ipaddress.IPv4Address(broadcast)
        except ValueError:
            r.problem("vip.broadcast", f"expected an IPv4 address, got {shown(broadcast)}")
    if not interface:
        return None
    return VipConfig(str(iface.ip), prefix, interface, label, broadcast)
