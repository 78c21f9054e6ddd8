"""A real api worker (one process: gunicorn's worker without its arbiter) on a real socketpair, as the supervisor
would fork it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hasup import PATRONI_COMPAT_VERSION, ipc
from hasup.config import (
    BootstrapConfig,
    Config,
    Credentials,
    EtcdConfig,
    LogConfig,
    PostgresConfig,
    RestApiConfig,
    Tags,
    WatchdogConfig,
)
from hasup.worker import WorkerContext
from tests.harness import free_port

DEADLINE = 20.0


def make_config(port: int) -> Config:
    creds = Credentials("postgres")
    return Config(
        scope="demo", namespace="service", name="node1",
        restapi=RestApiConfig(listen=f"127.0.0.1:{port}", connect_address=f"127.0.0.1:{port}"),
        etcd=EtcdConfig(hosts=(("127.0.0.1", 2379),)),
        bootstrap=BootstrapConfig(dcs={}, initdb=(), pg_hba=(), users={}, post_bootstrap=None),
        postgresql=PostgresConfig(
            listen="127.0.0.1:5432", connect_address="127.0.0.1:5432", data_dir="/nonexistent",
            bin_dir="", config_dir="/nonexistent", pgpass="/nonexistent/pgpass", superuser=creds,
            replication=Credentials("replicator"), rewind=creds, parameters={}, pg_hba=None),
        tags=Tags(raw={"zone": "a"}), log=LogConfig(level="INFO"), watchdog=WatchdogConfig(mode="off"))


def wait_until(what: str, check: Callable[[], Any], pump: Callable[[], None] | None = None,
               timeout: float = DEADLINE) -> Any:
    """Poll check() until it returns something truthy; pump() in between keeps our pipe drained."""
    deadline = time.monotonic() + timeout
    while True:
        if pump is not None:
            pump()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # poll interval, not synchronisation: check() decides


def get(port: int, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes] | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2 if body is None else DEADLINE)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()
    except OSError:
        return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command may contain spaces and parentheses: fields follow the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Supervisor:
    """The test's side of the api worker's pipe."""

    def __init__(self, sock: socket.socket) -> None:
        self.channel = ipc.Channel(sock, "api")
        self.received: list[ipc.Message] = []

    def send(self, message: ipc.Message) -> None:
        self.channel.send(message)
        self.pump()

    def pump(self) -> None:
        if self.channel.closed:
            return
        self.channel.flush()
        try:
            self.received.extend(env.message for env in self.channel.receive())
        except ipc.PeerClosed:
            pass


class ApiProcess:
    """The forked api process, reaped at most once, so cleanup never signals a recycled pid."""

    def __init__(self, pid: int, port: int, sup: Supervisor) -> None:
        self.pid, self.port, self.sup = pid, port, sup
        self.exit_code: int | None = None

    def reaped(self) -> bool:
        if self.exit_code is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done == self.pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
        return self.exit_code is not None


def fork_api(stack_fd: int | None = None, **patch: Any) -> ApiProcess:
    """The api process forked as the supervisor forks it; module constants of hasup.workers.api patched there."""
    from hasup.workers import api

    port = free_port()
    sup_end, worker_end = ipc.channel_pair()
    me = os.getpid()
    pid = os.fork()
    if pid == 0:  # the api process: never return into pytest
        code = 1
        try:
            sup_end.close()
            for name, value in patch.items():
                setattr(api, name, value)
            api.run(WorkerContext("api", make_config(port), ipc.Channel(worker_end, "supervisor"),
                                  supervisor_pid=me, stack_fd=stack_fd))
            code = 0
        finally:
            os._exit(code)
    worker_end.close()
    return ApiProcess(pid, port, Supervisor(sup_end))


def cleanup(proc: ApiProcess) -> None:
    if not proc.reaped():
        os.kill(proc.pid, signal.SIGKILL)
        os.waitpid(proc.pid, 0)
    if not proc.sup.channel.closed:
        proc.sup.channel.close()


def test_a_request_loop_that_stops_turning_ends_the_process() -> None:
    """gunicorn's arbiter would kill a worker that stopped notifying; without it the reader thread ends the process."""
    proc = fork_api(LOOP_TIMEOUT=-1.0)  # any age is too old: the first check fires
    try:
        wait_until("the api process to end itself", proc.reaped, proc.sup.pump, timeout=10)
        assert proc.exit_code == 70
        proc.sup.pump()
        assert any(isinstance(m, ipc.LogRecord) and "request loop has not turned" in m.message
                   for m in proc.sup.received), proc.sup.received
    finally:
        cleanup(proc)


