"""Requests to a member's REST API (the `api_url` of its member key), with ctl's auth and TLS."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hasup import __version__
from hasup.ctl.settings import CtlSettings
from hasup.dcs.model import Member

CONNECT_TIMEOUT = 5.0  # a member that does not accept within this is down for our purposes


class RestError(Exception):
    """The member could not be asked (no api_url, refused, timed out, TLS failure); one line."""


@dataclass(frozen=True)
class Response:
    status: int
    text: str

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError:
            return None

    @property
    def message(self) -> str:
        """The answer as one line: hasup sends errors as {"error": ...}, Patroni as plain text."""
        body = self.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body["error"]
        return " ".join(self.text.split())


def endpoint_url(api_url: str, endpoint: str) -> str:
    """`http://h:p/patroni` + `restart` -> `http://h:p/restart`."""
    parts = urlsplit(api_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + endpoint.lstrip("/"), "", ""))


class RestClient:
    def __init__(self, settings: CtlSettings) -> None:
        self.settings = settings
        self._ssl: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            tls = self.settings.tls
            ctx = ssl.create_default_context(cafile=tls.cacert)
            if tls.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if tls.certfile:
                ctx.load_cert_chain(tls.certfile, tls.keyfile, tls.keyfile_password)
            self._ssl = ctx
        return self._ssl

    def headers(self, has_body: bool) -> dict[str, str]:
        headers = {"User-Agent": f"hasupctl/{__version__}", "Accept": "application/json"}
        if has_body:
            headers["Content-Type"] = "application/json"
        if self.settings.username is not None:
            pair = f"{self.settings.username}:{self.settings.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return headers

    def request(self, member: Member, method: str, endpoint: str, body: Any = None,
                timeout: float = 30.0) -> Response:
        """One request; any HTTP status is a Response, only a failure to get one raises RestError."""
        if not member.api_url:
            raise RestError(f"member {member.name} publishes no api_url")
        url = endpoint_url(member.api_url, endpoint)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method.upper(), headers=self.headers(data is not None))
        try:
            # No proxies: members are addressed directly, as Patroni's own clients do.
            handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
            if url.startswith("https:"):
                handlers.append(urllib.request.HTTPSHandler(context=self._context()))
            with urllib.request.build_opener(*handlers).open(req, timeout=max(timeout, CONNECT_TIMEOUT)) as resp:
                return Response(resp.status, resp.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.read().decode("utf-8", "replace"))
        except (ssl.SSLError, urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise RestError(f"cannot reach member {member.name} at {url}: {reason}") from None
