"""The etcd section: `etcd:` (v2 API) or `etcd3:` (v3 API), its endpoints and its TLS files.

Both sections are read by the same rules; the TLS files are checked the way the etcd client
will load them, so a bad file stops `--validate-config` and the start with one line instead of
failing every etcd request later.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urlsplit

from hasup.config.addresses import etcd_endpoint, etcd_host_list
from hasup.config.model import EtcdConfig
from hasup.config.schema import DCS_SECTIONS, DCS_SUPPORTED, ETCD_USED, OTHER_DCS, Reader
from hasup.config.values import Invalid, int_between, to_protocol, to_str

DEFAULT_ETCD_PORT = 2379


class _Endpoints(NamedTuple):
    hosts: tuple[tuple[str, int], ...]
    scheme: str | None  # from an explicit http:// or https:// in the endpoints, else None
    username: str | None  # from url's user:password@, if any
    password: str | None
    source: str  # the key they came from, e.g. "etcd3.hosts"


def read_etcd(r: Reader, top: Mapping[str, Any]) -> EtcdConfig | None:
    """The one DCS section: `etcd:` (v2 API) or `etcd3:` (v3 API), read by the same rules."""
    for dcs in OTHER_DCS:
        if dcs in top:
            r.problem(dcs, f"not supported; {DCS_SUPPORTED}")
    present = [name for name in DCS_SECTIONS if name in top]
    if len(present) > 1:
        # Their keyspaces are disjoint: guessing one would run a second cluster beside the first.
        r.problem("etcd3", "set together with etcd; keep exactly one DCS section "
                           "(etcd: for etcd's v2 API, etcd3: for its v3 API)")
        return None
    if not present:
        if not any(dcs in top for dcs in OTHER_DCS):
            r.problem("etcd", "required (or etcd3, for etcd's v3 API)")
        return None
    name = present[0]
    sec = r.section(top, name)
    port = r.get(sec, f"{name}.port", int_between(1, 65535), DEFAULT_ETCD_PORT)
    protocol = r.get(sec, f"{name}.protocol", to_protocol, None)
    username = r.get(sec, f"{name}.username", to_str, None)
    password = r.get(sec, f"{name}.password", to_str, None)
    cacert, cert, key, key_password = _etcd_tls(r, sec, name)
    r.ignore_rest(sec, name, ETCD_USED)
    found = _etcd_endpoints(r, sec, name, port)
    if found is None:
        return None
    if found.scheme and protocol and protocol != found.scheme:
        r.warn(f"{name}.protocol", f"ignored because {found.source} says {found.scheme}://")
    # Given TLS files mean TLS was meant: https unless something says otherwise, and a
    # contradiction is refused rather than sending the password and data in the clear.
    resolved = found.scheme or protocol or ("https" if cacert or cert else "http")
    if resolved == "http" and (cacert or cert):
        given = " and ".join(f"{name}.{k}" for k, v in (("cacert", cacert), ("cert", cert)) if v)
        where = found.source if found.scheme else f"{name}.protocol"
        r.problem(where, f"TLS files given ({given}) but the protocol is http; use https or remove them")
    return EtcdConfig(found.hosts, resolved, username or found.username, password or found.password,
                      api_version=3 if name == "etcd3" else 2, cacert=cacert, cert=cert, key=key,
                      key_password=key_password)


def _etcd_endpoints(r: Reader, sec: Mapping[str, Any], name: str, port: int) -> _Endpoints | None:
    given = [key for key in ("hosts", "url", "host") if sec.get(key) not in (None, "", [])]
    if not given:
        unsupported = {"srv", "srv_suffix", "proxy"} & set(sec)
        note = f" ({name}.srv and {name}.proxy are not supported by hasup yet)" if unsupported else ""
        r.problem(name, f"one of host, hosts or url is required{note}")
        return None
    for other in given[1:]:
        r.warn(f"{name}.{other}", f"ignored because {name}.{given[0]} is set")
    source = f"{name}.{given[0]}"
    if given[0] == "url":
        return _etcd_url(r, source, sec["url"])
    if given[0] == "hosts":
        entries = r.convert(source, sec["hosts"], etcd_host_list)
        if not entries:
            if entries is not None:
                r.problem(source, "must list at least one host:port")
            return None
        labelled = [(f"{source}[{i}]", entry) for i, entry in enumerate(entries)]
    else:
        labelled = [(source, sec["host"])]
    endpoints = [r.convert(path, value, lambda v: etcd_endpoint(v, port)) for path, value in labelled]
    valid = [e for e in endpoints if e is not None]
    schemes = {scheme for scheme, _, _ in valid if scheme}
    if len(schemes) > 1:
        r.problem(source, "mixes http:// and https:// endpoints")
    if len(valid) != len(endpoints) or len(schemes) > 1:
        return None
    return _Endpoints(tuple((host, p) for _, host, p in valid), next(iter(schemes), None), None, None, source)


def _parse_etcd_url(value: Any) -> SplitResult:
    parts = urlsplit(to_str(value).strip())
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        raise Invalid("expected http(s)://host[:port]", value) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("expected http(s)://host[:port]", value)
    return parts


def _etcd_url(r: Reader, source: str, value: Any) -> _Endpoints | None:
    parts = r.convert(source, value, _parse_etcd_url)
    if parts is None:
        return None
    host = parts.hostname or ""  # never empty: _parse_etcd_url checked it
    return _Endpoints(((host, parts.port or DEFAULT_ETCD_PORT),), parts.scheme, parts.username, parts.password,
                      source)


# -- etcd TLS files ---------------------------------------------------------------------------

# What OpenSSL's PEM readers look for; checked first so a wrong file is named in the message,
# where OpenSSL would only say "PEM lib" for either file of a pair.
_PEM_CERTIFICATE = re.compile(r"-----BEGIN (TRUSTED )?CERTIFICATE-----")
_PEM_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_SCAN_LIMIT = 1 << 20  # certificate and key files are a few KiB; a CA bundle well under this
_SSL_LOCATION = re.compile(r"\s*\(_ssl\.c:\d+\)$")


class _KeyIsEncrypted(Exception):
    """Raised from the password callback when no key_password was given."""


def _etcd_tls(r: Reader, sec: Mapping[str, Any], name: str) -> tuple[str | None, str | None, str | None, str | None]:
    """cacert, cert, key and key_password, each checked now the way the etcd client will load it,
    so a bad file stops `--validate-config` and the start with one line instead of failing every
    etcd request later. Returns the paths as given (None when unset)."""
    cacert = r.get(sec, f"{name}.cacert", to_str, "") or None
    cert = r.get(sec, f"{name}.cert", to_str, "") or None
    key = r.get(sec, f"{name}.key", to_str, "") or None
    key_password = r.get(sec, f"{name}.key_password", to_str, "") or None
    if key and not cert:
        r.problem(f"{name}.key", f"needs {name}.cert (the certificate this key belongs to)")
    if key_password is not None and not cert and not key:
        r.warn(f"{name}.key_password", f"ignored without {name}.cert and {name}.key")
        key_password = None
    texts = {k: _read_tls_file(r, f"{name}.{k}", path) for k, path in (("cacert", cacert), ("cert", cert),
                                                                     ("key", key)) if path}
    if cacert and texts["cacert"] is not None:
        try:
            ssl.create_default_context(cafile=cacert)
        except (ssl.SSLError, ValueError, OSError) as exc:
            r.problem(f"{name}.cacert", f"not a PEM CA bundle: {_ssl_reason(exc)}")
    cert_text, key_text = texts.get("cert"), (texts.get("key") if key else texts.get("cert"))
    if cert and cert_text is not None and key_text is not None:
        _check_key_pair(r, name, cert, key, key_password, cert_text, key_text)
    return cacert, cert, key, key_password


def _read_tls_file(r: Reader, path_key: str, path: str) -> str | None:
    """The start of the file as text for the PEM checks, or None (with a problem) if unreadable."""
    try:
        # Only regular files: opening a FIFO or a device would block or never end.
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            r.problem(path_key, f"cannot read {path}: not a regular file")
            return None
        # OpenSSL reads the whole file: a PEM bundle is a few hundred KiB at most.
        if info.st_size > _PEM_SCAN_LIMIT:
            r.problem(path_key, f"{path}: {info.st_size} bytes, more than a PEM file of {_PEM_SCAN_LIMIT} may have")
            return None
        with open(path, "rb") as handle:
            return handle.read(_PEM_SCAN_LIMIT).decode("latin-1")
    except OSError as exc:
        r.problem(path_key, f"cannot read {path}: {exc.strerror or exc}")
    except ValueError as exc:  # e.g. a NUL in the path
        r.problem(path_key, f"cannot read {path!r}: {exc}")
    return None


def _check_key_pair(r: Reader, name: str, cert: str, key: str | None, key_password: str | None,
                    cert_text: str, key_text: str) -> None:
    key_file = key or cert  # without `key`, the certificate file must hold the key too
    if not _PEM_CERTIFICATE.search(cert_text):
        r.problem(f"{name}.cert", f"not a usable certificate/key pair: no PEM certificate in {cert}")
        return
    if not _PEM_PRIVATE_KEY.search(key_text):
        if key:
            r.problem(f"{name}.key", f"not a usable certificate/key pair: no PEM private key in {key}")
        else:
            r.problem(f"{name}.cert", f"not a usable certificate/key pair: no PEM private key in {cert} "
                                      f"and {name}.key is not set")
        return
    asked = False

    def password() -> str:
        # A callback even without a password: OpenSSL would otherwise prompt on the terminal.
        nonlocal asked
        asked = True
        if key_password is None:
            raise _KeyIsEncrypted
        return key_password

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=password)
    except _KeyIsEncrypted:
        r.problem(f"{name}.key_password", f"required: the private key in {key_file} is encrypted")
    except (ssl.SSLError, ValueError, OSError) as exc:
        # OpenSSL's error for a wrong pass phrase is a bare "PEM lib"; that the key asked for one
        # (and the pair did not merely mismatch) is what tells it apart.
        if asked and getattr(exc, "reason", None) != "KEY_VALUES_MISMATCH":
            r.problem(f"{name}.key_password", f"does not decrypt the private key in {key_file}")
        else:
            r.problem(f"{name}.cert", f"not a usable certificate/key pair: {_ssl_reason(exc)}")


def _ssl_reason(exc: Exception) -> str:
    """OpenSSL's reason without CPython's source location; never holds a pass phrase."""
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.strerror:
        return exc.strerror
    return _SSL_LOCATION.sub("", str(exc)) or type(exc).__name__
