"""Each protocol's own error body, made from the front's error envelope.

Handlers and the front's middleware answer every error as ``{"error": {"code", "message"}}``
with the right status. Clients of another protocol parse another shape, so this ASGI
middleware (outside the front's) rewrites the errors of the protocol routes:

- Open Inference Protocol v2 (``/v2``): ``{"error": "message"}``, as tritonclient reads it;
- TorchServe (``/predictions``, ``/ping``): ``{"code": 404, "type": "ModelNotFoundException",
  "message": "..."}``, and ``{"status": "Unhealthy"}`` from ``/ping``;
- the original VisionQueue (``/api``, ``/health``): FastAPI's ``{"detail": "message"}``.

The status code and headers (``Retry-After``, ``WWW-Authenticate``) are kept.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Shape = Callable[[int, str, str], dict[str, Any]]


def v2_error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": message}


def torchserve_error(status: int, code: str, message: str) -> dict[str, Any]:
    kind = "".join(part.title() for part in code.split("_"))
    return {"code": status, "type": f"{kind}Exception", "message": message}


def torchserve_ping_error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"status": "Unhealthy", "message": message}


def legacy_error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"detail": message}


def shape_for(path: str) -> Shape | None:
    """Return the error shape of the protocol serving ``path``, or None for native routes."""
    if path == "/v2" or path.startswith("/v2/"):
        return v2_error
    if path == "/ping":
        return torchserve_ping_error
    if path.startswith("/predictions/"):
        return torchserve_error
    if path == "/health" or path.startswith("/api/"):
        return legacy_error
    return None


def reshape(body: bytes, status: int, shape: Shape) -> bytes | None:
    """Return ``body`` (our envelope) in ``shape``, or None if it is not our envelope."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict) or "message" not in error:
        return None
    return json.dumps(shape(status, str(error.get("code", "")), str(error["message"]))).encode()


class ProtocolErrorShapes:
    """Rewrite the error envelope of protocol routes into that protocol's error body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        shape = shape_for(scope.get("path", "")) if scope["type"] == "http" else None
        if shape is None:
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        chunks: list[bytes] = []

        async def shaping_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and int(message["status"]) >= 400:
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            status = int(held["status"])
            new_body = reshape(body, status, shape)
            headers = list(held.get("headers", []))
            if new_body is not None:
                body = new_body
                headers = [
                    (k, v)
                    for k, v in headers
                    if k.lower() not in (b"content-length", b"content-type")
                ]
                headers += [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
            await send({**held, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, shaping_send)
