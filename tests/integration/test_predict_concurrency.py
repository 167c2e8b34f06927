"""Sustained concurrency: no errors (the BentoML session-recycling trap), real batches."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from tests.support import images

pytestmark = pytest.mark.integration

REQUESTS = 240
CONCURRENCY = 24


async def _hammer(url: str) -> list[int]:
    payloads = [images.jpeg(320, 240, seed=i % 8) for i in range(8)]
    statuses: list[int] = []
    sem = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(i: int) -> None:
            async with sem:
                resp = await client.post(
                    f"{url}/predict", files={"image": ("a.jpg", payloads[i % 8])}
                )
                statuses.append(resp.status_code)

        await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    return statuses


def _batch_histogram(metrics: str) -> tuple[float, float]:
    """Return (batches of size <= 1, all batches) from the adaptive batch-size histogram."""
    le1 = total = 0.0
    for line in metrics.splitlines():
        if not line.startswith("bentoml_service_adaptive_batch_size_bucket"):
            continue
        value = float(line.rsplit(" ", 1)[1])
        if re.search(r'le="1(\.0)?"', line):
            le1 += value
        if 'le="+Inf"' in line:
            total += value
    return le1, total


def test_concurrent_predictions_have_no_errors_and_are_batched(bento_url: str) -> None:
    before = _batch_histogram(httpx.get(f"{bento_url}/metrics", timeout=10).text)
    statuses = asyncio.run(_hammer(bento_url))
    assert len(statuses) == REQUESTS
    assert statuses.count(200) == REQUESTS, {s: statuses.count(s) for s in set(statuses)}
    le1, total = _batch_histogram(httpx.get(f"{bento_url}/metrics", timeout=10).text)
    batches = total - before[1]
    single = le1 - before[0]
    assert batches > 0
    assert single < batches, "every batch had one image: adaptive batching did not batch"
    assert batches < REQUESTS, "fewer batches than requests means some held several images"
