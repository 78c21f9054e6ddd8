"""The DCS section: `etcd:` (v2 API) and `etcd3:` (v3 API), their TLS files, and their environment variables."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hasup.config import Config, ConfigError, EtcdConfig, load_config_text, take_environment
from hasup.config.environment import env_names
from tests.harness.pki import Pki, make_pki
from tests.unit.test_config import MINIMAL

SUPPORTED = "hasup supports etcd (v2 API, `etcd:`) and etcd3 (v3 API, `etcd3:`)"
ROOT = Path(__file__).resolve().parents[2]
BOTH_DCS = ("etcd3: set together with etcd; keep exactly one DCS section "
            "(etcd: for etcd's v2 API, etcd3: for its v3 API)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One CA, an encrypted server pair, a plain client pair, and a few broken files beside them."""
    pki = make_pki(str(tmp_path_factory.mktemp("pki")))
    combined = Path(pki.client_cert).read_text() + Path(pki.client_key).read_text()
    Path(pki.path("combined.pem")).write_text(combined)
    Path(pki.path("junk.pem")).write_text("not a PEM file\n")
    return pki


def raw_with(dcs: dict[str, Any] | None = None, name: str = "etcd3") -> dict[str, Any]:
    """MINIMAL with its `etcd:` section replaced by `name:` holding `dcs` (None: no DCS section)."""
    raw = copy.deepcopy(MINIMAL)
    del raw["etcd"]
    if dcs is not None:
        raw[name] = dcs
    return raw


def load(
    dcs: dict[str, Any] | None, name: str = "etcd3", env: dict[str, str] | None = None
) -> tuple[Config, list[str]]:
    return load_config_text(yaml.safe_dump(raw_with(dcs, name)), env)


