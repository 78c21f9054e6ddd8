"""TLS for the REST API (contract §1.11): restapi.certfile, keyfile, keyfile_password, cafile, verify_client.

gunicorn takes no key password, so hasup builds the server context itself
through gunicorn's `ssl_context` hook: ssl.SSLContext.load_cert_chain
decrypts the key in memory with the password, and nothing is written to
disk.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
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
