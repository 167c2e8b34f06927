"""Host check on a keyless front: only its own names, loopback names and IP literals.

Without API keys, anything that can reach the port can use it. A web page on another site
can reach a front on loopback through DNS rebinding (its own name, re-pointed at 127.0.0.1)
and read the answers; its requests carry that name in ``Host``. So, with keys off, a request
whose ``Host`` is a name other than ``localhost`` (``*.localhost``), the public URL's host,
the bound host or one in ``VQ_ALLOWED_HOSTS`` gets 400 (``host_not_allowed``). An IP literal
is always allowed: a rebinding page cannot send one. With keys on, the keys guard the routes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from visionqueue.api.middleware.asgi import ASGIApp, Receive, Scope, Send, header, send_json
from visionqueue.core.errors import error_body

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def host_name(value: str) -> str:
    """Return the host of a ``Host`` header (no port, no brackets, lower case)."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:3000
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") > 1:  # a bare IPv6 address has no port
        return value
    name, _, port = value.rpartition(":")
    return name if name and port.isdigit() else value.rstrip(":")


def allowed_host_names(public_url: str, bind_host: str, extra: Iterable[str]) -> frozenset[str]:
    """Return the names a keyless front answers to, besides IP literals and loopback names."""
    names = {host_name(name) for name in extra if name}
    names.add((urlsplit(public_url).hostname or "").lower() if public_url else "")
    names.add(host_name(bind_host))
    return frozenset(names - {""})


def host_allowed(value: str, names: frozenset[str]) -> bool:
    """Say whether a request with this ``Host`` may reach a keyless front."""
    name = host_name(value).rstrip(".")
    if "*" in names or name in names or name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """Refuse (400) requests to a keyless front whose ``Host`` names another site."""

    def __init__(self, app: ASGIApp, keys_enabled: bool, names: frozenset[str]) -> None:
        self.app = app
        self.active = not keys_enabled
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.active and scope["type"] == "http":
            value = header(scope, b"host")
            if value is not None and not host_allowed(value.decode("latin-1"), self.names):
                await send_json(
                    send,
                    400,
                    error_body(
                        "host_not_allowed",
                        "this front has no API keys and answers only to its own host names "
                        "(VQ_PUBLIC_URL, VQ_ALLOWED_HOSTS), loopback names and IP addresses",
                    ),
                )
                return
        await self.app(scope, receive, send)
