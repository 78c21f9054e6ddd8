"""HTTP(S) connections to etcd: one pool manager with the configured CA, client certificate and key.

The files were checked when the configuration was loaded; what can still go wrong at run time
(a certificate the member refuses, a CA that does not match) is a failed attempt with a reason
(`reason_of`), logged once per member by Endpoints.
"""

from __future__ import annotations

import ssl

import urllib3
import urllib3.exceptions

from hasup.config import EtcdConfig

POOL_SIZE = 2  # connections kept per member: one call at a time per store, plus a watch


def ssl_context(cfg: EtcdConfig) -> ssl.SSLContext | None:
    if cfg.protocol != "https":
        return None
    ctx = ssl.create_default_context(cafile=cfg.cacert)
    if cfg.cert:
        ctx.load_cert_chain(cfg.cert, cfg.key, password=cfg.key_password)
    return ctx


def pool_manager(cfg: EtcdConfig) -> urllib3.PoolManager:
    # retries=False: urllib3 would retry a timed-out request on its own and stretch one attempt
    # past its bound; the caller retries across members within retry_timeout instead.
    return urllib3.PoolManager(num_pools=16, maxsize=POOL_SIZE, ssl_context=ssl_context(cfg), retries=False)


def reason_of(exc: BaseException) -> str:
    """A one-line reason for a failed request, naming TLS problems as such."""
    chain = _causes(exc)
    verify = next((c for c in chain if isinstance(c, ssl.SSLCertVerificationError)), None)
    if verify is not None or any("CERTIFICATE_VERIFY_FAILED" in str(c) for c in chain):
        detail = verify.verify_message if verify is not None and verify.verify_message else str(chain[-1])
        return f"TLS: the member's certificate was not accepted: {_short(detail)}"
    tls = next((c for c in chain if isinstance(c, ssl.SSLError | urllib3.exceptions.SSLError)), None)
    if tls is not None:
        text = str(tls)
        if any(alert in text.upper() for alert in ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA")):
            return f"TLS: the member refused our client certificate ({_short(text)})"
        return f"TLS: {_short(text)}"
    last = chain[-1]
    if isinstance(last, TimeoutError | urllib3.exceptions.TimeoutError):
        return "timed out"
    return _short(f"{type(last).__name__}: {last}")


def _causes(exc: BaseException) -> list[BaseException]:
    """exc and what it wraps (urllib3's `reason`, then __cause__ / __context__), outermost first."""
    chain = [exc]
    while len(chain) < 8:
        inner = getattr(chain[-1], "reason", None)
        if not isinstance(inner, BaseException):
            inner = chain[-1].__cause__ or chain[-1].__context__
        if inner is None or inner in chain:
            break
        chain.append(inner)
    return chain


def _short(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 3] + "..."
