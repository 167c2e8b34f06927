"""Hot-path fixes for BentoML 1.4, applied in every Bento worker (``service.py`` imports it).

``IOMixin.mime_type`` builds a pydantic ``TypeAdapter`` and a full JSON schema of the IO
model on every call, and BentoML calls it on every response (and on the client side of
every inter-service call) to pick the ``Content-Type``. The answer depends on the class
only, so it is computed once per class. Measured with py-spy on the classifier: ~5% of
the event loop's samples at concurrency 1 went to building that schema.

``TimeoutMiddleware`` arms a ``traffic.timeout`` timer (120 s here) per request and never
cancels it. The timer holds the request's context (its tracing span, BentoML's request
context) until it fires, so a front kept ~10 KB per request alive for two minutes: +50 MB
in a 60 s soak at 50 req/s, and gigabytes at GPU request rates (tracemalloc). The
replacement keeps the same 504 behaviour and cancels the timer once the response starts.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from starlette.responses import JSONResponse


@functools.cache
def cache_io_mime_types() -> None:
    """Memoise ``IOMixin.mime_type`` per IO class (idempotent)."""
    from _bentoml_sdk.io_models import IOMixin

    compute = IOMixin.mime_type.__func__  # type: ignore[attr-defined]
    cache: dict[type, str] = {}

    def mime_type(cls: Any) -> str:
        try:
            return cache[cls]
        except KeyError:
            return cache.setdefault(cls, compute(cls))

    mime_type.__wrapped__ = compute  # type: ignore[attr-defined]
    IOMixin.mime_type = classmethod(mime_type)  # type: ignore[assignment,method-assign]


async def _timed_call(self: Any, scope: Any, receive: Any, send: Any) -> None:
    """BentoML's request deadline (504 if no response starts in time), timer cancelled after."""
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, started)

    async def send_marking_start(message: Any) -> None:
        if not started.done():
            started.set_result(None)
        await send(message)

    task = asyncio.ensure_future(self.app(scope, receive, send_marking_start))
    try:
        try:
            await started
        except TimeoutError:  # what BentoML's timer sets
            if task.cancel():
                deadline = f"Not able to process the request in {self.timeout} seconds"
                await JSONResponse({"error": deadline}, status_code=504)(scope, receive, send)
            return
        await task
    finally:
        timer.cancel()  # drops the handle's reference to this request's context


@functools.cache
def cancel_request_timers() -> None:
    """Make BentoML's ``TimeoutMiddleware`` cancel its per-request timer (idempotent)."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    _timed_call.__wrapped__ = TimeoutMiddleware.__call__  # type: ignore[attr-defined]
    TimeoutMiddleware.__call__ = _timed_call  # type: ignore[method-assign]


def apply() -> None:
    cache_io_mime_types()
    cancel_request_timers()
