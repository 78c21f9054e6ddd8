"""The emulated watchdog device outlives a client that vanishes mid-conversation.

A node reset SIGKILLs the watchdog worker with replies unread, which resets
the connection; the emulator must carry on for the node's next worker (it
once died there, leaving the restarted node unarmed).  Every client here
sends the magic close first: an armed emulator would reset this test's
own process tree.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.harness import wait_for


def talk(sock: socket.socket, line: str) -> str:
    sock.sendall(line.encode() + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(64)
        assert chunk, "the emulator hung up"
        reply += chunk
    return reply.decode().strip()


def test_a_reset_connection_does_not_end_the_emulator(tmp_path) -> None:
    path, record = str(tmp_path / "wd.sock"), str(tmp_path / "wd.jsonl")
    emu = subprocess.Popen([sys.executable, "-m", "hasup.watchdog.emulator", "--socket", path, "--record", record],
                           stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: os.path.exists(path), 10, "the emulator's socket")
        first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        first.connect(path)
        assert talk(first, "V") == "OK 60"  # disarms on close, whatever happens next
        first.sendall(b"KEEPALIVE\n" * 20000)  # more replies than the socket buffers hold...
        first.close()  # ...left unread: the emulator's reads and writes now fail with a reset
        second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        second.connect(path)
        assert talk(second, "GETTIMEOUT") == "OK 60"
        assert talk(second, "V") == "OK 60"
        second.close()
        assert emu.poll() is None, emu.stderr.read().decode() if emu.stderr else ""
    finally:
        emu.terminate()
        _, err = emu.communicate(timeout=10)
    assert b"Traceback" not in err, err.decode()


def test_a_muted_emulator_records_its_timer_but_kills_nothing(tmp_path) -> None:
    import json

    from hasup.watchdog.emulator import Emulator

    record = tmp_path / "events.jsonl"
    emu = Emulator(str(tmp_path / "sock"), str(record), 1)
    # Our own process as the node: a firing that were not muted would kill this test.
    emu.node_root, emu.node_root_started = os.getpid(), None
    emu.muted = True
    emu.pet()
    emu.fire()
    events = [json.loads(line) for line in record.read_text().splitlines()]
    assert [e["event"] for e in events] == ["fired_muted"]
    assert emu.deadline is None
