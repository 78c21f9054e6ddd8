"""A throwaway TCP server on 127.0.0.1 that reads a request's head and then does whatever it is told
to the socket: a peer that answers garbage, too much, slowly or not at all."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

Behaviour = Callable[[socket.socket], None]


class RawServer:
    """A TCP server that reads the request head and then does whatever `behaviour` does to the socket."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.serve, daemon=True)]
        self.threads[0].start()

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.requests += 1
            worker = threading.Thread(target=self.handle, args=(conn,), daemon=True)
            self.threads.append(worker)
            worker.start()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                self.behaviour(conn)
            except OSError:
                pass

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/patroni"

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        for thread in self.threads:
            thread.join(10)
