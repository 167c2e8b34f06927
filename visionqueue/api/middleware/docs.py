"""``/docs.json`` as sent: the OpenAPI document with ``/predict``'s real error responses.

BentoML documents ``/predict``'s errors in its own shapes; the front answers them with our
envelope instead (``envelope``), so the document is rewritten on its way out by
``visionqueue.api.openapi_errors.document_predict_errors``.
"""

from __future__ import annotations

import contextlib
import json

from visionqueue.api.middleware.asgi import ASGIApp, Message, Receive, Scope, Send
from visionqueue.api.openapi_errors import document_predict_errors

DOCS_PATH = "/docs.json"


class OpenApiErrors:
    """Serve the merged OpenAPI document with ``/predict``'s errors described as sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != DOCS_PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
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

        await self.app(scope, receive, capture)
