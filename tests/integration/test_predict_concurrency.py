"""Sustained concurrency: no errors (the BentoML session-recycling trap), real batches."""

from __future__ import annotations

import asyncio

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


def _batches_and_images(metrics: str) -> tuple[float, float]:
    """Return (forward passes, images through them) from ``vq_inference_batch_images``."""
    batches = images = 0.0
    for line in metrics.splitlines():
        if line.startswith("vq_inference_batch_images_count"):
            batches += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vq_inference_batch_images_sum"):
            images += float(line.rsplit(" ", 1)[1])
    return batches, images


def test_concurrent_predictions_have_no_errors_and_are_batched(bento_url: str) -> None:
    before = _batches_and_images(httpx.get(f"{bento_url}/metrics", timeout=10).text)
    statuses = asyncio.run(_hammer(bento_url))
    assert len(statuses) == REQUESTS
    assert statuses.count(200) == REQUESTS, {s: statuses.count(s) for s in set(statuses)}
    after = _batches_and_images(httpx.get(f"{bento_url}/metrics", timeout=10).text)
    batches, classified = after[0] - before[0], after[1] - before[1]
    assert classified == REQUESTS
    assert 0 < batches < REQUESTS, "every forward pass had one image: nothing was batched"
