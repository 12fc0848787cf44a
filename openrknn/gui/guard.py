"""The guards a local web tool needs, in front of every route: the Host check (DNS rebinding), the Origin check on
state-changing requests (cross-site requests from other pages), an early 413 for bodies announced over the upload
limit, and security headers (a strict content security policy) on every response."""

from __future__ import annotations

import ipaddress
import logging
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple
from urllib.parse import urlsplit

from starlette.responses import JSONResponse

from . import DEFAULT_HOST, DEFAULT_PORT

log = logging.getLogger("openrknn.gui")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
_SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                     (b"referrer-policy", b"no-referrer"), (b"content-security-policy", _CSP.encode()),
                     (b"cross-origin-resource-policy", b"same-origin")]


@dataclass
class GuiSettings:
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="openrknn-gui-")))
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_upload_bytes: int = 512 * 1024 * 1024  # models; a path on this machine has no limit
    max_image_bytes: int = 32 * 1024 * 1024  # inference and calibration images

    def allowed_hostnames(self) -> Optional[set]:
        """Host header names accepted (DNS-rebinding guard); None when bound to every interface (see host_allowed)."""
        if self.host in ("0.0.0.0", "::", ""):
            return None
        return LOOPBACK | {self.host}

    def host_allowed(self, hostname: str) -> bool:
        """Bound to one address: its name and loopback only. Bound to every interface: an IP address, loopback or
        this machine's own name, never another domain name: a page on a domain re-pointed at this machine (DNS
        rebinding) sends its own name as Host and is refused."""
        allowed = self.allowed_hostnames()
        if allowed is not None:
            return hostname in allowed
        try:
            ipaddress.ip_address(hostname)
            return True
        except ValueError:
            pass
        own = {socket.gethostname().lower(), socket.getfqdn().lower()}
        return hostname.lower() in LOOPBACK | own


def split_host(value: str) -> Tuple[str, str]:
    parts = urlsplit(f"//{value}")
    return (parts.hostname or ""), (str(parts.port) if parts.port else "")


class GuardMiddleware:
    """Host check on every request; Origin check on state-changing ones; early 413 on oversized bodies; security
    headers on every response. Pure ASGI so streamed uploads are not buffered."""

    def __init__(self, app, settings: GuiSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self.refusal(scope["method"], headers)
        if refusal is not None:
            status, message = refusal
            log.warning("refused %s %s: %s", scope["method"], scope.get("path"), message)
            return await JSONResponse({"error": message}, status_code=status)(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + _SECURITY_HEADERS}
            await send(message)

        return await self.app(scope, receive, send_with_headers)

    def refusal(self, method: str, headers: dict) -> Optional[Tuple[int, str]]:
        host = headers.get("host", "")
        hostname, _ = split_host(host)
        if not self.settings.host_allowed(hostname):
            if self.settings.allowed_hostnames() is None:
                return 421, (f"Host '{host}' is not this machine's address or name; open the GUI by this machine's "
                             "IP address or host name")
            return 421, (f"Host '{host}' is not this GUI's address; open http://{self.settings.host}:"
                         f"{self.settings.port}/ (or start the GUI with --host to listen elsewhere)")
        if method in _UNSAFE:
            origin = headers.get("origin")
            if not origin or origin == "null":
                return 403, ("request without an Origin header refused: state-changing requests must come from the "
                             "GUI page itself")
            o = urlsplit(origin)
            if o.scheme != "http" or o.netloc.lower() != host.lower():
                return 403, f"cross-site request refused: Origin '{origin}' is not this GUI ({host})"
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.settings.max_upload_bytes:
                return 413, (f"request body of {int(length) / 1e6:.0f} MB is over the "
                             f"{self.settings.max_upload_bytes / 1e6:.0f} MB upload limit; give a path on this "
                             "machine instead")
        return None
