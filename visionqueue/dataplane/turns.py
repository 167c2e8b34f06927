"""Turns on the classifier's serial path, interactive passes first.

With background lanes (``priority_queue``), job and bulk passes of a model that has no
single-threaded session (torch, OpenVINO, a GPU) still run on the serial path. ``PassTurns``
lets one pass at a time through and, when it ends, hands the turn to a waiting interactive
pass before any waiting background one, so a person's request waits for at most the pass
already running, as it does without lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator


class PassTurns:
    """One forward pass at a time; waiting ``first`` passes go before the others."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @contextlib.asynccontextmanager
    async def turn(self, first: bool) -> AsyncIterator[None]:
        if self._busy:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (0 if first else 1, next(self._seq), future))
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._hand_over()  # the turn reached us as we were cancelled: pass it on
                raise
        else:
            self._busy = True
        try:
            yield
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():  # a waiter that went away is skipped
                future.set_result(None)
                return  # still busy: the turn is the waiter's now
        self._busy = False
