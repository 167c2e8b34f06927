"""ASGI types the front's middleware share, and the one way they answer with JSON."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# Headers that say where a body ends or how to parse it: two copies let two readers disagree.
FRAMING_HEADERS = (b"content-type", b"content-length", b"transfer-encoding")


def header(scope: Scope, name: bytes) -> bytes | None:
    """Return the first request header ``name`` (lower-case bytes), or None.

    The first, as Starlette and BentoML read it: a middleware that read another copy would
    check a different body than the framework below parses.
    """
    for key, value in scope.get("headers") or []:
        if key == name:
            return bytes(value)
    return None


def repeated_framing_header(scope: Scope) -> str | None:
    """Return the name of a framing header the request sends more than once, or None."""
    seen: set[bytes] = set()
    for key, _ in scope.get("headers") or []:
        if key in FRAMING_HEADERS:
            if key in seen:
                return key.decode("latin-1")
            seen.add(key)
    return None


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    """Send a complete JSON response."""
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
