"""The systemd unit and sd_notify (docs/operator-guide.md §3).

`systemd-analyze verify` checks systemd/hasup.service (its binaries pointed at
stubs); a real node started with a NOTIFY_SOCKET of the test's own reports
READY=1, STATUS= and STOPPING=1 in that order.  Nothing here needs systemd
as PID 1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hasup.config import VipConfig, load_vip
from tests.harness import TestCluster, wait_for

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "hasup.service"
ENV_FILE = ROOT / "systemd" / "hasup.env"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def env_file() -> dict[str, str]:
    values = {}
    for line in ENV_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key] = value
    return values


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("hasup", "hasup-vip"):
        (stubs / name).write_text("#!/bin/sh\nexit 0\n")
        (stubs / name).chmod(0o755)
    unit = tmp_path / "hasup.service"
    unit.write_text(UNIT.read_text().replace("/opt/hasup/bin/", f"{stubs}/"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    ours = [ln for ln in (result.stdout + result.stderr).splitlines() if "hasup" in ln]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr


def test_the_unit_runs_hasup_as_postgres_notified_with_the_vip_cleaned_up_and_no_restart_loop():
    s = unit_settings()
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["User"] == "postgres" and one["EnvironmentFile"] == "-/etc/sysconfig/hasup"
    assert one["ExecStart"].endswith("/hasup ${CONFIG_FILE}")
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["ExecStopPost"].startswith("-") and one["ExecStopPost"].endswith("/hasup-vip down ${CONFIG_FILE}")
    assert one["KillMode"] == "mixed" and one["RestartPreventExitStatus"] == "2"
    # Above hasup's own stop budget with the default pg_ctl_timeout (60 s + 40 s).
    assert int(one["TimeoutStopSec"]) > 100
    assert "LimitNOFILE" in one and one["LimitMEMLOCK"] == "infinity"
    assert set(one["AmbientCapabilities"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert one["NoNewPrivileges"] == "yes" and "PrivateDevices" not in one


def test_env_file_describes_the_vip(tmp_path):
    values = env_file()
    assert values["CONFIG_FILE"] == "/etc/hasup/hasup.yml"
    vip = load_vip(str(tmp_path / "none.yml"), values)
    assert vip == VipConfig("192.0.2.100", 24, "eth0", "eth0:1")


class NotifyListener:
    """A NOTIFY_SOCKET of our own: every datagram, in order, with its arrival time."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o777)  # the node runs as the unprivileged test user
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def first(self, key: str, value: str | None = None) -> int | None:
        for i, (_, fields) in enumerate(self.messages):
            if key in fields and (value is None or fields[key] == value):
                return i
        return None

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_a_real_node_notifies_ready_status_and_stopping():
    tc = TestCluster(1)
    listener = NotifyListener(os.path.join(tc.base, "notify.sock"))
    try:
        tc.etcd.start()
        node = tc.nodes[0]
        # WATCHDOG_USEC without WATCHDOG_PID: ours, as systemd sets it for the main process.
        node.env = {"NOTIFY_SOCKET": listener.sock.getsockname(), "WATCHDOG_USEC": "2000000"}
        node.start()
        wait_for(lambda: listener.first("READY", "1") is not None, 60, "READY=1")
        # READY=1 came once the API listens.
        assert node.api("/liveness")[0] == 200
        ready = listener.first("READY", "1")
        assert ready is not None and "STATUS" in listener.messages[ready][1]
        assert listener.messages[ready][1]["MAINPID"] == str(node.pid)
        tc.wait_leader(60)
        wait_for(lambda: any(f.get("STATUS") == "primary, running; holds the leader lock"
                             for _, f in listener.messages), 30, "STATUS with the role and state")
        # Neither the workers' children nor PostgreSQL inherit NOTIFY_SOCKET.
        pm = node.postmaster_pid()
        with open(f"/proc/{pm}/environ", "rb") as f:
            assert b"NOTIFY_SOCKET" not in f.read()
        wait_for(lambda: sum("WATCHDOG" in f for _, f in listener.messages) >= 3, 10, "WATCHDOG=1 pets")
        node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        node.proc.wait(60)  # type: ignore[union-attr]
        assert node.proc.returncode == 0  # type: ignore[union-attr]
    finally:
        listener.close()
        tc.destroy()
    kinds = [next(iter(f)) for _, f in listener.messages]
    stopping = listener.first("STOPPING", "1")
    status = next(i for i, (_, f) in enumerate(listener.messages) if i > ready and set(f) == {"STATUS"})
    assert ready < status < stopping, kinds
    assert listener.messages[stopping][1]["STATUS"] == "stopping"
    # Before READY=1 only start-time extensions (and watchdog pets); after STOPPING=1 no READY again.
    assert set(kinds[:ready]) <= {"EXTEND_TIMEOUT_USEC", "WATCHDOG"}, kinds
    assert "READY" not in kinds[stopping:]
    pets = [t for t, f in listener.messages if "WATCHDOG" in f]
    assert len(pets) >= 3 and max(b - a for a, b in zip(pets, pets[1:], strict=False)) < 2.0
