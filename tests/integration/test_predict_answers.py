"""Under concurrency every caller gets the answer for its own image, crop merging on.

The front merges concurrent crops into one classifier call (``CropCoalescer``) and BentoML
batches those calls again; each output row must find its way back to the caller whose crop
it came from. A misrouted row would hand one user another user's prediction, with a 200.
So every concurrent answer is compared with the sequential answer for the same image,
across distinct images, at several concurrency levels.

Checked by hand once (2026-11-30): handing caller ``i`` the row of caller ``i + 1`` in
``visionqueue/dataplane/coalesce.py`` makes ``test_concurrent_answers_match_the_sequential_ones``
fail at the first level that merges crops ("c=8: 23 of 32 answers were another image's").
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from tests.support import images
from visionqueue.core.settings import ModelSettings

pytestmark = pytest.mark.integration

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "camera.png", "coins.png")
LEVELS = (2, 8, 32)
ROUNDS = 4  # each image this many times per level, in a shuffled order
TOP_K = 20
# Batch size changes the float kernels a little; distinct images differ by far more.
TOLERANCE = 1e-4

Answer = list[tuple[int, float]]


def distinct_images() -> list[bytes]:
    """Real photos of different scenes, sizes and formats, and two generated images."""
    photos = [images.skimage_photo(name) for name in PHOTOS]
    return [*photos, images.jpeg(300, 500, seed=7), images.png(640, 200, seed=8)]


def answer(resp: httpx.Response) -> Answer:
    assert resp.status_code == 200, resp.text[:300]
    return [(p["index"], p["confidence"]) for p in resp.json()["predictions"]]


def same(a: Answer, b: Answer) -> bool:
    return len(a) == len(b) and all(
        ia == ib and abs(ca - cb) <= TOLERANCE for (ia, ca), (ib, cb) in zip(a, b, strict=True)
    )


async def predict_all(url: str, payloads: list[bytes], concurrency: int) -> list[Answer]:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(data: bytes) -> Answer:
            async with gate:
                resp = await client.post(
                    "/predict", files={"image": ("x", data)}, data={"top_k": str(TOP_K)}
                )
            return answer(resp)

        return await asyncio.gather(*(one(data) for data in payloads))


def images_per_pass(url: str) -> tuple[float, float]:
    """Return (forward passes, images through them) so far, from the classifier's histogram."""
    passes = rows = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("vq_inference_batch_images_count"):
            passes += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vq_inference_batch_images_sum"):
            rows += float(line.rsplit(" ", 1)[1])
    return passes, rows


def test_concurrent_answers_match_the_sequential_ones(
    bento_url: str, server_env: dict[str, str]
) -> None:
    assert "VQ_CALLS_IN_FLIGHT" not in server_env and ModelSettings().calls_in_flight > 0
    payloads = distinct_images()
    with httpx.Client(base_url=bento_url, timeout=60) as client:
        expected = [
            answer(client.post("/predict", files={"image": ("x", d)}, data={"top_k": str(TOP_K)}))
            for d in payloads
        ]
    # the check can only catch a swap if no two images share an answer
    for i, a in enumerate(expected):
        for j in range(i):
            assert not same(a, expected[j]), f"images {i} and {j} are indistinguishable"

    before = images_per_pass(bento_url)
    rng = random.Random(20261130)
    for level in LEVELS:
        order = [i for i in range(len(payloads)) for _ in range(ROUNDS)]
        rng.shuffle(order)
        got = asyncio.run(predict_all(bento_url, [payloads[i] for i in order], level))
        wrong = [
            (n, i)
            for n, (i, a) in enumerate(zip(order, got, strict=True))
            if not same(a, expected[i])
        ]
        assert not wrong, f"c={level}: {len(wrong)} of {len(order)} answers were another image's"
    passes, rows = (
        after - prior for after, prior in zip(images_per_pass(bento_url), before, strict=True)
    )
    assert rows == len(LEVELS) * ROUNDS * len(payloads)
    assert rows / passes > 1.5, "crops were not merged: the check proved nothing about routing"
