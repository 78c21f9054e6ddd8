"""Test harness: a real etcd and N real hasup nodes on loopback.

As root, nodes run as an unprivileged user (PostgreSQL refuses root).
The test process is a child subreaper, so anything a killed node leaves
behind is re-parented to us and can be found and cleaned up by PID.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg2
import yaml

from tests.harness.netns import PREFIX, SUBNET, Network, in_netns

if TYPE_CHECKING:
    from tests.harness.etcd3 import Etcd3Cluster

T = TypeVar("T")
LIVE_CLUSTERS: list[TestCluster] = []  # clusters not destroyed yet: a failing test's report shows their logs
TEST_USER = "hasup-test"
PG_BIN = "/usr/lib/postgresql/15/bin"
SUPERUSER_PASSWORD = "su-secret-7f3a"
REPLICATION_PASSWORD = "repl-secret-91c2"
APP_PASSWORD = "app-secret-c0de"
SECRETS = (SUPERUSER_PASSWORD, REPLICATION_PASSWORD, APP_PASSWORD)
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def wait_for(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll cond until it returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:  # the condition may fail while things settle
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


_handed_out: set[int] = set()
_cursor: list[int] = []  # where this process's scan for a free port goes on from


def _port_share() -> tuple[int, int]:
    """(index, count) of this pytest-xdist worker; (0, 1) outside xdist.  Workers hand out disjoint ports
    (port % count == index), so two test processes never hand out the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        return int(worker[2:]) % count, count
    return 0, 1


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def listen_ports() -> range:
    """Where servers of a test listen: outside the kernel's ephemeral range.  A port in it can be taken,
    between the check and the server's bind, as the local end of any outgoing connection (an API worker
    once found its port held by a client's connection and could not listen)."""
    low, high = _ephemeral_range()
    if low - 10000 >= 4096:
        return range(10000, low)
    return range(high + 1, 65536)


def free_port() -> int:
    """A port nobody listens on now and that this process has not handed out before: two calls in a row
    can get the same port from the kernel once the first socket is closed (an etcd member once got it
    as both its client and its peer port, and could not start)."""
    index, count = _port_share()
    ports = listen_ports()
    if not _cursor:  # each process starts its scan elsewhere, so runs after one another rarely meet
        _cursor.append(ports.start + (os.getpid() * 7919) % len(ports))
    for _ in range(len(ports)):
        port = _cursor[0]
        _cursor[0] = port + 1 if port + 1 < ports.stop else ports.start
        if port % count != index or port in _handed_out or not _bindable(port):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port left in {ports.start}-{ports.stop - 1}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_as() -> tuple[int, int] | None:
    """(uid, gid) to run nodes as; None when we are not root."""
    if os.geteuid() != 0:
        return None
    with open("/tmp/hasup-test-user.lock", "w") as lock:  # two test processes may both find it missing
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pw = pwd.getpwnam(TEST_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                           check=True)
            pw = pwd.getpwnam(TEST_USER)
    return pw.pw_uid, pw.pw_gid


def hasup_bin() -> str:
    return os.environ.get("HASUP_BIN") or os.path.join(os.path.dirname(sys.executable), "hasup")


KINDS = ("hasup", "patroni")


def node_binary(kind: str) -> str:
    """What a node of this kind runs: hasup (HASUP_BIN or the venv's), or the venv's Patroni
    (`make install` puts it there), which reads the same configuration file."""
    if kind == "hasup":
        return hasup_bin()
    if kind == "patroni":
        return os.path.join(os.path.dirname(sys.executable), "patroni")
    raise ValueError(f"unknown node kind {kind!r} (known: {', '.join(KINDS)})")