def test_sigabrt_leaves_the_api_stacks_for_the_supervisor(tmp_path: Any) -> None:
    """gunicorn's worker installs a SIGABRT handler of its own; the heartbeat escalation still gets the stacks."""
    with open(tmp_path / "stack", "w+b") as stack:
        proc = fork_api(stack_fd=stack.fileno())
        try:
            wait_until("the api to listen", lambda: get(proc.port, "/health"), proc.sup.pump)
            os.kill(proc.pid, signal.SIGABRT)
            wait_until("the api process to die", proc.reaped, timeout=10)
            assert proc.exit_code == -signal.SIGABRT
            stack.seek(0)
            text = stack.read().decode(errors="replace")
            # faulthandler's dump of every thread, the request loop's among them.
            assert "Current thread" in text and "gworker.py" in text, text
        finally:
            cleanup(proc)


@pytest.fixture
def api_process() -> Iterator[ApiProcess]:
    proc = fork_api()
    try:
        yield proc
    finally:
        cleanup(proc)


def test_api_worker_serves_snapshots_and_exits_with_the_supervisor(api_process: ApiProcess) -> None:
    pid, port, sup = api_process.pid, api_process.port, api_process.sup
    now = time.monotonic()
    sup.send(ipc.PgState(state="running", role="primary", data_dir_empty=False, probe_ok=True, probe_at=now,
                         server_version=160004, timeline=2, wal_position=123456, sysid="7000000000000000001"))
    sup.send(ipc.ClusterView(read_at=now, read_at_wall=time.time(), leader="node1", holds_lock=True,
                             lock_valid_until=now + 120, members={}, config={"ttl": 30}, history=(),
                             optime=123456, initialize="7000000000000000001", sync=None, failover=None,
                             paused=False))

    def primary_ok() -> bool:
        result = get(port, "/primary")
        return result is not None and result[0] == 200

    wait_until("GET /primary to answer 200", primary_ok, sup.pump)

    replica = get(port, "/replica")
    assert replica is not None and replica[0] == 503
    patroni = get(port, "/patroni")
    assert patroni is not None and patroni[0] == 200
    status = json.loads(patroni[1])
    assert status["state"] == "running" and status["role"] == "primary"
    assert status["xlog"] == {"location": 123456} and status["timeline"] == 2
    assert status["database_system_identifier"] == "7000000000000000001"
    assert status["tags"] == {"zone": "a"}
    assert status["patroni"] == {"version": PATRONI_COMPAT_VERSION, "scope": "demo", "name": "node1"}
    assert get(port, "/primary", "HEAD") == (200, b"")
    assert get(port, "/replica", "OPTIONS") == (503, b"")
    unsupported = get(port, "/reinitialize", "DELETE")
    assert unsupported is not None and unsupported[0] == 501 and json.loads(unsupported[1])["error"]

    # An operator request travels request thread -> reader thread -> (supervisor pipe) -> election, and back.
    answer: list[tuple[int, bytes] | None] = []
    caller = threading.Thread(target=lambda: answer.append(get(port, "/restart", "POST", b'{"role": "primary"}')))
    caller.start()
    relayed = wait_until("the restart request on the supervisor pipe", lambda: next(
        (m for m in sup.received if isinstance(m, ipc.AdminRequest)), None), sup.pump)
    assert relayed.action == "restart" and relayed.params == {"role": "primary"}
    assert relayed.deadline > time.monotonic() + 60  # waits as long as a restart may take
    sup.send(ipc.AdminReply(relayed.id + 1000, 200, "not for this caller"))  # unknown ids are dropped
    sup.send(ipc.AdminReply(relayed.id, 200, "restarted successfully"))
    wait_until("the caller's answer", lambda: answer, sup.pump)
    caller.join(5)
    assert answer == [(200, b"restarted successfully")]

    # One process, titled with the role; gunicorn forked nothing.
    assert cmdline(pid) == "hasup: api demo/node1"
    assert children(pid) == []

    # Heartbeat: a Ping is answered by the reader thread.
    sup.send(ipc.Ping(42))
    wait_until("Pong(42)", lambda: ipc.Pong(42) in sup.received, sup.pump)
    # gunicorn's own log lines reach the supervisor through the pipe, intact.
    assert any(isinstance(m, ipc.LogRecord) and "gunicorn" in m.message.lower() for m in sup.received)

    # A newer snapshot replaces the old one: now a replica.
    now = time.monotonic()
    sup.send(ipc.PgState(state="running", role="replica", data_dir_empty=False, probe_ok=True, probe_at=now,
                         timeline=2, received_location=123456, replayed_location=123456,
                         replication_state="streaming"))
    sup.send(ipc.ClusterView(read_at=now, read_at_wall=time.time(), leader="node2", holds_lock=False,
                             lock_valid_until=0.0, members={}, config={"ttl": 30}, history=(),
                             optime=123456, initialize="7000000000000000001", sync=None, failover=None,
                             paused=False))

    def replica_ok() -> bool:
        result = get(port, "/replica")
        return result is not None and result[0] == 200

    def lock_gone() -> bool:
        result = get(port, "/primary")
        return result is not None and result[0] == 503

    # The two messages may be rendered one at a time: until the view that drops the lock is, /primary still
    # answers 200 by the lock alone, as Patroni's does.
    wait_until("GET /replica to answer 200", replica_ok, sup.pump)
    wait_until("GET /primary to answer 503 once the view without the lock is in", lock_gone, sup.pump)
    assert replica_ok()

    # The supervisor goes away: the api process follows within seconds.
    sup.channel.close()
    start = time.monotonic()

    wait_until("the api process to exit", api_process.reaped, timeout=10)
    assert time.monotonic() - start < 10


