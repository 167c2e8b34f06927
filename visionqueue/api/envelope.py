"""ASGI middleware for the front: body-size cap, health routes and the error envelope.

BentoML and Starlette answer some errors themselves (request validation, unknown routes,
methods) in their own shapes; this middleware rewrites every such error into our
``{"error": {"code", "message"}}`` envelope so clients see one format. It also refuses a
body over the cap from its Content-Length, or as soon as a streamed body passes it,
without reading the rest. And since it changes what ``/predict``'s errors look like, it
serves the OpenAPI document (``/docs.json``) with those errors described as sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from visionqueue.api.form_guard import FORM_RULES, FormRule, form_problem
from visionqueue.api.openapi_errors import document_predict_errors
from visionqueue.core.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
HealthFn = Callable[[str], Awaitable[tuple[int, dict[str, Any]]]]

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
HEALTH_PATHS = {"/livez": "live", "/healthz": "live", "/readyz": "ready"}
# Sent with a 429/503 whose raiser named no retry time: clients are promised one.
DEFAULT_RETRY_AFTER_S = 5
PROTECTED_PREFIXES = ("/predict", "/classify", "/task-status", "/v1/jobs")


def key_owner(api_key: str) -> str:
    """Return the owner id jobs are filed under for ``api_key`` (never the key itself)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


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


class FrontMiddleware:
    """Cap request bodies, answer health probes and normalise error responses."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        health: HealthFn | None = None,
        api_keys: list[str] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.health = health
        self.owners = {key_owner(k): k for k in api_keys or []}

    def authenticate(self, scope: Scope) -> str | bool | None:
        """Return the caller's owner id, None when auth is off, False when refused."""
        if not self.owners:
            return None
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        owner = key_owner(token.strip())
        known = self.owners.get(owner)
        if known is None or not hmac.compare_digest(known, token.strip()):
            return False
        return owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self.health is not None and path in HEALTH_PATHS and scope["method"] in ("GET", "HEAD"):
            status, body = await self.health(HEALTH_PATHS[path])
            await send_json(send, status, body)
            return
        if path.startswith(PROTECTED_PREFIXES):
            owner = self.authenticate(scope)
            if owner is False:
                await send_json(
                    send,
                    401,
                    error_body(
                        "unauthorized", "a valid API key is required (Authorization: Bearer KEY)"
                    ),
                    {"www-authenticate": "Bearer"},
                )
                return
            scope.setdefault("state", {})["vq_owner"] = owner
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_json(send, 400, error_body("bad_request", "invalid Content-Length"))
                return
            if declared > self.max_body_bytes:
                await self._too_large(send)
                return
        if path == "/docs.json" and scope["method"] == "GET":
            await self._documented(scope, receive, send)
            return
        rule = FORM_RULES.get(path) if scope["method"] == "POST" else None
        if rule is not None:
            await self._checked_form(scope, receive, send, rule)
            return
        await self._guarded(scope, receive, send)

    async def _checked_form(
        self, scope: Scope, receive: Receive, send: Send, rule: FormRule
    ) -> None:
        """Read an upload form (capped), refuse a hostile shape, else replay it to the app."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
        problem = form_problem(content_type.decode("latin-1"), body, rule)
        if problem is not None:
            await send_json(send, problem.status, problem.to_body(), problem.headers())
            return
        # the closure must not keep the body alive: the framework may hold on to
        # ``receive`` (and so this closure) long after the request is done
        pending = [body]
        del body, chunks

        async def replay() -> Message:
            if not pending:
                return await receive()  # only http.disconnect is left
            return {"type": "http.request", "body": pending.pop(), "more_body": False}

        await self._guarded(scope, replay, send)

    async def _documented(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the merged OpenAPI document with ``/predict``'s real error responses."""
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await finish()

        async def finish() -> None:
            if start is None:
                return  # a body without a start: nothing sensible to send
            body = b"".join(chunks)
            if start["status"] == 200:
                with contextlib.suppress(ValueError):  # not JSON after all: pass it on as is
                    body = json.dumps(document_predict_errors(json.loads(body))).encode()
            headers = [
                (k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self._guarded(scope, receive, capture)

    async def _too_large(self, send: Send) -> None:
        await send_json(
            send,
            413,
            error_body(
                "payload_too_large",
                f"request body exceeds the limit of {self.max_body_bytes} bytes",
                max_bytes=self.max_body_bytes,
            ),
            {"connection": "close"},
        )

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        too_large = False
        started = False
        error_status: int | None = None
        error_headers: list[tuple[bytes, bytes]] = []
        error_chunks: list[bytes] = []

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def enveloping_send(message: Message) -> None:
            nonlocal started, error_status, error_headers
            if too_large:
                return  # the app's answer to a truncated body is replaced by our 413
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if status >= 400:
                    error_status, error_headers = status, list(message.get("headers", []))
                    return
                started = True
                await send(message)
                return
            if message["type"] == "http.response.body" and error_status is not None:
                error_chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._send_rewritten(send, error_status, error_headers, error_chunks)
                return
            await send(message)

        await self.app(scope, limited_receive, enveloping_send)
        if too_large and not started:
            await self._too_large(send)

    async def _send_rewritten(
        self,
        send: Send,
        status: int,
        headers: list[tuple[bytes, bytes]],
        chunks: list[bytes],
    ) -> None:
        new_status, body = rewrite_error(status, b"".join(chunks))
        keep = {
            k.decode().lower(): v.decode()
            for k, v in headers
            if k.lower() in (b"retry-after", b"www-authenticate", b"allow", b"x-request-id")
        }
        if new_status in (429, 503):
            keep.setdefault("retry-after", str(DEFAULT_RETRY_AFTER_S))
        await send_json(send, new_status, body, keep)
