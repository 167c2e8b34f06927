"""Gather the jobs a worker process holds into batches, so per-job costs are paid per batch.

Each Celery task thread hands its job id to the process' ``JobBatcher`` and waits for that
job's own outcome; the message is acknowledged only after it (``acks_late``), so a worker
that dies mid-batch loses nothing: the broker redelivers, the leases lapse, the sweeper
requeues. A batch runner (``jobs.classify.process_batch``) claims the batch in one
transaction, fetches and classifies its images concurrently and stores every result in
one transaction.

Batches form without waiting on purpose: while ``lanes`` batches are running, the jobs
that arrive queue up and leave together as the next batch, at most ``max_size``; a lone
job leaves at once (``wait_s`` adds an optional wait for company).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class JobBatcher(Generic[T]):
    """Run job ids through ``run_batch`` in batches of at most ``max_size``, ``lanes`` at once.

    ``run_batch`` maps each id to its outcome or to the exception its task should handle
    (retry, fail); ``skipped`` is the outcome of a second copy of a job already in the batch.
    """

    def __init__(
        self,
        run_batch: Callable[[list[str]], dict[str, T | BaseException]],
        skipped: Callable[[], T],
        max_size: int,
        wait_s: float = 0.0,
        lanes: int = 2,
    ) -> None:
        self.run_batch = run_batch
        self.max_size = max_size
        self.wait_s = wait_s
        self.lanes = lanes
        self.skipped = skipped
        self._queue: list[tuple[str, Future[T]]] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []

    def run(self, job_id: str, timeout: float | None = None) -> T:
        """Return ``job_id``'s outcome once its batch ran; raise the job's own exception."""
        future: Future[T] = Future()
        with self._cond:
            self._queue.append((job_id, future))
            self._start_lanes()
            self._cond.notify()
        return future.result(timeout)

    def _start_lanes(self) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.lanes:
            lane = threading.Thread(target=self._lane, name="vq-job-batch", daemon=True)
            lane.start()
            self._threads.append(lane)

    def _next_batch(self) -> list[tuple[str, Future[T]]]:
        with self._cond:
            while True:
                while not self._queue:
                    self._cond.wait()
                if self.wait_s and len(self._queue) < self.max_size:
                    deadline = time.monotonic() + self.wait_s
                    while len(self._queue) < self.max_size:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                if self._queue:  # (another lane may have taken them meanwhile)
                    batch = self._queue[: self.max_size]
                    del self._queue[: self.max_size]
                    return batch

    def _lane(self) -> None:
        while True:
            batch = self._next_batch()
            unique: dict[str, Future[T]] = {}
            for job_id, future in batch:
                if job_id in unique:
                    # the same job twice (a redelivery): one run, the copy is skipped
                    future.set_result(self.skipped())
                else:
                    unique[job_id] = future
            try:
                results = self.run_batch(list(unique))
            except BaseException as exc:  # every job of the batch shares the failure
                results = {job_id: exc for job_id in unique}
            for job_id, future in unique.items():
                result = results.get(job_id)
                if result is None:
                    future.set_exception(RuntimeError(f"job {job_id}: the batch gave no outcome"))
                elif isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
