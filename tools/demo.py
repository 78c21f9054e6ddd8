"""`make demo`: etcd and three hasup nodes on loopback, the cluster table, Ctrl-C to stop.

Runtime files live under ./demo (a link to a world-traversable directory in
/tmp, because as root the nodes run as an unprivileged user that cannot
enter /root); they stay there after Ctrl-C until the next demo.  Set
DEMO_EXIT=1 to stop right after printing the table (and remove the files).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.harness import TestCluster, become_subreaper, hasup_bin, wait_for  # noqa: E402


def main() -> int:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    link = os.path.join(here, "demo")
    base = tempfile.mkdtemp(prefix="hasup-demo-")
    if os.path.islink(link):  # the previous demo's files, kept for a look at its logs until now
        shutil.rmtree(os.path.realpath(link), ignore_errors=True)
        os.unlink(link)
    if not os.path.exists(link):
        os.symlink(base, link)
    become_subreaper()
    if not os.environ.get("DEMO_EXIT"):
        os.environ["HASUP_KEEP_TEST_DIRS"] = "1"  # logs stay under ./demo after Ctrl-C
    c = TestCluster(3, scope="demo", base=base)
    try:
        c.etcd.start()
        print(f"etcd on {c.etcd.url}; starting node1..node3 (logs in ./demo/node*/hasup.log)", flush=True)
        for node in c.nodes:
            node.start()
        leader = c.wait_leader(180)
        replicas = [n for n in c.nodes if n is not leader]
        c.wait_streaming(leader, replicas, 180)
        wait_for(lambda: all(c.member(r.name).get("replication_state") == "streaming" for r in replicas), 30,
                 "replicas to publish their state")
        ctl = os.path.join(os.path.dirname(hasup_bin()), "hasupctl")
        subprocess.run([ctl, "-c", c.nodes[0].config_path, "list"], check=False)
        for node in c.nodes:
            print(f"{node.name}: REST http://127.0.0.1:{node.api_port}/patroni  "
                  f"PostgreSQL 127.0.0.1:{node.pg_port}")
        if os.environ.get("DEMO_EXIT"):
            return 0
        print("Ctrl-C stops the demo.", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.is_set():
            stop.wait(1)
        return 0
    finally:
        print("stopping...", flush=True)
        c.destroy()


if __name__ == "__main__":
    sys.exit(main())
