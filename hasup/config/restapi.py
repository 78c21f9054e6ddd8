"""The restapi section: where the REST API listens and what guards its unsafe endpoints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hasup.config.addresses import host_port
from hasup.config.model import RestApiConfig
from hasup.config.schema import RESTAPI_USED, Reader
from hasup.config.values import Invalid, to_bool, to_mapping, to_str, to_str_list

_NO_STRINGS: tuple[str, ...] = ()


def read_restapi(r: Reader, top: Mapping[str, Any]) -> RestApiConfig | None:
    """The restapi section; None when a required address is missing (that is already a problem)."""
    sec = r.section(top, "restapi")
    listen = r.require(sec, "restapi.listen", host_port(allow_empty_host=True))
    connect_address = r.require(sec, "restapi.connect_address", host_port())
    auth = r.section(sec, "restapi.authentication")
    username = r.get(auth, "restapi.authentication.username", to_str, None)
    password = r.get(auth, "restapi.authentication.password", to_str, None)
    if (username is None) != (password is None):
        missing, other = ("password", "username") if password is None else ("username", "password")
        r.problem(f"restapi.authentication.{missing}", f"required when restapi.authentication.{other} is set")
    certfile = r.get(sec, "restapi.certfile", to_str, None)
    keyfile = r.get(sec, "restapi.keyfile", to_str, None)
    if keyfile and not certfile:
        r.problem("restapi.keyfile", "needs restapi.certfile")
    keyfile_password = r.get(sec, "restapi.keyfile_password", to_str, None)
    cafile = r.get(sec, "restapi.cafile", to_str, None)
    verify_client = r.get(sec, "restapi.verify_client", _to_verify_client, "none")
    if verify_client != "none" and not certfile:
        r.problem("restapi.verify_client", "needs restapi.certfile")
    allowlist = r.get(sec, "restapi.allowlist", to_str_list, _NO_STRINGS)
    include_members = r.get(sec, "restapi.allowlist_include_members", to_bool, False)
    no_headers: dict[str, str] = {}
    http_headers = r.get(sec, "restapi.http_extra_headers", _to_headers, no_headers)
    https_headers = r.get(sec, "restapi.https_extra_headers", _to_headers, no_headers)
    r.ignore_rest(auth, "restapi.authentication", ("username", "password"))
    r.ignore_rest(sec, "restapi", (*RESTAPI_USED, *_RESTAPI_MORE))
    if listen is None or connect_address is None:
        return None
    restapi = RestApiConfig(listen, connect_address, username, password, certfile, keyfile,
                            keyfile_password=keyfile_password, cafile=cafile, verify_client=verify_client,
                            allowlist=allowlist, allowlist_include_members=include_members,
                            http_extra_headers=http_headers, https_extra_headers=https_headers)
    if restapi.unprotected:
        r.warn("restapi.listen", f"UNPROTECTED: {listen} is reachable from other hosts and neither "
                                 "restapi.authentication nor restapi.allowlist is set, so anyone who reaches "
                                 "the port can change the cluster configuration (PATCH /config; archive_command "
                                 "runs as postgres), restart, fail over or reinitialize nodes; set "
                                 "restapi.authentication")
    if verify_client == "optional":
        r.warn("restapi.verify_client", "optional is accepted as in Patroni but protects less: clients without "
                                        "a certificate reach every endpoint, the unsafe ones included; use "
                                        "required, or restapi.authentication")
    return restapi


_RESTAPI_MORE = ("keyfile_password", "cafile", "verify_client", "allowlist", "allowlist_include_members",
                 "http_extra_headers", "https_extra_headers")


def _to_verify_client(value: Any) -> str:
    text = to_str(value).strip().lower()
    if text not in ("none", "optional", "required"):
        raise Invalid("expected none, optional or required", value)
    return text


def _to_headers(value: Any) -> dict[str, str]:
    headers = to_mapping(value)
    for name, text in headers.items():
        if not isinstance(name, str) or not name or isinstance(text, dict | list) or text is None:
            raise Invalid("expected a mapping of header names to values", value)
    return {str(k): str(v) for k, v in headers.items()}
