"""TLS for the REST API (docs/rest-api.md, "TLS"): restapi.certfile, keyfile, keyfile_password, cafile, verify_client.

gunicorn takes no key password, so hasup builds the server context itself
through gunicorn's `ssl_context` hook: ssl.SSLContext.load_cert_chain
decrypts the key in memory with the password, and nothing is written to
disk.  The api's worker (hasup/api/gworker.py) keeps one context in a
ContextCache and makes a new one when the files change.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

from hasup.config import RestApiConfig

VERIFY_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def make_context(restapi: RestApiConfig) -> ssl.SSLContext:
    """The server-side context; raises OSError/ssl.SSLError when a file or the password is wrong."""
    if not restapi.certfile:
        raise ValueError("restapi.certfile is not set")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(restapi.certfile, restapi.keyfile or None, password=restapi.keyfile_password)
    mode = VERIFY_MODES.get(restapi.verify_client, ssl.CERT_NONE)
    if restapi.cafile:
        context.load_verify_locations(cafile=restapi.cafile)
    elif mode != ssl.CERT_NONE:
        context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    context.verify_mode = mode
    return context


def gunicorn_options(restapi: RestApiConfig) -> dict[str, Any]:
    """gunicorn settings that switch TLS on ({} for plain HTTP)."""
    if not restapi.certfile:
        return {}

    def ssl_context(conf: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return make_context(restapi)

    # certfile makes gunicorn wrap its sockets; the hook makes the context.
    options: dict[str, Any] = {"certfile": restapi.certfile, "ssl_context": ssl_context}
    if restapi.keyfile:
        options["keyfile"] = restapi.keyfile
    return options


class ContextCache:
    """One server context for every connection, made again when its files change on disk.

    Building a context decrypts the key (milliseconds of CPU): once per
    connection, as gunicorn does, a flood of connections would keep the
    loop busy.  The files are looked at no more often than every `recheck`
    seconds, so a renewed certificate is served within that time; a new one
    that fails to load keeps the previous context (and is logged once).
    """

    def __init__(self, factory: Callable[[], ssl.SSLContext], paths: Iterable[str | None], log: Any,
                 recheck: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._factory = factory
        self._paths = tuple(p for p in paths if p)
        self._log = log
        self._recheck = recheck
        self._clock = clock
        self._context: ssl.SSLContext | None = None
        self._signature: tuple[Any, ...] = ()
        self._checked = 0.0

    def _files(self) -> tuple[Any, ...]:
        marks: list[Any] = []
        for path in self._paths:
            try:
                st = os.stat(path)
                marks.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                marks.append((path, None))
        return tuple(marks)

    def get(self) -> ssl.SSLContext:
        """The current context; the first call raises what the factory raises."""
        now = self._clock()
        if self._context is not None and now - self._checked < self._recheck:
            return self._context
        self._checked = now
        signature = self._files()
        if self._context is not None and signature == self._signature:
            return self._context
        try:
            context = self._factory()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            if self._context is None:
                raise
            self._log.error("restapi TLS files changed but do not load, keeping the previous ones: %s", exc)
            self._signature = signature  # logged once per change
            return self._context
        self._context, self._signature = context, signature
        return context
