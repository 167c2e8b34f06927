"""Request limits: the body-size cap (``VQ_MAX_UPLOAD_BYTES``) and the upload-form checks.

A request that repeats Content-Type, Content-Length or Transfer-Encoding is refused (400)
first: with two copies, the form check and the framework could read different ones.

A body over the cap is refused from its Content-Length, or as soon as a streamed body
passes it, without reading the rest (413, ``payload_too_large``). The upload routes' forms
are read once (capped), checked by ``form_rules`` before any framework parses them, and
replayed to the app unchanged.
"""

from __future__ import annotations

from visionqueue.api.middleware.asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    header,
    repeated_framing_header,
    send_json,
)
from visionqueue.api.middleware.form_rules import FORM_RULES, FormRule, form_problem
from visionqueue.core.errors import error_body


class RequestLimits:
    """Cap request bodies and refuse hostile upload forms with a 4xx."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        repeated = repeated_framing_header(scope)
        if repeated is not None:
            await send_json(
                send,
                400,
                error_body("bad_request", f"the request sends the {repeated} header twice"),
                {"connection": "close"},
            )
            return
        length = header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_json(send, 400, error_body("bad_request", "invalid Content-Length"))
                return
            if declared > self.max_body_bytes:
                await self._too_large(send)
                return
        rule = FORM_RULES.get(scope.get("path", "")) if scope["method"] == "POST" else None
        if rule is not None:
            await self._checked_form(scope, receive, send, rule)
            return
        await self._capped(scope, receive, send)

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
        content_type = header(scope, b"content-type") or b""
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

        await self._capped(scope, replay, send)

    async def _capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, cutting a streamed body off at the cap and answering 413 instead."""
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_cut(message: Message) -> None:
            nonlocal started
            if too_large:
                return  # the app's answer to a truncated body is replaced by our 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, send_unless_cut)
        if too_large and not started:
            await self._too_large(send)

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
