"""JobBatcher: jobs that arrive while batches run leave together; each gets its own outcome."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from jobs.batching import JobBatcher


class Recorder:
    """A batch runner that records its batches and answers each id with its own value."""

    def __init__(self, hold_s: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.hold_s = hold_s
        self.lock = threading.Lock()

    def __call__(self, ids: list[str]) -> dict[str, str | BaseException]:
        with self.lock:
            self.batches.append(list(ids))
        time.sleep(self.hold_s)
        return {i: (ValueError(i) if i.startswith("bad") else f"done:{i}") for i in ids}


def run_all(batcher: JobBatcher[str], ids: list[str], stagger_s: float = 0.0) -> list[object]:
    def one(job_id: str) -> object:
        try:
            return batcher.run(job_id, timeout=10)
        except ValueError as exc:
            return exc

    with ThreadPoolExecutor(len(ids)) as pool:
        futures = []
        for job_id in ids:
            futures.append(pool.submit(one, job_id))
            time.sleep(stagger_s)
        return [f.result() for f in futures]


def test_a_lone_job_runs_at_once() -> None:
    runner = Recorder()
    batcher = JobBatcher(runner, skipped=lambda: "skipped", max_size=8)
    started = time.monotonic()
    assert batcher.run("a", timeout=5) == "done:a"
    assert time.monotonic() - started < 3  # no wait for company (wait_s is 0)
    assert runner.batches == [["a"]]


def test_jobs_arriving_while_lanes_are_busy_leave_as_one_batch() -> None:
    runner = Recorder(hold_s=1.0)
    batcher = JobBatcher(runner, skipped=lambda: "skipped", max_size=8, lanes=1)
    ids = [f"j{i}" for i in range(9)]
    results = run_all(batcher, ids, stagger_s=0.05)
    assert results == [f"done:{i}" for i in ids]  # each its own outcome, in its own thread
    # the first leaves alone; the rest queued behind it (at most 8 at a time)
    assert runner.batches[0] == ["j0"]
    assert sorted(i for b in runner.batches[1:] for i in b) == sorted(ids[1:])
    assert max(len(b) for b in runner.batches) <= 8
    assert len(runner.batches) <= 3


def test_one_jobs_exception_reaches_only_its_task() -> None:
    batcher = JobBatcher(Recorder(), skipped=lambda: "skipped", max_size=4, wait_s=0.2)
    results = run_all(batcher, ["a", "bad1", "b", "c"])
    assert results[0] == "done:a" and results[2:] == ["done:b", "done:c"]
    assert isinstance(results[1], ValueError)


def test_a_failing_batch_fails_each_of_its_jobs() -> None:
    def broken(ids: list[str]) -> dict[str, str | BaseException]:
        raise ConnectionError("database down")

    batcher: JobBatcher[str] = JobBatcher(broken, skipped=lambda: "skipped", max_size=4)
    with pytest.raises(ConnectionError):
        batcher.run("a", timeout=5)


def test_the_same_job_twice_in_a_batch_runs_once() -> None:
    runner = Recorder()
    batcher = JobBatcher(runner, skipped=lambda: "skipped", max_size=4, wait_s=0.3)
    results = run_all(batcher, ["a", "a"])
    assert sorted(map(str, results)) == ["done:a", "skipped"]
    assert runner.batches == [["a"]]


def test_waiting_for_company_fills_a_batch() -> None:
    runner = Recorder()
    batcher = JobBatcher(runner, skipped=lambda: "skipped", max_size=4, wait_s=1.0, lanes=1)
    run_all(batcher, ["a", "b", "c", "d"], stagger_s=0.02)
    assert runner.batches == [["a", "b", "c", "d"]]
