"""A throwaway PKI for TLS tests, made with the openssl command line.

One CA signs a server certificate for 127.0.0.1 (its key encrypted with a
pass phrase, as restapi.keyfile_password expects) and a client certificate
(plain key) for verify_client tests.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

KEY_PASSWORD = "key-pass-phrase-42"


@dataclass(frozen=True)
class Pki:
    dir: str
    key_password: str = KEY_PASSWORD

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    @property
    def ca(self) -> str:
        return self.path("ca.pem")

    @property
    def server_cert(self) -> str:
        return self.path("server.pem")

    @property
    def server_key(self) -> str:
        return self.path("server.key")  # encrypted with key_password

    @property
    def client_cert(self) -> str:
        return self.path("client.pem")

    @property
    def client_key(self) -> str:
        return self.path("client.key")

    def chown(self, owner: tuple[int, int] | None) -> None:
        """Hand the directory to the user that runs the nodes; keys stay 0600."""
        if owner is None:
            return
        os.chown(self.dir, *owner)
        for name in os.listdir(self.dir):
            os.chown(self.path(name), *owner)


def _openssl(cwd: str, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: str, key_password: str = KEY_PASSWORD) -> Pki:
    """Create the CA, server and client certificates in directory (created if missing)."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    d = directory
    _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=hasup test CA")
    _openssl(d, "req", "-newkey", "rsa:2048", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
             "-passout", f"pass:{key_password}")
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    _openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
             "-subj", "/CN=hasup test client")
    _openssl(d, "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.pem", "-days", "2")
    for name in ("ca.key", "server.key", "client.key"):
        os.chmod(os.path.join(d, name), 0o600)
    return Pki(d, key_password)
