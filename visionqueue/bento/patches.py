"""Every patch of a BentoML internal, in one module, applied explicitly at worker start.

The services call ``apply_bentoml_patches`` from their ``__init__`` (BentoML runs it in each
worker process); importing this module changes nothing. A patch is applied only on the exact
BentoML release it was written against (``TESTED_BENTOML``, the pin in pyproject.toml) and only
while every attribute it touches is still there; otherwise it is skipped with a warning and
BentoML's own behaviour stays. ``revert_bentoml_patches`` undoes them (tests).

The patches, each described in its own docstring and in docs/bentoml-patches.md:

- ``io-mime-type-cache``: ``IOMixin.mime_type`` computed once per IO class;
- ``request-timer-cancel``: ``TimeoutMiddleware`` cancels its per-request timer;
- ``greedy-batching``: ``CorkDispatcher.controller`` dispatches whenever the model is free;
- ``no-url-uploads``: ``MultipartSerde.ensure_file`` never downloads a URL sent as a form
  field (``visionqueue.bento.upload_fields``);
- ``route-template-labels``: ``RunnerTrafficMetricsMiddleware`` labels requests by route
  template, not raw path (``visionqueue.bento.route_labels``).

One more BentoML workaround is configuration, not a patch: ``NO_SESSION_RECYCLING`` below.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from visionqueue.bento import internals

logger = logging.getLogger(__name__)

TESTED_BENTOML = "1.4.40"
BATCH_POLICIES = ("greedy", "bentoml")

NO_SESSION_RECYCLING = {"max_requests": 2**62, "max_age": 1e12}
"""``runner_connection`` for a service others call: never recycle the client session.

