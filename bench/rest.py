"""REST health-check benchmark: GET /primary on the leader with Debian's wrk.

Measured as Patroni is (the server closes each connection) and again with
keep-alive, idle and under a pgbench write load on the leader:

    python bench/rest.py [--duration 10] [--out bench/results]

Writes bench/results/rest.json.  Needs `wrk` (apt-get install wrk).
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

from tests.harness import PG_BIN, SUPERUSER_PASSWORD, TestCluster, become_subreaper  # noqa: E402

# wrk reports latency percentiles with --latency; a Lua hook adds "Connection: close".
CLOSE_LUA = 'wrk.headers["Connection"] = "close"\n'


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
    result["socket_errors"] = float(sum(int(x) for x in sock.groups())) if sock else 0.0
    return result


def wrk(url: str, duration: int, close: bool) -> dict[str, float]:
    cmd = ["wrk", "-t2", "-c8", f"-d{duration}s", "--latency", url]
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    become_subreaper()
    results: dict[str, object] = {"tool": "wrk -t2 -c8", "duration_s": args.duration, "cpus": os.cpu_count()}
    with TestCluster(3) as c:
        for node in c.nodes:
            node.start()
        leader = c.wait_leader(180)
        c.wait_streaming(leader, [n for n in c.nodes if n is not leader], 180)
        url = f"http://127.0.0.1:{leader.api_port}/primary"
        runs: dict[str, dict[str, float]] = {}
        for close in (True, False):
            runs[f"idle, {'connection close' if close else 'keep-alive'}"] = wrk(url, args.duration, close)
        env = dict(os.environ, PGPASSWORD=SUPERUSER_PASSWORD)
        conn = ["-h", "127.0.0.1", "-p", str(leader.pg_port), "-U", "postgres", "postgres"]
        subprocess.run([os.path.join(PG_BIN, "pgbench"), "-i", "-q", "-s", "5", *conn], env=env, check=True,
                       capture_output=True)
        load = subprocess.Popen([os.path.join(PG_BIN, "pgbench"), "-c", "4", "-j", "2", "-T",
                                 str(2 * args.duration + 20), *conn], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            for close in (True, False):
                runs[f"pgbench load, {'connection close' if close else 'keep-alive'}"] = wrk(url, args.duration, close)
        finally:
            load.terminate()
            load.wait(30)
        results["runs"] = runs
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "rest.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