class _PostmasterReaper:
    """Reaps the zombie postmasters re-parented to the test process while Patroni nodes run.

    Patroni starts PostgreSQL through a helper that exits, so the postmaster's parent becomes
    the nearest subreaper (in production init, here the test process).  Patroni waits for a
    stopped postmaster's pid to vanish, and an unreaped zombie never does: its stop or demotion
    would hang.  Only zombies named postgres are reaped, so a Popen child's exit status stays
    for its own wait()."""

    EVERY = 0.1  # seconds, about as soon as init would

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def ensure(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            self.stopping = threading.Event()
            self.thread = threading.Thread(target=self._loop, args=(self.stopping,), daemon=True,
                                           name="postmaster-reaper")
            self.thread.start()

    def stop(self) -> None:
        """Until the next Patroni node starts (TestCluster.destroy: its Patroni nodes are gone)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    @staticmethod
    def _loop(stopping: threading.Event) -> None:
        while not stopping.wait(_PostmasterReaper.EVERY):
            me = os.getpid()
            for pid in all_pids():
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        head, _, rest = f.read().rpartition(")")
                    fields = rest.split()
                    if head.partition("(")[2] == "postgres" and fields[0] == "Z" and int(fields[1]) == me:
                        os.waitpid(pid, os.WNOHANG)
                except (OSError, IndexError, ValueError):
                    continue


postmaster_reaper = _PostmasterReaper()


# -- /proc -------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        st = proc_stat(pid)
        if st is not None:
            children.setdefault(st[1], []).append(pid)
    out, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def reap_zombies() -> None:
    """Reap re-parented orphans (we are a subreaper) so they do not linger as zombies."""
    me = os.getpid()
    for pid in all_pids():
        st = proc_stat(pid)
        if st is not None and st[1] == me and st[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


# -- etcd -----------------------------------------------------------------------------


class Etcd:
    def __init__(self, base: str, netns: str | None = None, host: str = "127.0.0.1") -> None:
        self.netns = netns  # run inside this network namespace (tests/harness/netns.py)
        self.host = host
        self.port = free_port()
        self.peer_port = free_port()
        self.data = tempfile.mkdtemp(prefix="hasup-etcd-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.log_path = os.path.join(base, "etcd.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            (["ip", "netns", "exec", self.netns] if self.netns else [])
            + ["etcd", "--name", "hasup-test", "--data-dir", os.path.join(self.data, "d"), "--enable-v2=true",
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", f"http://{self.host}:{self.peer_port}",
             "--initial-advertise-peer-urls", f"http://{self.host}:{self.peer_port}",
             "--initial-cluster", f"hasup-test=http://{self.host}:{self.peer_port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_for(lambda: self.get("/v2/keys/").get("action") == "get", 20, "etcd to answer")

    def get(self, path: str) -> dict[str, Any]:
        if self.netns:
            return in_netns(self.netns, lambda: self._outside().get(path))
        try:
            with _opener.open(self.url + path, timeout=3) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read()))

    def key(self, key: str) -> dict[str, Any] | None:
        node = self.get(f"/v2/keys{key}").get("node")
        return node if isinstance(node, dict) else None

    def put(self, key: str, value: str) -> None:
        if self.netns:
            return in_netns(self.netns, lambda: self._outside().put(key, value))
        data = urllib.parse.urlencode({"value": value}).encode()
        req = urllib.request.Request(f"{self.url}/v2/keys{key}", data=data, method="PUT")
        with _opener.open(req, timeout=3) as r:
            r.read()

    def _outside(self) -> Etcd:
        """This etcd as seen from inside its namespace (for in_netns calls)."""
        twin = Etcd.__new__(Etcd)
        twin.__dict__.update(self.__dict__, netns=None)
        return twin

    def value(self, key: str) -> str | None:
        node = self.key(key)
        return node.get("value") if node else None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        shutil.rmtree(self.data, ignore_errors=True)


# -- nodes ----------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    base: str
    scope: str
    etcd_port: int
    owner: tuple[int, int] | None
    dcs: dict[str, Any]
    api_port: int = field(default_factory=free_port)
    pg_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # added to the node's environment
    # A test host of its own (tests/harness/netns.py): namespace, address, subnet for pg_hba, etcd's address.
    netns: str | None = None
    host: str = "127.0.0.1"
    hba_net: str = "127.0.0.1/32"
    etcd_host: str = "127.0.0.1"
    caps: tuple[str, ...] = ()  # ambient capabilities, as systemd's AmbientCapabilities= grants them
    # Replaces the `etcd:` section of the configuration (e.g. Etcd3Cluster.dcs_section(): `etcd3:` with TLS).
    dcs_section: dict[str, Any] | None = None
    kind: str = "hasup"  # what runs the node: "hasup" or "patroni" (KINDS), on the same configuration file

    @property
    def dir(self) -> str:
        return os.path.join(self.base, self.name)

    @property
    def data_dir(self) -> str:
        return os.path.join(self.dir, "data")

    @property
    def config_path(self) -> str:
        return os.path.join(self.dir, "hasup.yml")

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "hasup.log")

    @property
    def title_marker(self) -> str:
        return f"{self.scope}/{self.name}"

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "scope": self.scope,
            "namespace": "/service/",
            "name": self.name,
            "restapi": {"listen": f"{self.host}:{self.api_port}", "connect_address": f"{self.host}:{self.api_port}"},
            "etcd": {"host": f"{self.etcd_host}:{self.etcd_port}"},
            "log": {"level": "INFO"},
            "bootstrap": {
                "dcs": self.dcs,
                "initdb": [{"encoding": "UTF8"}, "data-checksums", {"auth-host": "scram-sha-256"},
                           {"auth-local": "trust"}],
                "pg_hba": [f"host replication replicator {self.hba_net} scram-sha-256",
                           f"host all all {self.hba_net} scram-sha-256"],
                "users": {"app": {"password": APP_PASSWORD, "options": ["createdb"]}},
                # Runs once on the new primary with a superuser DSN as its last argument.
                "post_bootstrap": f"{PG_BIN}/psql -v ON_ERROR_STOP=1 -c 'CREATE TABLE post_bootstrap_ran ()' -d",
            },
            "postgresql": {
                "listen": f"{self.host}:{self.pg_port}",
                "connect_address": f"{self.host}:{self.pg_port}",
                "data_dir": self.data_dir,
                "bin_dir": PG_BIN,
                "pgpass": os.path.join(self.dir, "pgpass"),
                "pg_ctl_timeout": 60,
                "authentication": {
                    "superuser": {"username": "postgres", "password": SUPERUSER_PASSWORD},
                    "replication": {"username": "replicator", "password": REPLICATION_PASSWORD},
                },
                "parameters": {"unix_socket_directories": self.dir, "fsync": "off", "shared_buffers": "16MB",
                               "synchronous_commit": "on", "full_page_writes": "on",
                               "max_wal_size": "128MB", "min_wal_size": "32MB"},
                "basebackup": [{"checkpoint": "fast"}],
            },
            "tags": {"nofailover": False},
            "watchdog": {"mode": "off"},
        }
        if self.dcs_section is not None:
            del cfg["etcd"]
            cfg.update(copy.deepcopy(self.dcs_section))  # a copy: extra may edit it below
        for dotted, value in self.extra.items():
            d = cfg
            *path, last = dotted.split(".")
            for p in path:
                d = d.setdefault(p, {})
            d[last] = value
        return cfg

    def prepare(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        with open(self.config_path, "w") as f:
            yaml.safe_dump(self.config(), f)
        if self.owner:
            for path in (self.base, self.dir, self.config_path):
                os.chown(path, *self.owner)
            os.chmod(self.base, 0o755)

    def command(self, *argv: str) -> list[str]:
        """argv run as this node's user, in its namespace, with its capabilities."""
        if not self.netns:
            return list(argv)
        # `ip netns exec` needs root; setpriv then drops to the node's user, keeping only the
        # capabilities systemd's AmbientCapabilities= would give (both exec in place: same pid).
        prefix = ["ip", "netns", "exec", self.netns]
        if self.owner:
            caps = ",".join(f"+{c.lower().removeprefix('cap_')}" for c in self.caps) or "-all"
            prefix += ["setpriv", f"--reuid={self.owner[0]}", f"--regid={self.owner[1]}", "--clear-groups",
                       f"--inh-caps={caps}", f"--ambient-caps={caps}"]
        return prefix + list(argv)

    def start(self) -> None:
        reap_zombies()  # a zombie postmaster of an earlier run would keep PostgreSQL from starting
        self.prepare()
        log = open(self.log_path, "ab")
        kwargs: dict[str, Any] = {}
        if self.owner and not self.netns:
            kwargs.update(user=self.owner[0], group=self.owner[1], extra_groups=[])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PATRONI_", "HASUP_", "PG"))}
        env["HOME"] = self.dir
        env.update(self.env)
        if self.kind == "patroni":
            postmaster_reaper.ensure()
        self.proc = subprocess.Popen(self.command(node_binary(self.kind), self.config_path), stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir, env=env,
                                     **kwargs)
        log.close()

    def swap(self, kind: str, timeout: float = 90) -> None:
        """Replace what runs this node, as an operator migrates it: stop it (PostgreSQL too), then
        start the other kind with the same configuration file on the same data directory."""
        node_binary(kind)  # an unknown kind fails before the node is stopped
        self.stop(timeout)
        self.kind = kind
        self.start()

    @property
    def pid(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        return self.proc.pid

    def postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as f:
                pid = int(f.readline())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) and "postgres" in cmdline(pid) else None

    def processes(self) -> set[int]:
        """Every live process of this node: its hasup tree, its postmaster tree, and their orphans."""
        pids: set[int] = set()
        if self.pid:
            pids.add(self.pid)
            pids.update(descendants(self.pid))
        pm = self.postmaster_pid()
        if pm:
            pids.add(pm)
            pids.update(descendants(pm))
        for pid in all_pids():
            line = cmdline(pid)
            if self.title_marker + " " in line + " " or f"-D {self.data_dir}" in line:
                pids.add(pid)
        return {p for p in pids if alive(p)}

    def worker_pid(self, role: str) -> int | None:
        want = f"hasup: {role} {self.title_marker}"
        for pid in self.processes():
            if cmdline(pid) == want:
                return pid
        return None

    def kill_tree(self) -> None:
        """SIGKILL the whole node at once: freeze first so nothing forks or reacts."""
        pids = sorted(self.processes())
        kill_pids(pids, signal.SIGSTOP)
        pids = sorted(self.processes() | set(pids))
        kill_pids(pids, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
        wait_for(lambda: not self.processes(), 10, f"{self.name}'s processes to die")
        me = os.getpid()

        def reaped() -> bool:
            # They reach us (the subreaper) as zombies only once their parents are gone, and PostgreSQL
            # takes an unreaped zombie postmaster for a running one: a restart would refuse to start.
            reap_zombies()
            return not any((st := proc_stat(p)) is not None and st[1] == me and st[0] == "Z" for p in pids)
        wait_for(reaped, 10, f"{self.name}'s processes to be reaped")

    def stop(self, timeout: float = 90, keep_postgres: bool = False) -> None:
        """SIGTERM hasup and kill what it leaves behind; keep_postgres spares PostgreSQL (a paused
        cluster's node leaves it running on purpose)."""
        if self.pid:
            self.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                pass
        leftovers = self.processes()
        if keep_postgres:
            leftovers = {p for p in leftovers if cmdline(p).startswith("hasup")}
        if leftovers:
            kill_pids(sorted(leftovers))
        reap_zombies()

    # -- REST and SQL -----------------------------------------------------------------

    @property
    def api_base(self) -> str:
        """The node's REST API root: https:// once restapi.certfile is set."""
        scheme = "https" if self.config()["restapi"].get("certfile") else "http"
        return f"{scheme}://{self.host}:{self.api_port}"

    def api_context(self) -> ssl.SSLContext | None:
        """How the harness speaks TLS to this node (None for plain HTTP).

        It trusts restapi.cafile, and when the node verifies clients it shows the
        node's own certificate, as Patroni's ctl falls back to the restapi one.
        """
        restapi = self.config()["restapi"]
        if not restapi.get("certfile"):
            return None
        context = ssl.create_default_context(cafile=restapi.get("cafile"))
        if restapi.get("verify_client", "none") != "none":
            context.load_cert_chain(restapi["certfile"], restapi.get("keyfile"), restapi.get("keyfile_password"))
        return context

    def api(self, path: str, method: str = "GET", timeout: float = 5) -> tuple[int, Any]:
        if self.netns:
            return in_netns(self.netns, lambda: self._api(path, method, timeout))
        return self._api(path, method, timeout)

    def _api(self, path: str, method: str, timeout: float) -> tuple[int, Any]:
        req = urllib.request.Request(self.api_base + path, method=method)
        context = self.api_context()
        opener = _opener if context is None else urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
        try:
            with opener.open(req, timeout=timeout) as r:
                body = r.read()
                code = r.status
        except urllib.error.HTTPError as exc:
            body, code = exc.read(), exc.code
        try:
            return code, json.loads(body) if body else None
        except ValueError:
            return code, body.decode(errors="replace")

    def status(self) -> dict[str, Any]:
        return dict(self.api("/patroni")[1])

    def connect(self, dbname: str = "postgres", timeout: int = 3) -> Any:
        if self.netns:
            return in_netns(self.netns, lambda: self._connect(dbname, timeout))
        return self._connect(dbname, timeout)

    def _connect(self, dbname: str, timeout: int) -> Any:
        conn = psycopg2.connect(host=self.host, port=self.pg_port, user="postgres", password=SUPERUSER_PASSWORD,
                                dbname=dbname, connect_timeout=timeout, application_name="hasup-tests")
        conn.autocommit = True
        return conn

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = 5000")
                cur.execute(query, args or None)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class TestCluster:
    """etcd plus N hasup nodes in a temporary directory.

    etcd: the DCS to use instead of a new single v2 Etcd(base), e.g. an Etcd3Cluster made on the same
    base; when it has dcs_section(), the nodes' configuration gets that section instead of `etcd:`.
    kinds: what runs each node ("hasup" or "patroni", in node order; the rest run hasup).
    """

    __test__ = False  # a helper, not a pytest test class

    def __init__(self, n: int = 3, dcs: dict[str, Any] | None = None, scope: str | None = None,
                 base: str | None = None, network: Network | None = None,
                 etcd: Etcd | Etcd3Cluster | None = None, kinds: tuple[str, ...] | None = None) -> None:
        self.owner = run_as()
        self.base = base or tempfile.mkdtemp(prefix="hasup-test-")
        os.chmod(self.base, 0o755)
        if self.owner:
            os.chown(self.base, *self.owner)
        # With a network (hosts "etcd", "node1", ...), each runs in its own namespace on its bridge.
        where = network.hosts if network is not None else {}
        self.etcd: Etcd | Etcd3Cluster
        if etcd is not None:
            self.etcd = etcd
        else:
            self.etcd = Etcd(self.base, where["etcd"].ns, where["etcd"].address) if where else Etcd(self.base)
        section_of: Callable[[], dict[str, Any]] | None = getattr(self.etcd, "dcs_section", None)
        dcs_section = section_of() if section_of is not None else None
        chown: Callable[[tuple[int, int] | None], None] | None = getattr(self.etcd, "chown", None)
        if chown is not None:
            chown(self.owner)  # the nodes read its client certificate and key
        self.scope = scope or f"t{os.getpid()}x{int(time.time() * 1000) % 100000}"
        self.dcs = dcs or {"ttl": 10, "loop_wait": 2, "retry_timeout": 4, "maximum_lag_on_failover": 1048576,
                           "postgresql": {"use_pg_rewind": True, "use_slots": False}}
        self.nodes = [Node(f"node{i + 1}", self.base, self.scope, self.etcd.port, self.owner, self.dcs,
                           dcs_section=dcs_section) for i in range(n)]
        for node, kind in zip(self.nodes, kinds or (), strict=False):  # a mixed cluster: per node (Node.kind)
            node_binary(kind)
            node.kind = kind
        for node in self.nodes if where else ():
            place = where[node.name]
            node.netns, node.host, node.etcd_host = place.ns, place.address, self.etcd.host
            node.hba_net = f"{SUBNET}.0/{PREFIX}"
        LIVE_CLUSTERS.append(self)

    def log_tails(self, lines: int) -> str:
        return "\n".join(f"===== {self.scope}/{node.name} (last {lines} lines) =====\n"
                         + "\n".join(node.log_text().splitlines()[-lines:]) for node in self.nodes)

    def start_all(self, timeout: float = 180) -> Node:
        """Start every node not running yet (etcd must run) and wait for a leader with every replica streaming."""
        for node in self.nodes:
            if node.pid is None:
                node.start()
        leader = self.wait_leader(timeout)
        self.wait_streaming(leader, [n for n in self.nodes if n is not leader], timeout)
        return leader

    def __enter__(self) -> TestCluster:
        self.etcd.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:  # the test's captured output is all that will be left of the logs
            print(self.log_tails(80), file=sys.stderr)
        self.destroy()

    def destroy(self, keep_etcd: bool = False) -> None:
        """Stop every node, then etcd unless keep_etcd (another cluster sharing it stops it)."""
        if self in LIVE_CLUSTERS:
            LIVE_CLUSTERS.remove(self)
        if os.environ.get("HASUP_SHOW_LOGS"):
            print(self.log_tails(150), file=sys.stderr)
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop(timeout=20)
        if not keep_etcd:
            self.etcd.stop()
        if any(n.kind == "patroni" for n in self.nodes):
            postmaster_reaper.stop()
        me = os.getpid()
        kill_pids([p for p in descendants(me) if alive(p) and self._ours(p)])
        reap_zombies()
        if not os.environ.get("HASUP_KEEP_TEST_DIRS"):
            shutil.rmtree(self.base, ignore_errors=True)

    def _ours(self, pid: int) -> bool:
        line = cmdline(pid)
        return self.scope in line or self.base in line

    def key(self, rel: str) -> str:
        return f"/service/{self.scope}/{rel}"

    def member(self, name: str) -> dict[str, Any]:
        value = self.etcd.value(self.key(f"members/{name}"))
        return dict(json.loads(value)) if value else {}

    def leader_name(self) -> str | None:
        return self.etcd.value(self.key("leader"))

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def leader(self) -> Node | None:
        name = self.leader_name()
        return self.node(name) if name else None

    def wait_leader(self, timeout: float, exclude: str | None = None) -> Node:
        def writable_leader() -> Node | None:
            name = self.leader_name()
            if not name or name == exclude:
                return None
            node = self.node(name)
            if node.sql("SELECT pg_is_in_recovery()")[0][0]:
                return None
            return node
        return wait_for(writable_leader, timeout, "a writable leader" + (f" other than {exclude}" if exclude else ""))

    def wait_streaming(self, leader: Node, replicas: list[Node], timeout: float) -> None:
        names = {r.name for r in replicas}

        def streaming() -> bool:
            rows = leader.sql("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
            return names <= {r[0] for r in rows}
        wait_for(streaming, timeout, f"{sorted(names)} streaming from {leader.name}")


@contextlib.contextmanager
def cluster(n: int = 3, **kwargs: Any) -> Iterator[TestCluster]:
    with TestCluster(n, **kwargs) as c:
        yield c
