"""An emulated watchdog device for tests: a small server on a Unix socket that acts like the kernel's.

    python -m hasup.watchdog.emulator --socket PATH --record FILE [--default-timeout 60]

Like /dev/watchdog it arms when a client connects (open), takes
SETTIMEOUT (a pet), KEEPALIVE and the magic close ("V" then EOF).  A
client that goes away without "V" leaves it armed.  When the timer runs
out it resets the node the way a reboot would: SIGKILL to every process
of the client's hasup tree (the supervisor and all its descendants),
through hasup.proc.kill_and_confirm, the one way hasup kills a PostgreSQL.
Every event is appended to FILE as a JSON line with monotonic and
wall-clock times, so tests can compare the reset with the leader key's
expiry in etcd.

Wire protocol (one request per line, one answer line): OPEN, SETTIMEOUT n,
GETTIMEOUT, KEEPALIVE, V.  Answers: "OK n" (n = timeout in force) or "ERR text".

SIGUSR1 mutes it and SIGUSR2 restores it: muted, a timer that runs out is
recorded ("fired_muted") but kills nothing, so a test can take the device
away from a node without its watchdog worker knowing (the chaos suite's
fault with no device).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

from hasup.proc import kill_and_confirm, read_stat

SO_PEERCRED_FMT = struct.Struct("3i")
RESET_CONFIRM = 2.0  # how long a reset waits to see every process of the node gone


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process for good."""
    st = read_stat(pid)
    return st.starttime if st is not None else None


class Emulator:
    def __init__(self, path: str, record: str, default_timeout: int) -> None:
        self.path = path
        self.record_path = record
        self.default_timeout = default_timeout
        self.deadline: float | None = None  # monotonic; None = disarmed
        self.timeout = default_timeout
        self.node_root: int | None = None  # the supervisor of the client's node
        self.node_root_started: int | None = None
        self.magic = False
        self.muted = False

    def record(self, event: str, **fields: object) -> None:
        line = {"event": event, "mono": time.monotonic(), "wall": time.time(), "timeout": self.timeout,
                "deadline_mono": self.deadline, **fields}
        with open(self.record_path, "a") as f:
            f.write(json.dumps(line) + "\n")

    def pet(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def handle(self, line: str) -> str:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "SETTIMEOUT":
            try:
                value = int(arg)
            except ValueError:
                return "ERR bad timeout"
            if not 1 <= value <= 65534:
                return "ERR timeout out of range"
            self.timeout = value
            self.pet()
            self.record("settimeout")
        elif cmd == "KEEPALIVE":
            self.pet()
            self.record("keepalive")
        elif cmd == "V":
            self.magic = True
            self.record("magic")
        elif cmd != "GETTIMEOUT":
            return f"ERR unknown command {cmd}"
        return f"OK {self.timeout}"

    def connected(self, conn: socket.socket) -> None:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, SO_PEERCRED_FMT.size)
        pid = SO_PEERCRED_FMT.unpack(creds)[0]
        # The client is the watchdog worker; its parent is the node's supervisor.
        client = read_stat(pid)
        self.node_root = client.ppid if client is not None and client.ppid > 1 else pid
        self.node_root_started = start_time(self.node_root)
        self.magic = False
        self.muted = False
        if self.deadline is None:
            self.timeout = self.default_timeout
        self.pet()  # opening the device arms (or pets) it
        self.record("open", client_pid=pid, node_root=self.node_root)

    def disconnected(self) -> None:
        if self.magic:
            self.deadline = None
            self.record("disarmed")
        else:
            self.record("closed_armed")  # like the kernel: a close without "V" keeps the timer running

    def fire(self) -> None:
        if self.muted:
            self.record("fired_muted")
            self.deadline = None
            return
        # A node already dead (SIGKILLed, say) has nothing left to reset, and its pids may belong to
        # someone else by now: a real reset would hit that machine only.  Hence the root's start time.
        mono, wall = time.monotonic(), time.time()  # the reset's moment: the kills go out at once
        trees = [(self.node_root, self.node_root_started)] \
            if self.node_root is not None and self.node_root_started is not None else []
        result = kill_and_confirm(None, trees=trees, timeout=RESET_CONFIRM)
        self.record("fired", mono=mono, wall=wall, killed=list(result.killed), confirmed=result.confirmed,
                    reason=result.reason)
        self.deadline = None

    def serve(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.path)
        os.chmod(self.path, 0o666)  # the node runs as another user in tests
        server.listen(4)
        sel = selectors.DefaultSelector()
        sel.register(server, selectors.EVENT_READ, "accept")
        buffers: dict[socket.socket, bytes] = {}
        self.record("started")
        running = True

        def stop(*_: object) -> None:
            nonlocal running
            running = False
        signal.signal(signal.SIGTERM, stop)

        def mute(signum: int, _frame: object) -> None:
            self.muted = signum == signal.SIGUSR1
            self.record("muted" if self.muted else "unmuted")
        signal.signal(signal.SIGUSR1, mute)
        signal.signal(signal.SIGUSR2, mute)
        while running:
            timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            for key, _ in sel.select(min(timeout, 0.5) if timeout is not None else 0.5):
                if key.data == "accept":
                    conn, _ = server.accept()
                    sel.register(conn, selectors.EVENT_READ, "client")
                    buffers[conn] = b""
                    self.connected(conn)
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                try:
                    data = conn.recv(4096)
                    buffers[conn] += data
                    while b"\n" in buffers[conn]:
                        line, buffers[conn] = buffers[conn].split(b"\n", 1)
                        conn.sendall((self.handle(line.decode()) + "\n").encode())
                except OSError:  # a client killed with unread replies resets the connection: it is gone all the same
                    data = b""
                if not data:
                    sel.unregister(conn)
                    buffers.pop(conn, None)
                    conn.close()
                    self.disconnected()
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.fire()
        self.record("stopped")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hasup-watchdog-emulator")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--record", required=True)
    ap.add_argument("--default-timeout", type=int, default=60)
    args = ap.parse_args(argv)
    Emulator(args.socket, args.record, args.default_timeout).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
