"""Helpers for job tests on the real stack: small images, concurrent submission, row checks."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from persistence.models import Job
from tests.support import images
from tests.support.waiting import wait_until

FINAL_STATUSES = ("completed", "failed", "cancelled")
SMALL_SIZES = ((64, 64), (96, 72), (128, 96), (160, 120), (120, 160))
# Celery logs one line per finished task, with the value ``classify_job`` returned.
_OUTCOME = re.compile(r"Task visionqueue\.classify_job\[[^\]]+\] succeeded in [^:]+: '(\w+)'")
# and one line per retry it plans (``jobs.tasks.classify_job``): the job and the error code
_RETRY = re.compile(r"job ([0-9a-f-]+): (\w+); retry in ")


def small_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Return ``count`` distinct small JPEGs (64x64 .. 160x120)."""
    return [images.jpeg(*SMALL_SIZES[i % len(SMALL_SIZES)], seed=seed + i) for i in range(count)]


async def _post_all(
    url: str, payloads: Sequence[bytes], concurrency: int, metadata: dict[str, Any] | None
) -> list[httpx.Response]:
    import json

    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def post(i: int, data: bytes) -> httpx.Response:
            form = {"metadata": json.dumps({**(metadata or {}), "n": i})}
            files = {"image": (f"{i}.jpg", data, "image/jpeg")}
            async with gate:
                try:
                    return await client.post("/classify", files=files, data=form)
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    # a pooled connection closed under us (seen once at concurrency 32 on a
                    # loaded machine); had the server taken the first, its "n" would be
                    # there twice and the callers' exactly-once checks would say so
                    return await client.post("/classify", files=files, data=form)

        return await asyncio.gather(*(post(i, d) for i, d in enumerate(payloads)))


def submit_concurrently(
    url: str,
    payloads: Sequence[bytes],
    *,
    concurrency: int = 32,
    metadata: dict[str, Any] | None = None,
) -> list[str]:
    """POST every payload to ``/classify`` (at most ``concurrency`` at once); return task ids.

    Each job's metadata is ``metadata`` plus ``{"n": index}``.
    """
    responses = asyncio.run(_post_all(url, payloads, concurrency, metadata))
    refused = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 202]
    assert not refused, f"{len(refused)} submissions refused, e.g. {refused[:3]}"
    return [str(r.json()["task_id"]) for r in responses]


@contextlib.contextmanager
def database(url: str) -> Iterator[Engine]:
    """Yield an engine on the stack's database that holds no connection between queries."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def job_rows(engine: Engine, ids: Sequence[str]) -> dict[str, Job]:
    """Return the rows of ``ids`` (detached, fully loaded) by id."""
    with Session(engine, expire_on_commit=False) as session:
        rows = session.scalars(select(Job).where(Job.id.in_(list(ids)))).all()
        session.expunge_all()
    return {row.id: row for row in rows}


def status_counts(engine: Engine, ids: Sequence[str]) -> Counter[str]:
    """Count the rows of ``ids`` by status."""
    return Counter(row.status for row in job_rows(engine, ids).values())


def wait_all_final(engine: Engine, ids: Sequence[str], timeout: float) -> dict[str, Job]:
    """Wait until every job of ``ids`` is in a final status; return the rows."""

    def probe() -> dict[str, Job] | None:
        rows = job_rows(engine, ids)
        done = len(rows) == len(ids) and all(r.status in FINAL_STATUSES for r in rows.values())
        return rows if done else None

    try:
        return wait_until(probe, timeout, f"{len(ids)} jobs final", interval=0.5)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; statuses now {dict(status_counts(engine, ids))}") from None


def worker_outcomes(*logs: Path) -> Counter[str]:
    """Count what ``classify_job`` returned (completed/failed/skipped) in worker logs."""
    counts: Counter[str] = Counter()
    for log in logs:
        counts.update(_OUTCOME.findall(log.read_text(errors="replace")))
    return counts


def retries_planned(log: Path, code: str) -> set[str]:
    """Return the jobs for which a worker's log shows a retry planned after error ``code``."""
    found = _RETRY.findall(log.read_text(errors="replace"))
    return {job_id for job_id, seen in found if seen == code}


def broker_idle(broker_url: str, queue_prefix: str = "") -> bool:
    """Tell whether the Redis broker holds no queued and no unacknowledged job of ours."""
    import json

    client = redis.Redis.from_url(broker_url)
    # with a prefix, kombu prefixes every Redis key with it too (global_keyprefix)
    try:
        if client.llen(f"{queue_prefix}{queue_prefix}visionqueue"):
            return False
        for raw in client.hvals(f"{queue_prefix}unacked"):
            _message, exchange, routing_key = json.loads(raw)
            if str(exchange).startswith(queue_prefix) or str(routing_key).startswith(queue_prefix):
                return False
        return True
    finally:
        client.close()