def test_sighup_and_sigusr2_leave_the_api_serving(api_process: ApiProcess) -> None:
    """gunicorn's worker resets both to their default action (death); the arbiter used to take them.

    SIGUSR2 is the supervisor's death signal to its workers, a wake-up only."""
    pid, port, sup = api_process.pid, api_process.port, api_process.sup
    wait_until("the api to listen", lambda: get(port, "/health"), sup.pump)
    for sig in (signal.SIGHUP, signal.SIGUSR2, signal.SIGHUP, signal.SIGUSR2):
        os.kill(pid, sig)
        assert get(port, "/health") is not None  # answered after the signal: the process took it
    assert not api_process.reaped()


def test_sigterm_stops_the_api_promptly(api_process: ApiProcess) -> None:
    pid, port, sup = api_process.pid, api_process.port, api_process.sup
    wait_until("the api to listen", lambda: get(port, "/health"), sup.pump)
    os.kill(pid, signal.SIGTERM)
    start = time.monotonic()

    def exited() -> bool:
        sup.pump()
        return api_process.reaped()

    wait_until("the api process to exit on SIGTERM", exited, timeout=10)
    assert api_process.exit_code == 0
    assert time.monotonic() - start < 7  # graceful_timeout is 5 s


def test_orphaned_api_exits_even_while_its_pipe_stays_open() -> None:
    """The supervisor dies but someone still holds its pipe end: the re-parent check must catch it."""
    from hasup.workers import api

    port = free_port()
    sup_end, worker_end = ipc.channel_pair()
    rfd, wfd = os.pipe()
    middle = os.fork()
    if middle == 0:  # a stand-in supervisor: forks the api, reports its pid, waits to be killed
        code = 1
        try:
            os.close(rfd)
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(wfd)
                    api.run(WorkerContext("api", make_config(port), ipc.Channel(worker_end, "supervisor"),
                                          supervisor_pid=me))
                finally:
                    os._exit(0)
            os.write(wfd, str(pid).encode())
            os.close(wfd)
            signal.pause()
        finally:
            os._exit(code)
    os.close(wfd)
    worker_end.close()
    sup = Supervisor(sup_end)  # kept open: no EOF will tell the api anything
    api_pid = 0
    try:
        with os.fdopen(rfd, "rb") as f:
            api_pid = int(f.read())
        wait_until("the api to listen", lambda: get(port, "/health"), sup.pump)
        os.kill(middle, signal.SIGKILL)
        os.waitpid(middle, 0)
        middle = 0
        wait_until("the orphaned api to exit", lambda: not alive(api_pid), sup.pump, timeout=10)
    finally:
        for p in (api_pid, middle):
            if p and alive(p):
                os.kill(p, signal.SIGKILL)
        if middle:
            os.waitpid(middle, 0)
        sup.channel.close()


