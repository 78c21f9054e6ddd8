"""The production-like etcd of the harness: 3 members, v3 only, client-certificate TLS (tests/harness/etcd3.py)."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.harness import TestCluster, alive, wait_for
from tests.harness.etcd3 import Etcd3Cluster, EtcdctlError

pytestmark = pytest.mark.skipif(not shutil.which("etcdctl"), reason="etcdctl missing (run `make system-deps`)")


@pytest.fixture(scope="module")
def etcd() -> Iterator[Etcd3Cluster]:
    base = tempfile.mkdtemp(prefix="hasup-etcd3-test-")
    cluster = Etcd3Cluster(base)
    cluster.start()
    yield cluster
    cluster.stop()
    shutil.rmtree(base, ignore_errors=True)


def https_get(url: str, context: ssl.SSLContext) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(url, timeout=5) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_three_tls_members_answer_on_https(etcd):
    assert len(etcd.endpoints) == 3 and all(e.startswith("https://127.0.0.1:") for e in etcd.endpoints)
    assert all(pid and alive(pid) for pid in etcd.member_pids)
    members = json.loads(etcd.etcdctl("member", "list"))["members"]
    assert sorted(m["name"] for m in members) == sorted(etcd.names)
    assert etcd.dcs_section() == {"etcd3": {"hosts": etcd.hosts, "protocol": "https", "cacert": etcd.pki.ca,
                                            "cert": etcd.pki.client_cert, "key": etcd.pki.client_key}}


def test_put_get_delete(etcd):
    rev = etcd.put("/t/put/a", "one")
    assert etcd.put("/t/put/a", "-two \n") == rev + 1  # values that look like flags, with blanks, survive
    etcd.put("/t/put/b", "bee")
    node = etcd.key("/t/put/a")
    assert node is not None and node["value"] == "-two \n"
    assert node["modifiedIndex"] == node["mod_revision"] == rev + 1 and node["create_revision"] == rev
    assert node["lease"] == 0 and "ttl" not in node
    assert etcd.keys("/t/put/") == {"/t/put/a": "-two \n", "/t/put/b": "bee"}
    assert etcd.delete("/t/put/a") == 1 and etcd.delete("/t/put/a") == 0
    assert etcd.value("/t/put/a") is None and etcd.key("/t/put/a") is None
    assert etcd.revision() >= rev + 3


def test_v2_api_is_off(etcd):
    context = ssl.create_default_context(cafile=etcd.pki.ca)
    context.load_cert_chain(etcd.pki.client_cert, etcd.pki.client_key)
    assert https_get(etcd.endpoints[0] + "/version", context) == 200  # the certificate is good ...
    assert https_get(etcd.endpoints[0] + "/v2/keys/", context) != 200  # ... and v2 does not answer
    assert https_get(etcd.endpoints[0] + "/v2/keys/t?recursive=true", context) != 200


def refusal(url: str, context: ssl.SSLContext) -> str:
    """Why a TLS request is refused (fails the test when it is answered)."""
    try:
        code = https_get(url, context)
    except urllib.error.URLError as exc:
        return str(exc.reason)
    except (ssl.SSLError, ConnectionError) as exc:
        return str(exc)
    raise AssertionError(f"{url} answered {code}")


def test_clients_without_a_good_certificate_are_refused(etcd):
    url = etcd.endpoints[0] + "/version"
    no_cert = ssl.create_default_context(cafile=etcd.pki.ca)
    assert "CERTIFICATE" in refusal(url, no_cert).upper()
    wrong_cert = ssl.create_default_context(cafile=etcd.pki.ca)
    wrong_cert.load_cert_chain(etcd.pki.wrong_client_cert, etcd.pki.wrong_client_key)
    assert "CERTIFICATE" in refusal(url, wrong_cert).upper()
    wrong_ca = ssl.create_default_context(cafile=etcd.pki.wrong_ca)  # etcd's certificate is not signed by it
    wrong_ca.load_cert_chain(etcd.pki.client_cert, etcd.pki.client_key)
    assert "CERTIFICATE_VERIFY_FAILED" in refusal(url, wrong_ca)

    # etcdctl: the good certificate is answered within these timeouts, the others are not.
    etcd.etcdctl("get", "/x", command_timeout=1, dial_timeout=1)
    with pytest.raises(EtcdctlError):
        etcd.etcdctl("get", "/x", client_cert=False, command_timeout=1, dial_timeout=1)
    with pytest.raises(EtcdctlError):
        etcd.etcdctl("get", "/x", cert=etcd.pki.wrong_client_cert, key=etcd.pki.wrong_client_key,
                     command_timeout=1, dial_timeout=1)
    with pytest.raises(EtcdctlError):
        etcd.etcdctl("get", "/x", cacert=etcd.pki.wrong_ca, command_timeout=1, dial_timeout=1)


def test_freeze_and_thaw_the_leader(etcd):
    leader = etcd.leader_index()
    pid = etcd.member_pids[leader]
    etcd.freeze(leader)
    try:
        assert etcd.running() == [i for i in range(3) if i != leader]
        new = etcd.leader_index(timeout=15)  # the other two elect one of them
        assert new != leader
        etcd.put("/t/frozen", "yes")  # a quorum is left
    finally:
        etcd.thaw(leader)
    assert etcd.member_pids[leader] == pid
    etcd.wait_healthy([leader], 15)
    assert etcd.value("/t/frozen") == "yes"


def test_kill_and_restart_members(etcd):
    victim = (etcd.leader_index() + 1) % 3
    old = etcd.member_pids[victim]
    etcd.kill(victim)
    assert etcd.member_pids[victim] is None and not alive(old)
    etcd.put("/t/killed", "while-down")
    etcd.start_member(victim)
    assert etcd.member_pids[victim] not in (None, old)
    # A serializable read answers from the member's own store: it caught up.
    def caught_up() -> bool:
        out = json.loads(etcd.etcdctl("get", "--consistency=s", "/t/killed", endpoints=[etcd.endpoints[victim]]))
        return bool(out.get("kvs"))
    wait_for(caught_up, 10, "the restarted member to catch up")
    before = etcd.member_pids[victim]
    etcd.restart(victim)  # graceful: SIGTERM, then start again
    assert etcd.member_pids[victim] not in (None, before) and etcd.value("/t/killed") == "while-down"


def test_compact(etcd):
    first = etcd.put("/t/compact", "1")
    etcd.put("/t/compact", "2")
    rev = etcd.compact()
    assert rev >= first + 1
    assert json.loads(etcd.etcdctl("get", f"--rev={rev}", "/t/compact"))["kvs"]
    with pytest.raises(EtcdctlError, match="compacted"):
        etcd.etcdctl("get", f"--rev={first}", "/t/compact")


def test_lease(etcd):
    lease = etcd.grant_lease(30)
    granted, remaining = etcd.lease_ttl(lease)
    assert granted == 30 and 25 <= remaining <= 30
    etcd.put("/t/leased", "v", lease=lease)
    node = etcd.key("/t/leased")
    assert node is not None and node["lease"] == lease and 25 <= node["ttl"] <= 30
    etcd.etcdctl("lease", "revoke", f"{lease:x}")
    assert etcd.value("/t/leased") is None and etcd.lease_ttl(lease)[1] == -1


def test_test_cluster_hands_the_nodes_an_etcd3_section_and_stop_cleans_up():
    base = tempfile.mkdtemp(prefix="hasup-test-")
    etcd = Etcd3Cluster(base)
    c = TestCluster(1, base=base, etcd=etcd)
    with c:
        cfg = c.nodes[0].config()
        assert "etcd" not in cfg and cfg["etcd3"] == etcd.dcs_section()["etcd3"]
        c.etcd.put(c.key("leader"), "node1")
        assert c.leader_name() == "node1"
        pids = [p for p in etcd.member_pids if p]
        data = etcd.data
        assert len(pids) == 3 and os.path.isdir(data)
        if c.owner:  # the nodes' user can use the client certificate and key
            env = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            argv = ["etcdctl", "--endpoints", ",".join(etcd.endpoints), "--cacert", etcd.pki.ca,
                    "--cert", etcd.pki.client_cert, "--key", etcd.pki.client_key, "get", "--print-value-only",
                    c.key("leader")]
            r = subprocess.run(argv, user=c.owner[0], group=c.owner[1], extra_groups=[], env=env,
                               capture_output=True, timeout=15)
            assert r.returncode == 0 and r.stdout.strip() == b"node1", r.stderr
            assert os.stat(etcd.pki.client_key).st_uid == c.owner[0]
            assert os.stat(etcd.pki.client_key).st_mode & 0o777 == 0o600
    assert not any(alive(p) for p in pids) and etcd.member_pids == [None, None, None]
    assert not os.path.exists(data)
