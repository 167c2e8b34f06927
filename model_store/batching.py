"""Batch-forming policy for BentoML's adaptive batching dispatcher.

BentoML 1.4's dispatcher holds a request back while the mean wait of recent batches says
more may come. Under load that mean grows with queueing delay, and it keeps growing once
load stops: a lone request then waits hundreds of ms for company that never comes (and
its own wait feeds the mean). ``greedy`` keeps BentoML's batching and latency deadline
but never waits on purpose: a batch is dispatched as soon as the model is free, holding
everything that queued while the previous batch ran. An idle server answers at once; a
busy one forms full batches by itself.

BentoML's controller also polls every millisecond while a batch runs (a thousand event-loop
wake-ups a second, and up to 1 ms of idle model between batches). The greedy controller is
event-driven instead: it sleeps until a request arrives or the running batch finishes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

POLICIES = ("greedy", "bentoml")


async def _greedy_controller(self: Any) -> None:
    """Dispatch whatever is queued whenever the model is free; never poll, never linger.

    Requests that waited past the dispatcher's ``max_latency`` are cancelled (BentoML then
    answers 503), as BentoML's own controller does.
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


async def _outbound_then_wake(self: Any, batch: tuple[Any, ...]) -> None:
    try:
        await self.outbound_call(batch)  # releases the semaphore when it finishes
    finally:
        async with self._wake_event:
            self._wake_event.notify_all()


@functools.cache
def use_greedy_batching() -> None:
    """Make every dispatcher in this process dispatch without an intentional wait."""
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    # the replacement never reads the optimizer's learned wait, so nothing else changes
    CorkDispatcher.controller = _greedy_controller  # type: ignore[method-assign]


def apply_policy(policy: str) -> None:
    """Apply ``VQ_BATCH_WAIT_POLICY`` in the classifier process."""
    if policy not in POLICIES:
        raise ValueError(f"unknown batch policy {policy!r}; choose from {POLICIES}")
    if policy == "greedy":
        use_greedy_batching()
