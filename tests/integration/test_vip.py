"""The virtual IP follows the leader, in network namespaces the test creates (docs/operator-guide.md §4).

Layout: a bridge in a namespace of its own; etcd and three nodes, each in its
own namespace with eth0 on that bridge.  The nodes run as the unprivileged
test user with only CAP_NET_ADMIN and CAP_NET_RAW, as the systemd unit grants
them, and get the VIP from the environment-file variables (VIP, VIPDEV, ...).
A sampler lists every node's addresses every 100 ms; a raw socket on the
bridge records every ARP frame.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.harness import TestCluster, hasup_bin, wait_for
from tests.harness.netns import SUBNET, Network, in_netns, netns_available

pytestmark = pytest.mark.skipif(not netns_available(), reason="needs root and `ip netns`")

VIP = f"{SUBNET}.100"
VIP_ENV = {"VIP": VIP, "VIPNETMASKBIT": "24", "VIPDEV": "eth0", "VIPLABEL": "1"}  # as in /etc/sysconfig/hasup
CAPS = ("CAP_NET_ADMIN", "CAP_NET_RAW")
SAMPLE_EVERY = 0.1
ETH_P_ARP = 0x0806


@dataclass
class Watch:
    """Who holds the VIP (sampled) and which gratuitous ARPs for it crossed the bridge."""

    net: Network
    names: list[str]
    samples: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)
    arps: list[tuple[float, str]] = field(default_factory=list)  # (wall time, sender MAC)
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            holders = tuple(n for n in self.names if VIP in self.net.addresses(n))
            self.samples.append((time.time(), holders))
            next_at += SAMPLE_EVERY
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def listen(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                frame = sock.recv(2048)
            except TimeoutError:
                continue
            if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
                continue
            sender_mac, sender_ip, target_ip = frame[22:28], frame[28:32], frame[38:42]
            if socket.inet_ntoa(sender_ip) == VIP and socket.inet_ntoa(target_ip) == VIP:
                self.arps.append((time.time(), sender_mac.hex(":")))

    def holders(self) -> tuple[str, ...]:
        return self.samples[-1][1] if self.samples else ()

    def overlaps(self) -> list[tuple[float, tuple[str, ...]]]:
        return [s for s in self.samples if len(s[1]) > 1]

    def first_holding(self, name: str, after: float) -> float | None:
        return next((t for t, h in self.samples if t >= after and name in h), None)


@pytest.fixture(scope="module")
def net():
    if subprocess.run(["which", "setpriv"], capture_output=True).returncode != 0:
        pytest.skip("setpriv (util-linux) is needed to run nodes with ambient capabilities")
    network = Network(f"v{os.getpid() % 100000}")
    network.create(["etcd", "node1", "node2", "node3"])
    try:
        yield network
    finally:
        network.destroy()


NODES = ["node1", "node2", "node3"]


@pytest.fixture(scope="module")
def tc(net, watch):
    # The watch runs before the nodes start: the first leader's gratuitous ARPs (0, 1 and 3 s after it
    # takes the address) can all go out before start_all returns on a busy machine.
    c = TestCluster(3, network=net)
    assert [n.name for n in c.nodes] == NODES
    for node in c.nodes:
        node.caps = CAPS
        node.env = dict(VIP_ENV)
    with c:  # starts etcd; destroys everything on the way out
        c.start_all()
        yield c


@pytest.fixture(scope="module")
def watch(net):
    w = Watch(net, NODES)
    sock = in_netns(net.bridge_ns, lambda: _arp_socket("br0"))
    threads = [threading.Thread(target=w.sample, daemon=True), threading.Thread(target=w.listen, args=(sock,),
                                                                                daemon=True)]
    for t in threads:
        t.start()
    try:
        yield w
    finally:
        w.stop.set()
        for t in threads:
            t.join(5)
        sock.close()


def _arp_socket(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.bind((ifname, ETH_P_ARP))
    return sock


def promoted_at(node) -> float:
    """Wall-clock time of the node's last promotion: its newest timeline history file was written then."""
    files = glob.glob(os.path.join(node.data_dir, "pg_wal", "*.history"))
    assert files, f"{node.name} has no timeline history"
    return max(os.path.getmtime(f) for f in files)