def problems_of(dcs: dict[str, Any] | None, name: str = "etcd3", env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(dcs, name, env)
    return info.value.problems


# -- the section ----------------------------------------------------------------------------------


def test_etcd_section_is_the_v2_api() -> None:
    cfg, _ = load({"host": "e1"}, name="etcd")
    assert (cfg.etcd.api_version, cfg.etcd.section) == (2, "etcd")


def test_etcd3_credentials_from_keys_or_url_and_never_in_repr() -> None:
    cfg, _ = load({"url": "http://u:url-pw@e1:2379"})
    assert (cfg.etcd.username, cfg.etcd.password) == ("u", "url-pw")
    cfg, _ = load({"host": "e1", "username": "root", "password": "pw-123"})
    assert (cfg.etcd.username, cfg.etcd.password) == ("root", "pw-123")
    assert "pw-123" not in repr(cfg.etcd)


@pytest.mark.parametrize(
    ("dcs", "expected"),
    [
        ({}, "etcd3: one of host, hosts or url is required"),
        ({"srv": "example.com"},
         "etcd3: one of host, hosts or url is required (etcd3.srv and etcd3.proxy are not supported by hasup yet)"),
        ({"host": "e1:x"}, "etcd3.host: expected host:port, got 'e1:x'"),
        ({"hosts": ["e1:2379", "e2:"]}, "etcd3.hosts[1]: expected host:port, got 'e2:'"),
        ({"hosts": 5}, "etcd3.hosts: expected a list or a comma-separated string of host:port, got 5"),
        ({"hosts": " , "}, "etcd3.hosts: must list at least one host:port"),
        ({"hosts": "http://a:1,https://b:2"}, "etcd3.hosts: mixes http:// and https:// endpoints"),
        ({"url": "ftp://e1"}, "etcd3.url: expected http(s)://host[:port], got 'ftp://e1'"),
        ({"host": "e1", "protocol": "ftp"}, "etcd3.protocol: expected http or https, got 'ftp'"),
        ({"host": "e1", "port": 0}, "etcd3.port: must be at least 1, got 0"),
        ({"host": "e1", "cacert": ["a"]}, "etcd3.cacert: expected a string, got ['a']"),
        ({"host": "e1", "key_password": ["s3cr3t-value"]}, "etcd3.key_password: expected a string"),
    ],
)
def test_problems_name_the_etcd3_section(dcs: dict[str, Any], expected: str) -> None:
    assert problems_of(dcs) == [expected]


@pytest.mark.parametrize(
    ("dcs", "line"),
    [
        ({"host": "e1", "hosts": ["e2"]}, "etcd3.host: ignored because etcd3.hosts is set"),
        ({"host": "e1", "srv": "example.com"}, "etcd3.srv: not used by hasup yet, ignored"),
        ({"host": "e1", "use_proxies": True}, "etcd3.use_proxies: not used by hasup yet, ignored"),
        ({"host": "e1", "verify": False}, "etcd3.verify: not used by hasup yet, ignored"),
        ({"hosts": ["https://e1"], "protocol": "http"}, "etcd3.protocol: ignored because etcd3.hosts says https://"),
    ],
)
def test_warnings_name_the_etcd3_section(dcs: dict[str, Any], line: str) -> None:
    _, warnings = load(dcs)
    assert line in warnings


def test_exactly_one_dcs_section() -> None:
    raw = raw_with({"host": "e3"})
    raw["etcd"] = {"hosts": "bad:port:x"}  # not read: which section is meant must be settled first
    with pytest.raises(ConfigError) as info:
        load_config_text(yaml.safe_dump(raw))
    assert info.value.problems == [BOTH_DCS]
    assert problems_of(None) == ["etcd: required (or etcd3, for etcd's v3 API)"]


@pytest.mark.parametrize("other", ["consul", "zookeeper", "exhibitor", "kubernetes", "raft"])
def test_other_dcs_are_refused_naming_both_etcd_apis(other: str) -> None:
    assert problems_of({"hosts": ["x:1"]}, name=other) == [f"{other}: not supported; {SUPPORTED}"]
    raw = raw_with({"host": "e3"})
    raw[other] = {}
    with pytest.raises(ConfigError) as info:
        load_config_text(yaml.safe_dump(raw))
    assert info.value.problems == [f"{other}: not supported; {SUPPORTED}"]


# -- protocol ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dcs", "protocol"),
    [
        ({"host": "e1"}, "http"),
        ({"host": "e1", "protocol": "https"}, "https"),
        ({"hosts": ["https://e1"]}, "https"),
        ({"url": "https://e1"}, "https"),
        ({"hosts": ["http://e1"], "protocol": "https"}, "http"),  # the endpoint's own scheme wins
        ({"host": "e1", "cacert": "CA"}, "https"),  # TLS files mean TLS
        ({"host": "e1", "cert": "CERT", "key": "KEY"}, "https"),
        ({"host": "e1", "cacert": "CA", "protocol": "https"}, "https"),
    ],
)
def test_protocol_resolution(pki: Pki, dcs: dict[str, Any], protocol: str) -> None:
    names = {"CA": pki.ca, "CERT": pki.client_cert, "KEY": pki.client_key}
    cfg, _ = load({k: names.get(v, v) if isinstance(v, str) else v for k, v in dcs.items()})
    assert cfg.etcd.protocol == protocol


@pytest.mark.parametrize(
    ("dcs", "where"),
    [
        ({"host": "e1", "protocol": "http", "cacert": "CA"}, "etcd3.protocol"),
        ({"host": "e1", "protocol": "http", "cert": "CERT", "key": "KEY"}, "etcd3.protocol"),
        ({"url": "http://e1:2379", "cacert": "CA"}, "etcd3.url"),
        ({"hosts": ["http://e1", "http://e2"], "cacert": "CA", "protocol": "https"}, "etcd3.hosts"),
    ],
)
def test_tls_files_with_http_are_a_problem(pki: Pki, dcs: dict[str, Any], where: str) -> None:
    names = {"CA": pki.ca, "CERT": pki.client_cert, "KEY": pki.client_key}
    [line] = problems_of({k: names.get(v, v) if isinstance(v, str) else v for k, v in dcs.items()})
    assert line.startswith(f"{where}: TLS files given (etcd3.c") and line.endswith(
        "but the protocol is http; use https or remove them")


