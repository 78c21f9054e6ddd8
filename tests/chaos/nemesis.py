"""Faults for the chaos suite, on a TestCluster placed on network-namespace hosts.

Each nemesis is an inject/heal pair acting on the leader at injection time.
Partitions take the leader's port on the bridge down inside the bridge's
namespace: the leader's host keeps its address and its local clients (the
workload's writer for it), but reaches nobody and nobody reaches it.
"""

from __future__ import annotations

import json
import random
import signal
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.harness import Node, TestCluster, descendants, kill_pids
from tests.harness.netns import Network, in_netns, ip


@dataclass
class Fault:
    """The state an injected fault needs to heal itself."""

    name: str
    target: str
    heal: Callable[[], None]


@dataclass
class Nemeses:
    tc: TestCluster
    net: Network
    rng: random.Random
    synchronous: bool = True
    stopped: set[int] = field(default_factory=set)  # SIGSTOPped pids, resumed on heal (and at teardown)

    def _port(self, node: Node) -> str:
        return f"p{list(self.net.hosts).index(node.name)}"

    def _link(self, node: Node, state: str) -> None:
        ip("-n", self.net.bridge_ns, "link", "set", self._port(node), state)

    def partition_leader(self, leader: Node) -> Fault:
        self._link(leader, "down")
        return Fault("partition-leader", leader.name, lambda: self._link(leader, "up"))

    def kill_leader(self, leader: Node) -> Fault:
        leader.kill_tree()
        return Fault("sigkill-leader-tree", leader.name, leader.start)

    def stop_leader_postgres(self, leader: Node) -> Fault:
        pm = leader.postmaster_pid()
        assert pm, f"{leader.name} has no postmaster"
        pids = [pm, *descendants(pm)]
        self.stopped.update(pids)
        kill_pids(pids, signal.SIGSTOP)  # hasup should fence it after postgresql.health_deadline

        def heal() -> None:
            kill_pids(pids, signal.SIGCONT)  # whatever the fence left (SIGKILL works on stopped processes)
            self.stopped.difference_update(pids)
        return Fault("sigstop-leader-postgres", leader.name, heal)

    def switchover(self, leader: Node) -> Fault:
        replicas = [n for n in self.tc.nodes if n is not leader]
        candidate = self.rng.choice(replicas)
        if self.synchronous:
            # Only the synchronous standby is a valid target in synchronous mode.
            sync = json.loads(self.tc.etcd.value(self.tc.key("sync")) or "{}").get("sync_standby")
            candidate = next((n for n in replicas if n.name == sync), candidate)
        body = json.dumps({"leader": leader.name, "candidate": candidate.name}).encode()

        def post() -> tuple[int, str]:
            req = urllib.request.Request(f"http://{leader.host}:{leader.api_port}/switchover", data=body,
                                         method="POST", headers={"Content-Type": "application/json"})
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(req, timeout=60) as resp:
                return resp.status, resp.read().decode()
        status, text = in_netns(leader.netns, post) if leader.netns else post()
        assert status == 200, (status, text)
        return Fault("switchover", leader.name, lambda: None)

    def all(self) -> dict[str, Callable[[Node], Fault]]:
        return {"partition-leader": self.partition_leader, "sigkill-leader-tree": self.kill_leader,
                "sigstop-leader-postgres": self.stop_leader_postgres, "switchover": self.switchover}

    def resume_all(self) -> None:
        kill_pids(sorted(self.stopped), signal.SIGCONT)
        self.stopped.clear()
