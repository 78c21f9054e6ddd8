"""REST health-check benchmark: GET /primary on the leader with Debian's wrk.

Measured as Patroni is (the server closes each connection) and again with
keep-alive, idle and under a pgbench write load on the leader:

    python bench/rest.py [--duration 10] [--supervisor all] [--out bench/results]

Every supervisor installed in the venv (hasup, and Patroni when present) on a
cluster of its own; writes bench/results/rest-<supervisor>.json.  Needs `wrk`
(apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import record, supervisors  # noqa: E402
from tests.harness import PG_BIN, SUPERUSER_PASSWORD, Node, TestCluster, become_subreaper  # noqa: E402

# wrk reports latency percentiles with --latency; a Lua hook adds "Connection: close".
CLOSE_LUA = 'wrk.headers["Connection"] = "close"\n'
WRK = "wrk -t2 -c8"
PGBENCH = {"scale": 5, "clients": 4, "threads": 2}
DCS = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576,
       "postgresql": {"use_pg_rewind": True, "use_slots": False}}  # Patroni's defaults, as in bench/failover.py


def parse_wrk(out: str) -> dict[str, float]:
    def to_ms(value: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s)", value)
        assert m, value
        n = float(m.group(1))
        return {"us": n / 1000, "ms": n, "s": n * 1000}[m.group(2)]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    result: dict[str, float] = {"requests_per_s": float(rps.group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        if m:
            result[f"p{pct}_ms"] = round(to_ms(m.group(1)), 3)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    counts = [float(x) for x in sock.groups()] if sock else [0.0] * 4
    result["socket_errors"] = sum(counts)
    # A server that closes the connection after each answer (HTTP/1.0, as Patroni's) shows as read errors.
    for kind, n in zip(("connect", "read", "write", "timeout"), counts, strict=True):
        result[f"socket_errors_{kind}"] = n
    return result


def wrk(url: str, duration: int, close: bool) -> dict[str, float]:
    cmd = [*WRK.split(), f"-d{duration}s", "--latency", url]
    script = None
    if close:
        fd, script = tempfile.mkstemp(suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(CLOSE_LUA)
        cmd[1:1] = ["-s", script]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    finally:
        if script:
            os.unlink(script)
    return parse_wrk(out)


def under_load(leader: Node, seconds: int) -> subprocess.Popen[bytes]:
    """pgbench writing on the leader for `seconds`, started after its tables exist."""
    env = dict(os.environ, PGPASSWORD=SUPERUSER_PASSWORD)
    conn = ["-h", "127.0.0.1", "-p", str(leader.pg_port), "-U", "postgres", "postgres"]
    subprocess.run([os.path.join(PG_BIN, "pgbench"), "-i", "-q", "-s", str(PGBENCH["scale"]), *conn], env=env,
                   check=True, capture_output=True)
    return subprocess.Popen([os.path.join(PG_BIN, "pgbench"), "-c", str(PGBENCH["clients"]), "-j",
                             str(PGBENCH["threads"]), "-T", str(seconds), *conn], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def bench(kind: str, args: argparse.Namespace) -> None:
    conf = {"tool": WRK, "duration_s": args.duration, "url": "GET /primary on the leader", "nodes": 3,
            "dcs": DCS, "pgbench": PGBENCH}
    head = record.header("rest", "primary", supervisors.describe(kind), conf)
    with supervisors.running(kind), TestCluster(3, dcs=DCS) as c:
        leader = c.start_all(180)
        url = f"http://127.0.0.1:{leader.api_port}/primary"
        runs: dict[str, dict[str, float]] = {}
        for close in (True, False):
            runs[f"idle, {'connection close' if close else 'keep-alive'}"] = wrk(url, args.duration, close)
        load = under_load(leader, 2 * args.duration + 20)
        try:
            for close in (True, False):
                runs[f"pgbench load, {'connection close' if close else 'keep-alive'}"] = wrk(url, args.duration, close)
        finally:
            load.terminate()
            load.wait(30)
    print(json.dumps(runs, indent=1), flush=True)
    record.save(f"rest-{kind}.json", head, {"runs": runs}, args.out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--supervisor", default="all", help="all (every installed one), hasup, patroni, or both by comma")
    ap.add_argument("--out", default=record.RESULTS)
    args = ap.parse_args()
    become_subreaper()
    for kind in supervisors.chosen(args.supervisor):
        bench(kind, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