# -- TLS files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("section", ["etcd", "etcd3"])
def test_tls_files_are_kept(pki: Pki, section: str) -> None:
    cfg, warnings = load({"host": "e1", "cacert": pki.ca, "cert": pki.server_cert, "key": pki.server_key,
                          "key_password": pki.key_password}, name=section)
    assert (cfg.etcd.cacert, cfg.etcd.cert, cfg.etcd.key, cfg.etcd.key_password) == (
        pki.ca, pki.server_cert, pki.server_key, pki.key_password)
    assert cfg.etcd.protocol == "https" and cfg.etcd.api_version == (3 if section == "etcd3" else 2)
    assert warnings == []
    assert pki.key_password not in repr(cfg.etcd)


def test_plain_client_pair_and_a_certificate_file_holding_its_key(pki: Pki) -> None:
    cfg, _ = load({"host": "e1", "cert": pki.client_cert, "key": pki.client_key})
    assert (cfg.etcd.cert, cfg.etcd.key, cfg.etcd.cacert) == (pki.client_cert, pki.client_key, None)
    cfg, _ = load({"host": "e1", "cert": pki.path("combined.pem")})
    assert (cfg.etcd.cert, cfg.etcd.key) == (pki.path("combined.pem"), None)


@pytest.mark.parametrize("key", ["cacert", "cert", "key"])
def test_a_missing_file_is_one_line_naming_its_key(pki: Pki, key: str) -> None:
    dcs = {"host": "e1", "cacert": pki.ca, "cert": pki.client_cert, "key": pki.client_key, key: "/x/missing.pem"}
    assert problems_of(dcs) == [f"etcd3.{key}: cannot read /x/missing.pem: No such file or directory"]


def test_a_directory_is_not_a_tls_file(pki: Pki) -> None:
    expected = f"etcd3.cacert: cannot read {pki.dir}: not a regular file"
    assert problems_of({"host": "e1", "cacert": pki.dir}) == [expected]


def test_an_unreadable_file(tmp_path: Path, pki: Pki) -> None:
    locked = tmp_path / "ca.pem"
    locked.write_text(Path(pki.ca).read_text())
    locked.chmod(0)
    expected = [f"etcd3.cacert: cannot read {locked}: Permission denied"]
    if os.geteuid() != 0:
        assert problems_of({"host": "e1", "cacert": str(locked)}) == expected
        return
    # root reads any file: ask as nobody instead (tmp_path's 0700 parent denies it too).
    text = yaml.safe_dump(raw_with({"host": "e1", "cacert": str(locked)}))
    code = ("import sys; from hasup.config import ConfigError, load_config_text\n"
            "try:\n    load_config_text(sys.stdin.read())\n"
            "except ConfigError as exc:\n    print(*exc.problems, sep='\\n')\n")
    result = subprocess.run([sys.executable, "-c", code], input=text, capture_output=True, text=True, timeout=30,
                            user="nobody", cwd="/", env={"PYTHONPATH": str(ROOT)})
    assert result.stdout.splitlines() == expected, result.stderr


