"""One emulated watchdog device per node (python -m hasup.watchdog.emulator), for tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

from tests.harness import Node, TestCluster, kill_pids, wait_for


class Emulators:
    def __init__(self, tc: TestCluster, safety_margin: int) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for node in tc.nodes:
            sock = os.path.join(node.dir, "watchdog.sock")
            record = os.path.join(node.dir, "watchdog.jsonl")
            os.makedirs(node.dir, exist_ok=True)
            self.procs[node.name] = subprocess.Popen(
                [sys.executable, "-m", "hasup.watchdog.emulator", "--socket", sock, "--record", record],
                stdin=subprocess.DEVNULL)
            node.extra.update({"watchdog.mode": "automatic", "watchdog.driver": "testing",
                               "watchdog.device": sock, "watchdog.safety_margin": safety_margin})
            wait_for(lambda sock=sock: os.path.exists(sock), 10, "the emulator's socket")

    @staticmethod
    def events(node: Node) -> list[dict[str, Any]]:
        try:
            with open(os.path.join(node.dir, "watchdog.jsonl")) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                kill_pids([p.pid])
                p.wait()

    def mute(self, node: Node, muted: bool = True) -> None:
        """Take the device away from the node (its timer then kills nothing), or give it back."""
        self.procs[node.name].send_signal(signal.SIGUSR1 if muted else signal.SIGUSR2)
        wait_for(lambda: [e["event"] for e in self.events(node) if e["event"] in ("muted", "unmuted")][-1:]
                 == ["muted" if muted else "unmuted"], 10, "the emulator to take the signal")

    def fired(self, node: Node) -> dict[str, Any] | None:
        return next((e for e in self.events(node) if e["event"] == "fired"), None)
