"""Faults for the chaos suite, on a TestCluster placed on network-namespace hosts.

Each nemesis injects a fault aimed at the current leader (or, for the
replica and etcd faults, beside it) and returns a Fault that knows how long
to keep it in place (`hold`) and how to take it away (`heal`).  Partitions
drop packets with nftables inside the cut-off host's namespace: the host
keeps its address and its local clients (the workload's writer for it).
A fault that kills a node leaves it down; the runner restarts every node
that is down after healing, as systemd's Restart= would.

etcd is either the single v2 member on host "etcd" or the 3-member v3 TLS
cluster of tests/harness/etcd3.py on hosts "etcd1".."etcd3".  The etcd
nemeses that predate the cluster (etcd-down, etcd-down-failsafe,
partition-leader-etcd, partition-replica-etcd) take etcd as a whole: on the
cluster they freeze or cut every member.  The member nemeses
(ETCD_MEMBER_KINDS) need the cluster: one member killed, one member cut from
the leader's node, a raft leader change.  Losing one member of three must
cost hasup nothing, so each holds 1.5 x ttl and fails its reaction if the
hasup leader changed meanwhile (leader key re-created, another timeline, a
demoted primary).  No nemesis SIGSTOPs one etcd member alone: etcd before
3.4.28 revokes every lease when a frozen raft leader resumes (docs/etcd.md).
"""

from __future__ import annotations

import json
import random
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.harness import Etcd, Node, TestCluster, alive, descendants, kill_pids, wait_for
from tests.harness.emulators import Emulators
from tests.harness.etcd3 import Etcd3Cluster, EtcdctlError
from tests.harness.netns import Network, in_netns

WORKERS = ("election", "postgres", "watchdog", "api")
ETCD_MEMBER_KINDS = ("etcd-member-down", "partition-leader-etcd-member", "etcd-leader-change")  # etcd3 only
KINDS = ("partition-leader", "partition-leader-etcd", "partition-replica-etcd", "sigkill-leader-tree",
         "sigstop-leader-hasup", "sigstop-leader-postgres", "etcd-down", "etcd-down-failsafe", "switchover",
         *(f"sigstop-{role}-worker" for role in WORKERS), *ETCD_MEMBER_KINDS, "sigstop-leader-election-no-device")


# What applies to a cluster with Patroni nodes: faults of the network, of etcd, of the whole node and of the
# operator.  The others freeze hasup's own processes, or wait for hasup to fence a frozen PostgreSQL.
MIXED_KINDS = ("partition-leader", "partition-leader-etcd", "partition-replica-etcd", "sigkill-leader-tree",
               "etcd-down", "etcd-down-failsafe", "switchover", *ETCD_MEMBER_KINDS)


def kinds_for(etcd3: bool) -> tuple[str, ...]:
    """The nemeses that apply to a run on the 3-member v3 cluster (all) or on the single v2 etcd."""
    return KINDS if etcd3 else tuple(k for k in KINDS if k not in ETCD_MEMBER_KINDS)


@dataclass
class Fault:
    """An injected fault: `hold` returns once it has been in place long enough, `heal` removes it."""

    name: str
    target: str
    hold: Callable[[], None]
    heal: Callable[[], None]
    notes: list[str] = field(default_factory=list)  # what the cluster did about it, for the report


def nothing() -> None:
    pass


def hold_for(seconds: float) -> Callable[[], None]:
    """A fault's duration: this is the experiment's parameter, not a wait for the system to react."""
    def hold() -> None:
        time.sleep(seconds)
    return hold


