"""The error envelope: every error response leaves the front as ``{"error": {"code", "message"}}``.

BentoML and Starlette answer some errors themselves (request validation, unknown routes,
methods) in their own shapes; ``ErrorEnvelope`` rewrites every such error into our
envelope so clients see one format, and never a traceback. Our own errors pass unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from visionqueue.api.middleware.asgi import ASGIApp, Message, Receive, Scope, Send, send_json
from visionqueue.core.errors import error_body

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
    504: "gateway_timeout",
}
# Sent with a 429/503 whose raiser named no retry time: clients are promised one.
DEFAULT_RETRY_AFTER_S = 5
KEPT_HEADERS = (b"retry-after", b"www-authenticate", b"allow", b"x-request-id")


def _validation_message(detail: Any) -> str:
    parts = []
    for item in detail if isinstance(detail, list) else []:
        loc = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body",))
        parts.append(f"{loc or 'request'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is invalid"


def rewrite_error(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """Turn a framework error response into our envelope; keep ours untouched."""
    try:
        parsed: Any = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return status, parsed
    if isinstance(parsed, list) and len(parsed) == 1:  # BentoML wraps some errors in a 1-tuple
        parsed = parsed[0]
    if isinstance(parsed, dict) and "detail" in parsed and isinstance(parsed["detail"], list):
        # pydantic validation of the request (BentoML answers 400, FastAPI 422)
        fields = [
            {"loc": [str(p) for p in d.get("loc", ())], "msg": d.get("msg"), "type": d.get("type")}
            for d in parsed["detail"]
            if isinstance(d, dict)
        ]
        missing = [f for f in fields if f["type"] == "missing"]
        if missing and len(missing) == len(fields):
            return 400, error_body("missing_field", _validation_message(parsed["detail"]))
        return 422, error_body(
            "validation_error", _validation_message(parsed["detail"]), fields=fields
        )
    code = STATUS_CODES.get(status, "internal_error" if status >= 500 else "bad_request")
    if status >= 500:
        return status, error_body(code, "an internal error occurred; it has been logged")
    message = None
    if isinstance(parsed, dict):
        message = parsed.get("error") or parsed.get("detail")
    elif body and len(body) < 300:
        message = body.decode("utf-8", "replace").strip()
    return status, error_body(code, str(message or code.replace("_", " ")))


class ErrorEnvelope:
    """Rewrite every error response (status >= 400) of the app into the envelope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error_status: int | None = None
        error_headers: list[tuple[bytes, bytes]] = []
        error_chunks: list[bytes] = []

        async def enveloping_send(message: Message) -> None:
            nonlocal error_status, error_headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if status >= 400:
                    error_status, error_headers = status, list(message.get("headers", []))
                    return
                await send(message)
                return
            if message["type"] == "http.response.body" and error_status is not None:
                error_chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await _send_rewritten(send, error_status, error_headers, error_chunks)
                return
            await send(message)

        await self.app(scope, receive, enveloping_send)


async def _send_rewritten(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> None:
    new_status, body = rewrite_error(status, b"".join(chunks))
    keep = {k.decode().lower(): v.decode() for k, v in headers if k.lower() in KEPT_HEADERS}
    if new_status in (429, 503):
        keep.setdefault("retry-after", str(DEFAULT_RETRY_AFTER_S))
    await send_json(send, new_status, body, keep)