def test_a_file_that_is_no_ca_bundle(pki: Pki) -> None:
    for path in (pki.path("junk.pem"), pki.client_key):
        [line] = problems_of({"host": "e1", "cacert": path})
        assert line.startswith("etcd3.cacert: not a PEM CA bundle: ") and "no certificate" in line


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cert": "junk.pem", "key": "client.key"},
         "etcd3.cert: not a usable certificate/key pair: no PEM certificate in {dir}/junk.pem"),
        ({"cert": "client.pem", "key": "junk.pem"},
         "etcd3.key: not a usable certificate/key pair: no PEM private key in {dir}/junk.pem"),
        ({"cert": "client.pem", "key": "client.pem"},
         "etcd3.key: not a usable certificate/key pair: no PEM private key in {dir}/client.pem"),
        ({"cert": "client.pem"},
         "etcd3.cert: not a usable certificate/key pair: no PEM private key in {dir}/client.pem "
         "and etcd3.key is not set"),
        ({"cert": "server.pem", "key": "client.key"},
         "etcd3.cert: not a usable certificate/key pair: [X509: KEY_VALUES_MISMATCH] key values mismatch"),
        ({"cert": "client.pem", "key": "server.key", "key_password": "PW"},
         "etcd3.cert: not a usable certificate/key pair: [X509: KEY_VALUES_MISMATCH] key values mismatch"),
        ({"cert": "server.pem", "key": "server.key"},
         "etcd3.key_password: required: the private key in {dir}/server.key is encrypted"),
        ({"cert": "server.pem", "key": "server.key", "key_password": "not-the-pass-phrase"},
         "etcd3.key_password: does not decrypt the private key in {dir}/server.key"),
        ({"key": "client.key"}, "etcd3.key: needs etcd3.cert (the certificate this key belongs to)"),
    ],
)
def test_a_bad_certificate_or_key_is_one_line_naming_its_key(pki: Pki, files: dict[str, str], expected: str) -> None:
    dcs: dict[str, Any] = {"host": "e1"}
    for key, name in files.items():
        dcs[key] = pki.key_password if name == "PW" else (name if key == "key_password" else pki.path(name))
    problems = problems_of(dcs)
    assert problems == [expected.format(dir=pki.dir)]
    assert not any(pki.key_password in line or "not-the-pass-phrase" in line for line in problems)


def test_key_password_without_a_key_is_ignored_with_a_warning() -> None:
    cfg, warnings = load({"host": "e1", "key_password": "lonely-pass"})
    assert cfg.etcd.key_password is None
    assert warnings == ["etcd3.key_password: ignored without etcd3.cert and etcd3.key"]
    assert not any("lonely-pass" in line for line in warnings)


def test_every_tls_problem_is_reported_at_once(pki: Pki) -> None:
    problems = problems_of({"host": "e1", "protocol": "http", "cacert": "/x/ca.pem", "cert": pki.server_cert,
                            "key": pki.server_key, "key_password": "wrong"})
    assert problems == [
        "etcd3.cacert: cannot read /x/ca.pem: No such file or directory",
        f"etcd3.key_password: does not decrypt the private key in {pki.server_key}",
        "etcd3.protocol: TLS files given (etcd3.cacert and etcd3.cert) but the protocol is http; "
        "use https or remove them",
    ]


# -- environment ------------------------------------------------------------------------------------


def test_etcd3_variables_build_the_section(pki: Pki) -> None:
    env = {
        "PATRONI_ETCD3_HOSTS": "e1:2379,e2:2380",
        "PATRONI_ETCD3_PROTOCOL": "https",
        "PATRONI_ETCD3_USERNAME": "root",
        "PATRONI_ETCD3_PASSWORD": "etcd-pw",
        "PATRONI_ETCD3_CACERT": pki.ca,
        "PATRONI_ETCD3_CERT": pki.server_cert,
        "PATRONI_ETCD3_KEY": pki.server_key,
        "PATRONI_ETCD3_KEY_PASSWORD": pki.key_password,
    }
    cfg, _ = load(None, env=env)
    assert cfg.etcd == EtcdConfig((("e1", 2379), ("e2", 2380)), "https", "root", "etcd-pw", api_version=3,
                                  cacert=pki.ca, cert=pki.server_cert, key=pki.server_key,
                                  key_password=pki.key_password)