@dataclass
class Nemeses:
    tc: TestCluster
    net: Network
    rng: random.Random
    synchronous: bool
    emulators: Emulators  # a frozen supervisor can only be stopped by its watchdog: every node has one
    stopped: set[int] = field(default_factory=set)  # SIGSTOPped pids, resumed on heal (and at teardown)

    @property
    def ttl(self) -> float:
        return float(self.tc.dcs["ttl"])

    def all(self) -> dict[str, Callable[[Node], Fault]]:
        faults: dict[str, Callable[[Node], Fault]] = {
            "partition-leader": self.partition_leader,
            "partition-leader-etcd": self.partition_leader_from_etcd,
            "partition-replica-etcd": self.partition_replica_from_etcd,
            "sigkill-leader-tree": self.kill_leader,
            "sigstop-leader-hasup": self.stop_leader_hasup,
            "sigstop-leader-postgres": self.stop_leader_postgres,
            "etcd-down": self.stop_etcd,
            "etcd-down-failsafe": self.stop_etcd_with_failsafe,
            "switchover": self.switchover,
        }
        faults.update({f"sigstop-{role}-worker": self._stop_worker(role) for role in WORKERS})
        faults.update({
            "etcd-member-down": self.kill_etcd_member,
            "partition-leader-etcd-member": self.partition_leader_from_etcd_member,
            "etcd-leader-change": self.change_etcd_leader,
            "sigstop-leader-election-no-device": self.stop_leader_election_without_device,
        })
        assert tuple(faults) == KINDS
        return faults

    # -- etcd as hosts and processes ----------------------------------------------------

    @property
    def etcd3(self) -> Etcd3Cluster | None:
        return self.tc.etcd if isinstance(self.tc.etcd, Etcd3Cluster) else None

    def etcd_hosts(self) -> list[str]:
        """The network hosts etcd runs on: every member of the v3 cluster, or the single v2 etcd."""
        return list(self.etcd3.names) if self.etcd3 is not None else ["etcd"]

    def _members(self) -> Etcd3Cluster:
        etcd = self.etcd3
        assert etcd is not None, "this nemesis needs the 3-member etcd3 cluster (Plan(etcd3=True))"
        return etcd

    # -- partitions -------------------------------------------------------------------

    def _new_leader_or(self, old: Node, seconds: float) -> Callable[[], None]:
        def hold() -> None:
            self.tc.wait_leader(seconds, exclude=old.name)
        return hold

    def partition_leader(self, leader: Node) -> Fault:
        self.net.cut(leader.name, [h for h in self.net.hosts if h != leader.name])
        return Fault("partition-leader", leader.name, self._new_leader_or(leader, 60),
                     lambda: self.net.heal(leader.name))

    def partition_leader_from_etcd(self, leader: Node) -> Fault:
        """The leader still reaches its replicas (and they it), but not etcd: it must step down by itself."""
        self.net.cut(leader.name, self.etcd_hosts())
        return Fault("partition-leader-etcd", leader.name, self._new_leader_or(leader, 60),
                     lambda: self.net.heal(leader.name))

    def partition_replica_from_etcd(self, leader: Node) -> Fault:
        replica = self.rng.choice([n for n in self.tc.nodes if n is not leader])
        self.net.cut(replica.name, self.etcd_hosts())
        return Fault("partition-replica-etcd", replica.name, hold_for(1.5 * self.ttl),
                     lambda: self.net.heal(replica.name))

    # -- processes --------------------------------------------------------------------

    def _freeze(self, pids: list[int]) -> Callable[[], None]:
        self.stopped.update(pids)
        kill_pids(pids, signal.SIGSTOP)

        def thaw() -> None:
            kill_pids(pids, signal.SIGCONT)  # whatever is left of them (SIGKILL works on stopped processes)
            self.stopped.difference_update(pids)
        return thaw

    def kill_leader(self, leader: Node) -> Fault:
        leader.kill_tree()
        return Fault("sigkill-leader-tree", leader.name, self._new_leader_or(leader, 60), nothing)

    def stop_leader_postgres(self, leader: Node) -> Fault:
        pm = leader.postmaster_pid()
        assert pm, f"{leader.name} has no postmaster"
        thaw = self._freeze([pm, *descendants(pm)])  # hasup should fence it after postgresql.health_deadline

        def hold() -> None:
            wait_for(lambda: not alive(pm), 30, f"{leader.name}'s frozen PostgreSQL to be fenced")
        return Fault("sigstop-leader-postgres", leader.name, hold, thaw)

    def stop_leader_hasup(self, leader: Node) -> Fault:
        """Freeze the supervisor and every worker, not PostgreSQL: it keeps serving, so only the watchdog
        can stop it before the leader key expires and a replica is promoted."""
        pm = leader.postmaster_pid()
        postgres = {pm, *descendants(pm)} if pm else set()
        thaw = self._freeze(sorted(leader.processes() - postgres))
        return Fault("sigstop-leader-hasup", leader.name, hold_for(1.5 * self.ttl), thaw)

    def stop_leader_election_without_device(self, leader: Node) -> Fault:
        """Freeze the supervisor and the election worker with the device taken away (its emulator muted): the
        watchdog worker and PostgreSQL keep running, and only the software fence can stop the old primary
        before the leader key expires (docs/design.md §4).  The checker's dual-primary verdict applies."""
        pm = leader.postmaster_pid()
        election = leader.worker_pid("election")
        assert pm and leader.pid and election, f"{leader.name} has no postmaster or election worker"
        muted_before = self._muted_firings(leader)
        self.emulators.mute(leader)
        thaw = self._freeze([leader.pid, election])

        def hold() -> None:
            # Fenced well before the key can expire: the fence falls due ttl - safety_margin - 1.5 s after the
            # last renewal.  The fault then lasts its full 1.5 x ttl, a replica promoted meanwhile.
            started = time.monotonic()
            wait_for(lambda: not alive(pm), self.ttl, f"{leader.name}'s PostgreSQL to be fenced")
            self.tc.wait_leader(max(1.0, started + 1.5 * self.ttl - time.monotonic()), exclude=leader.name)
            time.sleep(max(0.0, started + 1.5 * self.ttl - time.monotonic()))
            if self._muted_firings(leader) > muted_before:
                raise AssertionError("the muted device's timer ran out: the software fence came too late")

        def heal() -> None:
            thaw()
            self.emulators.mute(leader, False)
        return Fault("sigstop-leader-election-no-device", leader.name, hold, heal)

    def _muted_firings(self, node: Node) -> int:
        return sum(e["event"] == "fired_muted" for e in self.emulators.events(node))

    def _stop_worker(self, role: str) -> Callable[[Node], Fault]:
        def inject(leader: Node) -> Fault:
            pid = leader.worker_pid(role)
            assert pid, f"{leader.name} has no {role} worker"
            thaw = self._freeze([pid])

            def hold() -> None:
                # The supervisor replaces a worker that stops answering; the fault ends then or at 1.5 x ttl.
                deadline = time.monotonic() + 1.5 * self.ttl
                while alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
            return Fault(f"sigstop-{role}-worker", leader.name, hold, thaw)
        return inject

    # -- etcd -------------------------------------------------------------------------

    def stop_etcd(self, leader: Node) -> Fault:
        """Every etcd member frozen at once: etcd is down as a whole (clients time out, not refused).

        All members of the cluster stop within milliseconds of each other, so no raft election runs and
        on resuming the leases simply expire, as v2 keys do: not the lone-frozen-leader bug of docs/etcd.md.
        """
        etcd = self.etcd3
        if etcd is None:
            single = self.tc.etcd
            assert isinstance(single, Etcd) and single.proc is not None, "etcd is not running"
            thaw = self._freeze([single.proc.pid])
            return Fault("etcd-down", leader.name, hold_for(1.5 * self.ttl), thaw)
        members = [i for i in range(etcd.size) if etcd.pid(i) is not None]
        pids = [p for p in (etcd.pid(i) for i in members) if p is not None]
        self.stopped.update(pids)

        def thaw_members() -> None:
            for i in members:
                etcd.thaw(i)
            self.stopped.difference_update(pids)
        try:
            for i in members:
                etcd.freeze(i)  # waits until every thread of the member has stopped
        except (AssertionError, RuntimeError) as exc:
            thaw_members()  # not injected: leave no member frozen behind
            raise AssertionError(f"could not freeze every etcd member: {exc}") from exc
        return Fault("etcd-down", leader.name, hold_for(1.5 * self.ttl), thaw_members)

    def stop_etcd_with_failsafe(self, leader: Node) -> Fault:
        """failsafe_mode on for this fault only: the leader should keep serving while every member answers."""
        self._patch_config(leader, {"failsafe_mode": True})
        wait_for(lambda: self.tc.etcd.value(self.tc.key("failsafe")), 30, "the leader to write the failsafe key")
        # A member that has not read the new configuration yet would rightly refuse the leader's ping:
        # wait until each has written its member key twice since (the first write may end a cycle that
        # read the configuration before the change).
        since = (self.tc.etcd.key(self.tc.key("config")) or {}).get("modifiedIndex", 0)
        for node in self.tc.nodes:
            for _ in range(2):
                since = wait_for(lambda n=node, i=since: self._member_written_after(n, i), 30,  # type: ignore[misc]
                                 f"{node.name} to run a cycle with failsafe_mode on")
        fault = self.stop_etcd(leader)
        thaw = fault.heal

        def heal() -> None:
            thaw()
            now_leader = self.tc.wait_leader(60)
            self._patch_config(now_leader, {"failsafe_mode": False})
        return Fault("etcd-down-failsafe", leader.name, fault.hold, heal)

    def _member_written_after(self, node: Node, index: int) -> int | None:
        written = (self.tc.etcd.key(self.tc.key(f"members/{node.name}")) or {}).get("modifiedIndex", 0)
        return written if written > index else None

    def _patch_config(self, node: Node, patch: dict[str, object]) -> None:
        self._post(node, "/config", patch, method="PATCH")

    # -- etcd members (the 3-member cluster): hasup must ride them out ----------------------

    def _leader_mark(self) -> tuple[str, int] | None:
        """The leader key's value and creation index: a key that expired or was released and taken
        again (even by the same node) gets a new creation index, on v2 and v3 alike."""
        node = self.tc.etcd.key(self.tc.key("leader"))
        return (str(node.get("value")), int(node.get("createdIndex", 0))) if node else None

    @staticmethod
    def _timeline(node: Node) -> int:
        """The timeline /patroni reports, waiting for one: a REST API worker that was just replaced
        (sigstop-api-worker) answers "unknown" without a timeline until its first snapshot arrives."""
        return int(wait_for(lambda: node.status().get("timeline"), 30, f"a timeline in {node.name}'s /patroni"))

    def _same_leader(self, leader: Node, seconds: float) -> Callable[[], None]:
        """Hold for `seconds`, then fail (the fault's reaction) if the hasup leader changed meanwhile: the
        leader key re-created or naming another node, another timeline, or a primary no longer writable."""
        mark = wait_for(self._leader_mark, 10, "the leader key")
        timeline = self._timeline(leader)

        def hold() -> None:
            deadline = time.monotonic() + seconds
            changes: list[str] = []
            while time.monotonic() < deadline:
                time.sleep(1.0)
                try:
                    now = self._leader_mark()
                except Exception:  # our own etcdctl could not read: not the cluster's failure
                    continue
                if now != mark and (not changes or changes[-1] != f"leader key {now}"):
                    changes.append(f"leader key {now}")
            now = wait_for(lambda: (self._leader_mark(),), 10, "the leader key")[0]
            if now != mark and (not changes or changes[-1] != f"leader key {now}"):
                changes.append(f"leader key {now}")
            assert not changes, f"the hasup leader changed: was {mark}, then {', '.join(changes)}"
            try:
                in_recovery = leader.sql("SELECT pg_is_in_recovery()")[0][0]
            except Exception as exc:  # psycopg2's errors: the hold's verdict, not the runner's crash
                raise AssertionError(f"{leader.name}'s PostgreSQL does not answer: {exc}") from exc
            assert not in_recovery, f"{leader.name} is no longer a primary"
            now_timeline = self._timeline(leader)
            assert now_timeline == timeline, f"{leader.name} went from timeline {timeline} to {now_timeline}"
        return hold

    def kill_etcd_member(self, leader: Node) -> Fault:
        """SIGKILL one etcd member, drawn at random; it is started again on its data when healed."""
        etcd = self._members()
        victim = self.rng.choice([i for i in range(etcd.size) if etcd.pid(i) is not None])
        was_leader = self._raft_leader(etcd) == victim
        hold = self._same_leader(leader, 1.5 * self.ttl)
        etcd.kill(victim)
        return Fault("etcd-member-down", leader.name, hold, lambda: etcd.start_member(victim),
                     ["killed the etcd raft leader" if was_leader else "killed an etcd follower"])

    def partition_leader_from_etcd_member(self, leader: Node) -> Fault:
        """Cut the leader's node from the etcd raft leader member; the other two still answer it."""
        etcd = self._members()
        member = self._raft_leader(etcd)
        assert member is not None, "no etcd raft leader to cut"
        hold = self._same_leader(leader, 1.5 * self.ttl)
        self.net.cut(leader.name, [etcd.names[member]])
        return Fault("partition-leader-etcd-member", leader.name, hold, lambda: self.net.heal(leader.name),
                     ["cut from the etcd raft leader"])

    def change_etcd_leader(self, leader: Node) -> Fault:
        """`etcdctl move-leader` to another member, drawn at random: a raft leader change, nothing down."""
        etcd = self._members()
        old = self._raft_leader(etcd)
        assert old is not None, "no etcd raft leader to move"
        to = self.rng.choice([i for i in range(etcd.size) if i != old and etcd.pid(i) is not None])
        hold = self._same_leader(leader, 1.5 * self.ttl)
        try:
            etcd.move_leader(to)
        except EtcdctlError as exc:
            raise AssertionError(f"etcdctl move-leader failed: {exc}") from exc
        return Fault("etcd-leader-change", leader.name, hold, nothing)

    @staticmethod
    def _raft_leader(etcd: Etcd3Cluster) -> int | None:
        try:
            return etcd.leader_index()
        except AssertionError:
            return None

    # -- operator ---------------------------------------------------------------------

    def switchover(self, leader: Node) -> Fault:
        replicas = [n for n in self.tc.nodes if n is not leader]
        candidate = self.rng.choice(replicas)
        if self.synchronous:
            # Only the synchronous standby is a valid target in synchronous mode.
            sync = json.loads(self.tc.etcd.value(self.tc.key("sync")) or "{}").get("sync_standby")
            candidate = next((n for n in replicas if n.name == sync), candidate)
        status, text = self._request(leader, "/switchover", {"leader": leader.name, "candidate": candidate.name})

        def hold() -> None:
            # The cluster was whole: a refusal is a finding, recorded as the fault's unexpected reaction.
            assert status == 200, f"switchover to {candidate.name} refused: {status} {text}"
        return Fault("switchover", leader.name, hold, nothing)

    def _post(self, node: Node, path: str, body: dict[str, object], method: str = "POST") -> None:
        status, text = self._request(node, path, body, method)
        assert status == 200, (path, status, text)

    @staticmethod
    def _request(node: Node, path: str, body: dict[str, object], method: str = "POST") -> tuple[int, str]:
        data = json.dumps(body).encode()

        def send() -> tuple[int, str]:
            req = urllib.request.Request(f"http://{node.host}:{node.api_port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            try:
                with opener.open(req, timeout=60) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode(errors="replace")
            except OSError as exc:  # URLError included: nothing answered
                return 0, str(exc)
        return in_netns(node.netns, send) if node.netns else send()

    def resume_all(self) -> None:
        kill_pids(sorted(self.stopped), signal.SIGCONT)
        self.stopped.clear()