def vip_down(node, net) -> subprocess.CompletedProcess[str]:
    """ExecStopPost as systemd runs it: the unit's user, environment and capabilities, in its network."""
    helper = os.path.join(os.path.dirname(hasup_bin()), "hasup-vip")
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **VIP_ENV}
    return subprocess.run(node.command(helper, "down", node.config_path), env=env, capture_output=True, text=True,
                          timeout=30)


def test_vip_is_on_the_leader_alone_with_its_label(tc, net, watch):
    leader = tc.wait_leader(30)
    wait_for(lambda: watch.holders() == (leader.name,), 20, f"the VIP on {leader.name} alone")
    out = subprocess.run(["ip", "-n", net.hosts[leader.name].ns, "-o", "-4", "addr", "show", "dev", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if f"{VIP}/24" in ln)
    assert " eth0:1" in line, line  # the label, as `ip -o addr` prints it
    mac = net.hosts[leader.name].mac
    wait_for(lambda: any(m == mac for _, m in watch.arps), 10, "a gratuitous ARP from the leader")
    # Only the vip worker keeps the capabilities: PostgreSQL does not have them.
    pm = leader.postmaster_pid()
    with open(f"/proc/{pm}/status") as f:
        caps = {k: v.strip() for k, v in (ln.split(":", 1) for ln in f if ln.startswith("Cap"))}
    assert int(caps["CapAmb"], 16) == 0 and int(caps["CapEff"], 16) == 0, caps


def test_switchover_moves_the_vip_and_never_to_two_nodes(tc, net, watch):
    leader = tc.wait_leader(30)
    candidate = next(n for n in tc.nodes if n is not leader)
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 60)
    asked = time.time()
    tc.etcd.put(tc.key("failover"), json.dumps({"leader": leader.name, "member": candidate.name}))
    new = tc.wait_leader(30, exclude=leader.name)
    assert new.name == candidate.name
    wait_for(lambda: watch.holders() == (new.name,), 10, f"the VIP on {new.name} alone")
    promoted = promoted_at(new)
    took = (watch.first_holding(new.name, asked) or 0) - promoted
    assert took <= 2.0, f"VIP on the new leader {took:.2f}s after its promotion"
    mac = net.hosts[new.name].mac
    wait_for(lambda: any(m == mac and t >= promoted for t, m in watch.arps), 10, "a gratuitous ARP from the new leader")
    assert watch.overlaps() == [], "the VIP was on two nodes at once"
    print(f"switchover: VIP on {new.name} {took:.2f}s after promotion; {len(watch.samples)} samples, "
          f"{len(watch.arps)} gratuitous ARPs so far")


def test_leader_crash_moves_the_vip_and_exec_stop_post_removes_the_old_copy(tc, net, watch):
    leader = tc.wait_leader(30)
    tc.wait_streaming(leader, [n for n in tc.nodes if n is not leader], 60)
    wait_for(lambda: watch.holders() == (leader.name,), 10, f"the VIP on {leader.name}")
    crashed_at = time.time()
    leader.kill_tree()  # the whole node at once: nothing of hasup can take the address off
    assert VIP in net.addresses(leader.name), "the crashed node's copy should still be there"
    result = vip_down(leader, net)
    assert result.returncode == 0, result.stderr
    assert VIP not in net.addresses(leader.name)
    assert "removed from eth0" in result.stderr
    again = vip_down(leader, net)  # a second stop (or a replica's) finds nothing to do
    assert again.returncode == 0 and "was not on eth0" in again.stderr

    new = tc.wait_leader(60, exclude=leader.name)
    wait_for(lambda: watch.holders() == (new.name,), 10, f"the VIP on {new.name}")
    promoted = promoted_at(new)
    assert promoted > crashed_at
    took = (watch.first_holding(new.name, crashed_at) or 0) - promoted
    assert took <= 2.0, f"VIP on the new leader {took:.2f}s after its promotion"
    mac = net.hosts[new.name].mac
    wait_for(lambda: any(m == mac and t >= promoted for t, m in watch.arps), 10, "a gratuitous ARP from the new leader")
    assert watch.overlaps() == [], "the VIP was on two nodes at once"
    assert len(watch.samples) > 50
    print(f"crash: VIP on {new.name} {took:.2f}s after promotion; {len(watch.samples)} samples, "
          f"{len(watch.arps)} gratuitous ARPs")
