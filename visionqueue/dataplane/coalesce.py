"""Merge the crops of concurrent requests into fewer calls to the batched classifier.

Every call into the classifier service costs a fixed few milliseconds of CPU on both sides
(HTTP, serialization, tracing, BentoML's dispatcher) whatever its size. A front worker
under load has many crops ready at once; sending them one call each pays that cost per
image. The coalescer sends whatever is waiting as one ``(N, 224, 224, 3)`` call, with at
most ``max_in_flight`` calls outstanding, so the classifier always has the next call queued
while it computes the current one. A lone request is sent at once: nothing waits on
purpose. BentoML's adaptive batching still forms the final batches across every caller
(other front workers, other replicas).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

BatchCall = Callable[[np.ndarray], Awaitable[np.ndarray]]


@dataclass
class _Pending:
    crop: np.ndarray
    future: asyncio.Future[np.ndarray]


class CropCoalescer:
    """Send crops to ``call`` in merged batches of at most ``max_batch`` rows."""

    def __init__(self, call: BatchCall, max_batch: int, max_in_flight: int = 2) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._call = call
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: deque[_Pending] = deque()
        self._in_flight = 0
        self._senders: set[asyncio.Task[None]] = set()

    async def classify(self, crop: np.ndarray) -> np.ndarray:
        """Classify one ``(224, 224, 3)`` crop; return its output row."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(crop, future))
        self._kick()
        return await future

    async def classify_many(self, crops: np.ndarray) -> np.ndarray:
        """Classify ``(N, 224, 224, 3)`` crops queued together; return their ``N`` output rows.

        The crops join the queue at once, so they leave in as few calls as the batch size
        allows (one request's images are classified together, not one call each).
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[np.ndarray]] = []
        for crop in crops:
            futures.append(loop.create_future())
            self._pending.append(_Pending(crop, futures[-1]))
        self._kick()
        return np.concatenate(await asyncio.gather(*futures))

    def _kick(self) -> None:
        while self._pending and self._in_flight < self._max_in_flight:
            batch = self._take()
            if not batch:
                return
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        while self._pending and len(batch) < self._max_batch:
            item = self._pending.popleft()
            if not item.future.done():  # a caller that went away needs no answer
                batch.append(item)
        return batch

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            out = await self._call(np.stack([item.crop for item in batch]))
        except asyncio.CancelledError:  # shutting down: the waiters are cancelled too
            for item in batch:
                item.future.cancel()
            raise
        except Exception as exc:  # every waiter of this call gets its failure
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        else:
            for row, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result(out[row : row + 1])
        finally:
            self._in_flight -= 1
            self._kick()
