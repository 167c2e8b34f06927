"""Wait for something to become true, and for a job to finish: the suite's only polling loops."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
FINAL_STATUSES = ("completed", "failed", "cancelled")


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds.

    The probe may raise to stop waiting at once (a server process that exited).
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s (last: {last!r})")
        time.sleep(interval)


def wait_for_job(
    url: str, job_id: str, timeout: float = 60, *, route: str = "/v1/jobs/{id}"
) -> dict[str, Any]:
    """Poll the job's status route until the job is final; return its last body.

    ``route`` is ``/v1/jobs/{id}`` (the v1 job object) or ``/task-status/{id}`` (the seed's).
    """
    path = route.format(id=job_id)

    def final() -> dict[str, Any] | None:
        resp = httpx.get(f"{url}{path}", timeout=10)
        assert resp.status_code == 200, resp.text
        body = dict(resp.json())
        return body if body["status"] in FINAL_STATUSES else None

    return wait_until(final, timeout, f"job {job_id} final")