def test_slow_admin_calls_never_hold_up_health_checks() -> None:
    """With every admin slot stuck on an etcd that never answers, /primary still answers at once."""
    from dataclasses import replace
    from threading import Thread

    from hasup.workers import api

    blackhole = socket.socket()  # accepts connections (kernel backlog) and never answers
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)
    port = free_port()
    config = replace(make_config(port), etcd=EtcdConfig(hosts=(("127.0.0.1", blackhole.getsockname()[1]),)))
    sup_end, worker_end = ipc.channel_pair()
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sup_end.close()
            api.run(WorkerContext("api", config, ipc.Channel(worker_end, "supervisor"), supervisor_pid=me))
            code = 0
        finally:
            os._exit(code)
    worker_end.close()
    proc = ApiProcess(pid, port, Supervisor(sup_end))
    try:
        now = time.monotonic()
        proc.sup.send(ipc.PgState(state="running", role="primary", data_dir_empty=False, probe_ok=True,
                                  probe_at=now, timeline=2, wal_position=1))
        proc.sup.send(ipc.ClusterView(read_at=now, read_at_wall=time.time(), leader="node1", holds_lock=True,
                                      lock_valid_until=now + 120, members={},
                                      config={"ttl": 30, "loop_wait": 2, "retry_timeout": 3}, history=(),
                                      optime=1, initialize="1", sync=None, failover=None, paused=False))
        wait_until("GET /primary to answer 200", lambda: (get(port, "/primary") or (0,))[0] == 200, proc.sup.pump)

        answers: list[int] = []

        def slow_call() -> None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
                conn.request("GET", "/cluster")
                answers.append(conn.getresponse().status)
                conn.close()
            except OSError:
                answers.append(0)

        callers = [Thread(target=slow_call) for _ in range(api.THREADS + 2)]
        for t in callers:
            t.start()
        time.sleep(0.3)  # give them a head start; what follows holds whether or not they have arrived
        for _ in range(5):
            started = time.monotonic()
            answer = get(port, "/primary")
            assert answer is not None and answer[0] == 200
            assert time.monotonic() - started < 0.5
            proc.sup.pump()
        for t in callers:
            t.join(20)
        # The etcd reads gave up after retry_timeout and fell back to the snapshot (200);
        # the calls beyond the admin slots were turned away at once (503).
        assert sorted(set(answers)) == [200, 503], answers
        assert answers.count(200) <= api.THREADS - api.HEALTH_RESERVE
    finally:
        blackhole.close()
        if not proc.reaped():
            for child in children(pid):
                os.kill(child, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if not proc.sup.channel.closed:
            proc.sup.channel.close()
