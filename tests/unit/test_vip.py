import struct

import pytest

from hasup import ipc
from hasup.config import ConfigError, VipConfig, load_config_text, load_vip
from hasup.vip import address as vip

BASE = """
scope: main
name: n1
restapi: {listen: 127.0.0.1:8008, connect_address: 10.0.0.1:8008}
etcd: {host: 127.0.0.1:2379}
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 10.0.0.1:5432
  data_dir: /tmp/d
  authentication: {superuser: {username: postgres}, replication: {username: replicator}}
"""


def view(holds: bool = True, valid_until: float = 100.0) -> ipc.ClusterView:
    return ipc.ClusterView(1.0, 1.0, "n1" if holds else "n2", holds, valid_until, {}, {}, (), None, None, None,
                           None, False)


def pg(role: str = "primary", state: str = "running", busy: str = "") -> ipc.PgState:
    return ipc.PgState(state, role, False, True, 1.0, busy=busy)


@pytest.mark.parametrize(("v", "p", "now", "expected"), [
    (view(), pg(), 10.0, True),
    (None, pg(), 10.0, False),
    (view(), None, 10.0, False),
    (view(holds=False), pg(), 10.0, False),
    (view(valid_until=10.5), pg(), 10.0, False),  # the lease runs out within LEASE_MARGIN
    (view(), pg(role="replica"), 10.0, False),  # lock taken, not promoted yet
    (view(), pg(busy="demote"), 10.0, False),  # a switchover begins: go before the lock does
    (view(), pg(state="stopping", busy="stop"), 10.0, False),
    (view(), pg(state="stopped"), 10.0, False),
    (view(), pg(state="crashed"), 10.0, False),
    (view(), pg(state="restarting", busy="restart"), 10.0, True),
    (view(), pg(state="starting"), 10.0, True),
])
def test_wanted(v, p, now, expected):
    assert vip.wanted(v, p, now) is expected


def test_gratuitous_arp_frame():
    mac = bytes.fromhex("020000000001")
    frame = vip.garp_frame(mac, "198.18.0.100")
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac and frame[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, oper = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, oper) == (1, 0x0800, 6, 4, 1)
    assert frame[22:28] == mac and frame[28:32] == bytes([198, 18, 0, 100])
    assert frame[32:38] == b"\0" * 6 and frame[38:42] == bytes([198, 18, 0, 100])


def vip_of(text: str, env: dict[str, str] | None = None) -> VipConfig | None:
    cfg, _ = load_config_text(BASE + text, env)
    return cfg.vip


def test_no_section_no_vip():
    assert vip_of("") is None
    assert vip_of("vip: {interface: eth0}") is None


@pytest.mark.parametrize(("text", "expected"), [
    ("vip: {address: 10.1.2.3/22, interface: eth0, label: eth0:1}", VipConfig("10.1.2.3", 22, "eth0", "eth0:1")),
    ("vip: {address: 10.1.2.3, prefix: 24, interface: eth0, label: 7}", VipConfig("10.1.2.3", 24, "eth0", "eth0:7")),
    ("vip: {address: 10.1.2.3, netmask: 255.255.252.0, interface: ens3}", VipConfig("10.1.2.3", 22, "ens3")),
    ("vip: {address: 10.1.2.3, interface: ens3}", VipConfig("10.1.2.3", 32, "ens3")),
    ("vip: {address: 'fd00::5/64', interface: ens3}", VipConfig("fd00::5", 64, "ens3")),
])
def test_vip_section(text, expected):
    assert vip_of(text) == expected


def test_environment_file_variables_as_in_the_seed_unit():
    env = {"VIP": "172.16.101.124", "VIPNETMASKBIT": "22", "VIPDEV": "enp1s0", "VIPLABEL": "1",
           "VIPBRD": "172.16.103.255"}
    got = vip_of("", env)
    assert got == VipConfig("172.16.101.124", 22, "enp1s0", "enp1s0:1", "172.16.103.255")
    assert got is not None and got.cidr == "172.16.101.124/22"
    # The HASUP_VIP_* spelling wins over the unprefixed one.
    assert vip_of("", {**env, "HASUP_VIP_INTERFACE": "eth9"}) == VipConfig(
        "172.16.101.124", 22, "eth9", "eth9:1", "172.16.103.255")


@pytest.mark.parametrize(("text", "problem"), [
    ("vip: {address: not-an-ip, interface: eth0}", "vip.address"),
    ("vip: {address: 10.1.2.3/22}", "vip.interface"),
    ("vip: {address: 10.1.2.3, prefix: 33, interface: eth0}", "vip.prefix"),
    ("vip: {address: 10.1.2.3, interface: eth0, label: 'eth1:1'}", "vip.label"),
    ("vip: {address: 10.1.2.3, interface: eth0, label: 'eth0:abcdefghijkl'}", "vip.label"),
])
def test_vip_problems(text, problem):
    with pytest.raises(ConfigError) as exc:
        vip_of(text)
    assert any(line.startswith(problem) for line in exc.value.problems)


def test_the_stop_helper_reads_only_the_vip_section(tmp_path):
    path = tmp_path / "hasup.yml"
    path.write_text("vip: {address: 10.1.2.3/24, interface: eth0}\npostgresql: {listen: nonsense}\n")
    assert load_vip(str(path), {}) == VipConfig("10.1.2.3", 24, "eth0")
    assert load_vip(str(tmp_path / "missing.yml"), {"VIP": "10.1.2.4", "VIPDEV": "eth1"}) == \
        VipConfig("10.1.2.4", 32, "eth1")


def test_helper_without_a_vip_does_nothing(tmp_path, capsys):
    path = tmp_path / "hasup.yml"
    path.write_text("scope: x\n")
    assert vip.main(["down", str(path)]) == 0
    assert "no virtual IP configured" in capsys.readouterr().err