@pytest.mark.parametrize(
    ("env", "read", "expected"),
    [
        ({"PATRONI_ETCD3_HOST": "e9:2399"}, lambda e: e.hosts, (("e9", 2399),)),
        ({"PATRONI_ETCD3_HOSTS": "['e1:1', 'e2']"}, lambda e: e.hosts, (("e1", 1), ("e2", 2379))),
        ({"PATRONI_ETCD3_URL": "https://u:p@e9:2381"}, lambda e: (e.hosts, e.protocol, e.username, e.password),
         ((("e9", 2381),), "https", "u", "p")),
        ({"PATRONI_ETCD3_HOST": "e1", "PATRONI_ETCD3_PORT": "4001"}, lambda e: e.hosts, (("e1", 4001),)),
        ({"PATRONI_ETCD3_HOST": "e1", "HASUP_ETCD3_HOST": "e2"}, lambda e: e.hosts, (("e2", 2379),)),
        ({"PATRONI_ETCD3_HOST": "e1", "PATRONI_ETCD3_USERNAME": "a", "HASUP_ETCD3_PASSWORD": "b"},
         lambda e: (e.username, e.password, e.api_version), ("a", "b", 3)),
    ],
)
def test_etcd3_variables(env: dict[str, str], read: Any, expected: Any) -> None:
    cfg, _ = load(None, env=env)
    assert read(cfg.etcd) == expected


@pytest.mark.parametrize("prefix", ["PATRONI_", "HASUP_"])
def test_etcd_tls_variables(pki: Pki, prefix: str) -> None:
    env = {f"{prefix}ETCD_CACERT": pki.ca, f"{prefix}ETCD_CERT": pki.server_cert,
           f"{prefix}ETCD_KEY": pki.server_key, f"{prefix}ETCD_KEY_PASSWORD": pki.key_password}
    cfg, _ = load({"host": "e1"}, name="etcd", env=env)
    assert (cfg.etcd.cacert, cfg.etcd.cert, cfg.etcd.key, cfg.etcd.key_password, cfg.etcd.protocol) == (
        pki.ca, pki.server_cert, pki.server_key, pki.key_password, "https")


def test_hasup_tls_variables_win_over_patroni_ones(pki: Pki) -> None:
    env = {"PATRONI_ETCD3_HOST": "e1", "PATRONI_ETCD3_CACERT": "/x/missing.pem", "HASUP_ETCD3_CACERT": pki.ca}
    cfg, _ = load(None, env=env)
    assert cfg.etcd.cacert == pki.ca


def test_a_bad_file_from_a_variable_names_the_key(pki: Pki) -> None:
    env = {"PATRONI_ETCD3_HOST": "e1", "PATRONI_ETCD3_CERT": pki.server_cert, "PATRONI_ETCD3_KEY": pki.server_key,
           "PATRONI_ETCD3_KEY_PASSWORD": "wrong-pass-phrase"}
    problems = problems_of(None, env=env)
    assert problems == [f"etcd3.key_password: does not decrypt the private key in {pki.server_key}"]


def test_etcd3_variables_are_taken_out_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import hasup.config.environment as config_module

    monkeypatch.setattr(config_module, "_taken_environment", None)
    names = [f"{prefix}ETCD3_{suffix}" for prefix in ("PATRONI_", "HASUP_")
             for suffix in ("HOSTS", "URL", "HOST", "PROTOCOL", "USERNAME", "PASSWORD", "CACERT", "CERT", "KEY",
                            "KEY_PASSWORD")]
    names += ["PATRONI_ETCD_CACERT", "PATRONI_ETCD_CERT", "PATRONI_ETCD_KEY", "HASUP_ETCD_KEY_PASSWORD"]
    environ = {name: "v" for name in names} | {"PATH": "/bin"}
    assert sorted(env_names(environ)) == sorted(names)
    taken = take_environment(environ)
    assert environ == {"PATH": "/bin"}  # PostgreSQL and hook scripts never see the key's pass phrase
    assert sorted(taken) == sorted(names)
