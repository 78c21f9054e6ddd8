"""A throwaway PKI for TLS tests, made with the openssl command line.

make_pki(): one CA signs a server certificate for 127.0.0.1 (its key encrypted
with a pass phrase, as restapi.keyfile_password expects) and a client
certificate (plain key) for verify_client tests.

make_ca() and make_cert() are the building blocks, for other layouts (the
etcd cluster of tests/harness/etcd3.py builds its own from them).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

KEY_PASSWORD = "key-pass-phrase-42"
DAYS = "2"


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


def make_ca(directory: str, name: str = "ca", cn: str = "hasup test CA") -> str:
    """A self-signed CA: <name>.pem and its plain key <name>.key (0600) in directory; returns the .pem path."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.pem", "-days", DAYS, "-subj", f"/CN={cn}")
    os.chmod(os.path.join(directory, f"{name}.key"), 0o600)
    return os.path.join(directory, f"{name}.pem")


def make_cert(directory: str, name: str, cn: str, ca: str = "ca", *, extensions: tuple[str, ...] = (),
              key_password: str | None = None) -> tuple[str, str]:
    """<name>.pem signed by the CA <ca>.pem/<ca>.key in directory, and its key <name>.key (0600).

    extensions are openssl extension lines ("subjectAltName=IP:127.0.0.1",
    "extendedKeyUsage=clientAuth"); the key is encrypted with key_password
    when one is given, plain otherwise. Returns (certificate, key) paths.
    """
    d = directory
    key_args = ["-passout", f"pass:{key_password}"] if key_password is not None else ["-nodes"]
    _openssl(d, "req", "-newkey", "rsa:2048", *key_args, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}")
    ext_args: list[str] = []
    if extensions:
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write("".join(line + "\n" for line in extensions))
        ext_args = ["-extfile", f"{name}.ext"]
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", DAYS, *ext_args)
    os.chmod(os.path.join(d, f"{name}.key"), 0o600)
    return os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}.key")


def make_pki(directory: str, key_password: str = KEY_PASSWORD) -> Pki:
    """Create the CA, server and client certificates in directory (created if missing)."""
    make_ca(directory)
    make_cert(directory, "server", "127.0.0.1", extensions=("subjectAltName=IP:127.0.0.1",),
              key_password=key_password)
    make_cert(directory, "client", "hasup test client")
    return Pki(directory, key_password)
