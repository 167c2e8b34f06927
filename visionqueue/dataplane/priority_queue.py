"""The classifier worker's priority batch queue: interactive first.

The classes of ``visionqueue.dataplane.priority`` share one classifier worker's forward
passes, served in this order: ``interactive`` (a person waits: ``/predict``, v2 infer,
TorchServe, the web page), ``jobs`` (``/v1/jobs``, ``/classify``, the original upload route)
and ``bulk`` (jobs submitted with ``priority=low``, dataset batches). ``PriorityBatchQueue``
runs one forward pass at a time per worker, across every served model, and picks each batch
like this:

- the highest class with work queued goes next, its oldest call first (a job's ``high``
  rank ahead of ``normal`` within ``jobs``), up to that class's batch size: a small bulk
  batch is the most a person's request can find in front of it (a forward pass that has
  started cannot be shared);
- a lower class is never starved for good: a class with work queued that has been passed
  over for ``share_every`` batches in a row runs the next one. So while interactive traffic
  keeps the model busy, jobs and bulk each still get at least one batch in every
  ``share_every + 2``; when it leaves room, lower classes fill all of it (the queue never
  idles while work is queued);
- a call whose deadline passes while it waits is answered at that moment with
  ``DeadlineExceeded`` and taken out: its forward pass never runs.

Pure asyncio over an async ``forward(api, crops)``, so unit tests drive it with a counted
forward; the classifier worker (``model_host``) gives it BentoML's batch dispatcher, one
batch at a time.

**Background lanes.** Given a ``background`` forward and ``lanes``, job and bulk passes no
longer take turns with interactive ones: up to ``lanes`` of them run side by side on that
forward while interactive passes keep the serial one to themselves. The classifier worker
runs the lanes on single-threaded sessions in threads of lowered CPU priority
(``cpu_priority``), so a person's pass arriving while job passes run is not queued behind
them: the kernel gives its threads the cores, and the job passes go on with what is left.
Between ``jobs`` and ``bulk`` the order and the sharing rule above still hold. What is left
can be nothing: interactive passes back to back on every core leave a lane (at
``SCHED_IDLE``, almost) no CPU. So the sharing rule spans the two paths too: once the
serial path has run ``share_every`` interactive passes in a row while job or bulk calls
waited for a lane, it runs the next job or bulk batch itself, at the interactive pass's
priority (a serial path that goes idle left the lanes the cores, and starts counting again).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

import numpy as np

from visionqueue.dataplane.priority import Priority


class DeadlineExceeded(Exception):
    """A call waited past its deadline; its forward pass was not run."""

    error_code = HTTPStatus.GATEWAY_TIMEOUT  # what the crop socket answers (as BentoML would)

    def __init__(self, priority: Priority, waited_s: float) -> None:
        super().__init__(f"waited {waited_s * 1000:.0f} ms in the {priority.label} queue")
        self.priority = priority
        self.waited_s = waited_s


class QueueMetrics(Protocol):
    """What the queue reports per class (``visionqueue.bento.metrics.ClassMetrics``)."""

    def waited(self, priority: Priority, seconds: float) -> None: ...

    def ran(self, priority: Priority, images: int) -> None: ...

    def expired(self, priority: Priority) -> None: ...


class _NoMetrics:
    def waited(self, priority: Priority, seconds: float) -> None:
        pass

    def ran(self, priority: Priority, images: int) -> None:
        pass

    def expired(self, priority: Priority) -> None:
        pass


Forward = Callable[[str, np.ndarray], Awaitable[np.ndarray]]  # (api, crops) -> rows


@dataclass(order=True)
class _Call:
    rank: int
    seq: int
    api: str = field(compare=False)
    crops: np.ndarray = field(compare=False)
    priority: Priority = field(compare=False)
    queued_at: float = field(compare=False)
    future: asyncio.Future[np.ndarray] = field(compare=False)
    timer: asyncio.TimerHandle | None = field(compare=False, default=None)


@dataclass(frozen=True)
class RanBatch:
    """One forward pass the queue ran: its number, class, API and images (``history``)."""

    number: int
    priority: Priority
    api: str
    images: int


class PriorityBatchQueue:
    """One worker's forward passes, interactive first; see the module docstring."""

    def __init__(
        self,
        forward: Forward,
        max_batch: Mapping[Priority, int],
        share_every: int = 8,
        metrics: QueueMetrics | None = None,
        history: int = 0,
        background: Forward | None = None,
        lanes: int = 0,
    ) -> None:
        if share_every < 1 or any(max_batch.get(c, 0) < 1 for c in Priority):
            raise ValueError("share_every and every class's batch size must be at least 1")
        if (background is None) != (lanes < 1):
            raise ValueError("background lanes need both a background forward and lanes >= 1")
        self._forward = forward
        self._background = background
        self._lanes = lanes
        # the classes the serial loop serves; with lanes, jobs and bulk run on those
        self._serial_classes = (
            (Priority.INTERACTIVE,) if background is not None else tuple(Priority)
        )
        self._lane_classes = tuple(c for c in Priority if c not in self._serial_classes)
        self._lane_wake: asyncio.Event | None = None
        self._lane_runner: asyncio.Task[None] | None = None
        self._lane_passes: set[asyncio.Task[None]] = set()  # the passes running in lanes
        self._max_batch = dict(max_batch)
        self._share_every = share_every
        self._metrics = metrics or _NoMetrics()
        self._queues: dict[Priority, list[_Call]] = {c: [] for c in Priority}
        self._passed_over = dict.fromkeys(Priority, 0)
        # interactive passes the serial path ran in a row while lane work waited
        self._serial_streak = 0
        self._seq = itertools.count()
        self._batches = itertools.count(1)
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self.history: list[RanBatch] = []  # the last ``history`` batches, for tests and probes
        self._history_size = history

    def queued(self, priority: Priority) -> int:
        """Calls of ``priority`` waiting (those past their deadline excluded)."""
        return sum(1 for call in self._queues[priority] if not call.future.done())

    async def submit(
        self,
        api: str,
        crops: np.ndarray,
        priority: Priority = Priority.INTERACTIVE,
        timeout_s: float | None = None,
        rank: int = 0,
    ) -> np.ndarray:
        """Classify ``crops`` with ``api`` in ``priority``; return its rows.

        Raises ``DeadlineExceeded`` once ``timeout_s`` passes before its forward pass starts.
        """
        limit = self._max_batch[priority]
        if len(crops) > limit:  # a pass of this class never exceeds its batch size
            parts = [
                self.submit(api, crops[i : i + limit], priority, timeout_s, rank)
                for i in range(0, len(crops), limit)
            ]
            return np.concatenate(await asyncio.gather(*parts))
        loop = asyncio.get_running_loop()
        call = _Call(
            rank, next(self._seq), api, crops, priority, time.monotonic(), loop.create_future()
        )
        if timeout_s is not None:
            call.timer = loop.call_later(max(0.0, timeout_s), self._expire, call)
        heapq.heappush(self._queues[priority], call)
        self._start(loop)
        return await call.future

    def _expire(self, call: _Call) -> None:
        if not call.future.done():
            call.future.set_exception(
                DeadlineExceeded(call.priority, time.monotonic() - call.queued_at)
            )
            self._metrics.expired(call.priority)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        if self._background is not None:
            if self._lane_wake is None:
                self._lane_wake = asyncio.Event()
            self._lane_wake.set()
            if self._lane_runner is None or self._lane_runner.done():
                self._lane_runner = loop.create_task(self._run_lanes())

    def _next_class(self, classes: tuple[Priority, ...]) -> Priority | None:
        waiting = [c for c in classes if self._drop_done(c)]
        if not waiting:
            return None
        # a lower class passed over ``share_every`` times runs now (the lowest first)
        for priority in sorted(waiting, reverse=True):
            if self._passed_over[priority] >= self._share_every:
                return priority
        return min(waiting)

    def _drop_done(self, priority: Priority) -> bool:
        queue = self._queues[priority]
        while queue and queue[0].future.done():  # expired, or its caller went away
            heapq.heappop(queue)
        return bool(queue)

    def _take(self, priority: Priority) -> list[_Call]:
        """Pop the oldest calls of ``priority`` for one API, up to its batch size."""
        queue = self._queues[priority]
        first = heapq.heappop(queue)
        batch, size, kept = [first], len(first.crops), []
        limit = self._max_batch[priority]
        while queue and size < limit:
            call = heapq.heappop(queue)
            if call.future.done():
                continue
            # one pass, one model and one crop size: a caller's malformed crops fail alone
            if (
                call.api != first.api
                or call.crops.shape[1:] != first.crops.shape[1:]
                or size + len(call.crops) > limit
            ):
                kept.append(call)
                continue
            batch.append(call)
            size += len(call.crops)
        for call in kept:
            heapq.heappush(queue, call)
        return batch

    def _pick(self, classes: tuple[Priority, ...]) -> Priority | None:
        """The class of the next pass among ``classes``; count the others passed over."""
        priority = self._next_class(classes)
        if priority is not None:
            for other in classes:
                if other == priority:
                    self._passed_over[other] = 0
                elif self._queues[other]:
                    self._passed_over[other] += 1
        return priority

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            priority = self._lent_class()
            if priority is None:
                priority = self._pick(self._serial_classes)
            if priority is None:
                self._serial_streak = 0  # the cores had a gap: the lanes had it
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take(priority)
            await self._run_batch(priority, batch, self._forward)

    def _lent_class(self) -> Priority | None:
        """With lanes: the job or bulk class the serial path runs next instead of an
        interactive pass (``share_every`` of those in a row while lane work waited)."""
        if not self._lane_classes or not any(self._drop_done(c) for c in self._serial_classes):
            return None  # no lanes, or no interactive pass to run: nothing is passed over
        if not any(self._drop_done(c) for c in self._lane_classes):
            self._serial_streak = 0
            return None
        if self._serial_streak < self._share_every:
            self._serial_streak += 1  # the interactive pass about to run passes them over
            return None
        self._serial_streak = 0
        return self._pick(self._lane_classes)

    async def _run_lanes(self) -> None:
        """Keep up to ``lanes`` job and bulk passes running on the background forward."""
        assert self._lane_wake is not None and self._background is not None
        while True:
            busy = len(self._lane_passes) >= self._lanes
            priority = None if busy else self._pick(self._lane_classes)
            if priority is None:
                self._lane_wake.clear()
                await self._lane_wake.wait()
                continue
            batch = self._take(priority)
            task = asyncio.get_running_loop().create_task(
                self._run_batch(priority, batch, self._background)
            )
            self._lane_passes.add(task)
            task.add_done_callback(self._lane_done)

    def _lane_done(self, task: asyncio.Task[None]) -> None:
        self._lane_passes.discard(task)
        if self._lane_wake is not None:
            self._lane_wake.set()

    async def _run_batch(self, priority: Priority, batch: list[_Call], forward: Forward) -> None:
        started = time.monotonic()
        for call in batch:
            if call.timer is not None:
                call.timer.cancel()  # its forward pass starts now: the deadline has held
            self._metrics.waited(priority, started - call.queued_at)
        crops = np.concatenate([call.crops for call in batch])
        api = batch[0].api
        self._record(priority, api, len(crops))
        try:
            rows = await forward(api, crops)
        except Exception as exc:  # every caller of this batch gets its failure
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        self._metrics.ran(priority, len(crops))
        offset = 0
        for call in batch:
            end = offset + len(call.crops)
            if not call.future.done():
                call.future.set_result(rows[offset:end])
            offset = end

    def _record(self, priority: Priority, api: str, images: int) -> None:
        if self._history_size:
            self.history.append(RanBatch(next(self._batches), priority, api, images))
            del self.history[: -self._history_size]


async def http_call(
    queue: PriorityBatchQueue, api: str, crops: np.ndarray, priority: str, timeout_ms: int
) -> tuple[int, Any]:
    """Run one call of the classifier's HTTP entry; return ``(status, body)``.

    200 with the rows as lists, 422 for an unknown class or a negative timeout, 504 once the
    timeout passes before its forward pass (in the error envelope).
    """
    try:
        parsed = Priority.parse(priority)
        if timeout_ms < 0:
            raise ValueError("timeout_ms must not be negative")
    except ValueError as exc:
        return 422, _error("validation_error", str(exc))
    try:
        rows = await queue.submit(api, crops, parsed, timeout_ms / 1000 if timeout_ms else None)
    except DeadlineExceeded as exc:
        return 504, _error("deadline_exceeded", str(exc))
    return 200, rows.tolist()


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