Upstream: bentoml/BentoML#5540. BentoML 1.4.40 recycles the inter-service aiohttp session
every 100 requests / 300 s and closes it under requests still in flight
(``ServerDisconnectedError``, then an HTTP 500 at concurrency >= 8). BentoML's own
``runner_connection`` setting turns recycling off;
tests/integration/test_predict_concurrency.py fails without it.
"""


@dataclass(frozen=True)
class _Patch:
    """One replaced attribute: where it lives, what it needs, how to build its replacement."""

    name: str
    locate: Callable[[], Any]  # the class whose attribute is replaced
    attribute: str
    missing: Callable[[Any], list[str]]  # what the replacement relies on and cannot find
    replacement: Callable[[Any], Any]  # from the original attribute (as stored on the class)


# name -> (class, attribute, original value as stored in the class __dict__)
_applied: dict[str, tuple[Any, str, Any]] = {}


# --- io-mime-type-cache --------------------------------------------------------------------


def _cached_mime_type(original: Any) -> Any:
    """Memoise ``IOMixin.mime_type`` per IO class.

    Symptom: ``IOMixin.mime_type`` builds a pydantic ``TypeAdapter`` and a full JSON schema of
    the IO model on every call, and BentoML calls it on every response (and on the client
    side of every inter-service call) to pick the ``Content-Type``: ~5% of the classifier's
    event-loop samples at concurrency 1 (py-spy). The answer depends on the class only.
    Upstream: no issue found; bentoml/BentoML#4784 is the same kind of per-response
    recomputation (fixed there by caching).
    """
    compute = original.__func__
    cache: dict[type, str] = {}

    def mime_type(cls: Any) -> str:
        try:
            return cache[cls]
        except KeyError:
            return cache.setdefault(cls, compute(cls))

    mime_type.__wrapped__ = compute  # type: ignore[attr-defined]
    return classmethod(mime_type)


def _mime_type_missing(io_mixin: Any) -> list[str]:
    found = io_mixin.__dict__.get("mime_type")
    return [] if isinstance(found, classmethod) else ["IOMixin.mime_type (a classmethod)"]


def _io_mixin() -> Any:
    return internals.io_mixin()


# --- request-timer-cancel ------------------------------------------------------------------


async def _timed_call(self: Any, scope: Any, receive: Any, send: Any) -> None:
    """BentoML's request deadline (504 if no response starts in time), timer cancelled after.

    Symptom: ``TimeoutMiddleware`` arms a ``traffic.timeout`` timer (120 s here) per request
    and never cancels it. The timer holds the request's context (its tracing span, BentoML's
    request context) until it fires, so a front kept ~10 KB per request alive for two
    minutes: +50 MB in a 60 s soak at 50 req/s (tracemalloc). This keeps the same 504 and
    cancels the timer once the response starts. Upstream: no issue found.
    """
    from starlette.responses import JSONResponse

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


def _timer_cancel(original: Any) -> Any:
    _timed_call.__wrapped__ = original  # type: ignore[attr-defined]
    return _timed_call


def _timeout_middleware_missing(middleware: Any) -> list[str]:
    missing = [] if callable(getattr(middleware, "_set_timer_out", None)) else ["_set_timer_out"]
    probe = middleware(app=None, timeout=1.0)
    return missing + [name for name in ("app", "timeout") if not hasattr(probe, name)]


def _timeout_middleware() -> Any:
    return internals.timeout_middleware()


# --- greedy-batching -----------------------------------------------------------------------


async def _greedy_controller(self: Any) -> None:
    """Dispatch whatever is queued whenever the model is free; never poll, never linger.

    Symptom: BentoML 1.4's dispatcher holds a request back while the mean wait of recent
    batches says more may come. Under load that mean grows with queueing delay and keeps
    growing once load stops: a lone request then waits hundreds of ms for company that never
    comes (and its own wait feeds the mean). Its controller also polls every millisecond
    while a batch runs. This one keeps BentoML's batching and latency deadline (requests
    queued past ``max_latency`` are cancelled, BentoML then answers 503) but dispatches as
    soon as the model is free, holding everything that queued meanwhile, and sleeps until a
    request arrives or the running batch finishes. Upstream: bentoml/BentoML#4753 asks for a
    pluggable batching policy; none exists in 1.4.40.
    """

    def ready() -> bool:
        return bool(self._queue) and not self._sema.is_locked()

    while True:
        try:
            async with self._wake_event:
                await self._wake_event.wait_for(ready)
            now = time.time()
            while self._queue and now - self._queue[0].enqueue_time >= self.max_latency:
                self._queue.popleft().future.cancel()
            if not self._queue:
                continue
            self._sema.acquire()
            batch = tuple(self._get_inputs())
            self._loop.create_task(_outbound_then_wake(self, batch))
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop must survive one bad batch, as BentoML's does
            logger.exception("error dispatching a batch")
            await asyncio.sleep(0.01)  # a persistent error must not spin the event loop


async def _outbound_then_wake(self: Any, batch: tuple[Any, ...]) -> None:
    try:
        await self.outbound_call(batch)  # releases the semaphore when it finishes
    finally:
        async with self._wake_event:
            self._wake_event.notify_all()


def _greedy(original: Any) -> Any:
    _greedy_controller.__wrapped__ = original  # type: ignore[attr-defined]
    return _greedy_controller


def _dispatcher_missing(dispatcher: Any) -> list[str]:
    job_type = internals.dispatcher_job()
    missing = [
        name
        for name in ("controller", "outbound_call", "_get_inputs", "_loop", "_wake_event")
        if not hasattr(dispatcher, name)
    ]
    probe = dispatcher(1000, 4, fallback=lambda: None, get_batch_size=lambda _: 1)
    missing += [name for name in ("_queue", "max_latency", "_sema") if not hasattr(probe, name)]
    sema = getattr(probe, "_sema", None)
    missing += [f"_sema.{name}" for name in ("is_locked", "acquire") if not hasattr(sema, name)]
    fields = getattr(job_type, "__annotations__", {})
    missing += [f"Job.{name}" for name in ("enqueue_time", "future") if name not in fields]
    return missing


def _cork_dispatcher() -> Any:
    return internals.cork_dispatcher()


def _multipart_serde() -> Any:
    return internals.multipart_serde()


def _no_url_fetch(original: Any) -> Any:
    from visionqueue.bento.upload_fields import refuse_url_upload

    return staticmethod(refuse_url_upload)


def _traffic_metrics() -> Any:
    return internals.traffic_metrics_middleware()


def _template_labels(original: Any) -> Any:
    from visionqueue.bento.route_labels import labelled_by_template

    return labelled_by_template(original)


PATCHES = {
    patch.name: patch
    for patch in (
        _Patch("io-mime-type-cache", _io_mixin, "mime_type", _mime_type_missing, _cached_mime_type),
        _Patch(
            "request-timer-cancel",
            _timeout_middleware,
            "__call__",
            _timeout_middleware_missing,
            _timer_cancel,
        ),
        _Patch("greedy-batching", _cork_dispatcher, "controller", _dispatcher_missing, _greedy),
        _Patch("no-url-uploads", _multipart_serde, "ensure_file", lambda _: [], _no_url_fetch),
        _Patch(
            "route-template-labels",
            _traffic_metrics,
            "__call__",
            lambda _: [],
            _template_labels,
        ),
    )
}


def _unusable(patch: _Patch, version: str) -> str | None:
    """Return why ``patch`` cannot be applied on this BentoML, or None if it can."""
    if version != TESTED_BENTOML:
        return f"BentoML {version} is not the release it was written for ({TESTED_BENTOML})"
    try:
        owner = patch.locate()
        missing = [] if patch.attribute in owner.__dict__ else [patch.attribute]
        missing += patch.missing(owner)
    except Exception as exc:  # an import or constructor that changed shape
        return f"BentoML's internals changed ({type(exc).__name__}: {exc})"
    if missing:
        return f"{owner.__name__} lacks {', '.join(missing)}"
    return None


def apply_bentoml_patches(batch_wait_policy: str = "greedy") -> list[str]:
    """Apply every patch this process wants (``VQ_BATCH_WAIT_POLICY``); return those in force.

    Idempotent; a patch that does not fit the installed BentoML is skipped with a warning.
    """
    import bentoml

    if batch_wait_policy not in BATCH_POLICIES:
        raise ValueError(
            f"unknown batch policy {batch_wait_policy!r}; choose from {BATCH_POLICIES}"
        )
    wanted = [
        "io-mime-type-cache",
        "request-timer-cancel",
        "no-url-uploads",
        "route-template-labels",
    ]
    if batch_wait_policy == "greedy":
        wanted.append("greedy-batching")
    else:
        revert_bentoml_patches(["greedy-batching"])
    for name in wanted:
        if name in _applied:
            continue
        patch = PATCHES[name]
        reason = _unusable(patch, bentoml.__version__)
        if reason is not None:
            logger.warning(
                "BentoML patch %s not applied: %s; BentoML's own behaviour applies "
                "(see docs/bentoml-patches.md)",
                name,
                reason,
            )
            continue
        owner = patch.locate()
        original = owner.__dict__[patch.attribute]
        setattr(owner, patch.attribute, patch.replacement(original))
        _applied[name] = (owner, patch.attribute, original)
    return [name for name in PATCHES if name in _applied]


def revert_bentoml_patches(names: list[str] | None = None) -> None:
    """Restore BentoML's own attributes (all patches, or ``names``)."""
    for name in list(names if names is not None else _applied):
        if name in _applied:
            owner, attribute, original = _applied.pop(name)
            setattr(owner, attribute, original)


def applied_bentoml_patches() -> list[str]:
    """Return the names of the patches in force in this process."""
    return [name for name in PATCHES if name in _applied]
