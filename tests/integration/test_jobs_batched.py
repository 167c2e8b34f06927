"""Workers take jobs in batches: each job gets its own image's answer, one bad image fails alone."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.integration.jobs_factories import broker_idle, database, job_rows, wait_all_final
from tests.support import images
from tests.support.stack import Stack
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

BATCH = 8


def distinct_images() -> list[bytes]:
    """Seven different pictures (real photos and noise of several sizes) and a corrupt JPEG."""
    photos = [images.skimage_photo(name) for name in ("chelsea.png", "coffee.png", "astronaut.png")]
    noise = [images.jpeg(w, h, seed=4200 + w) for w, h in ((64, 64), (96, 72), (160, 120))]
    return [*photos, *noise, images.png(120, 90, seed=4299), images.truncated_jpeg()]


def top5(answer: dict[str, Any]) -> list[tuple[int, float]]:
    return [(p["index"], round(p["confidence"], 4)) for p in answer["predictions"]]


def test_a_batch_answers_each_job_with_its_own_image_and_fails_only_the_corrupt_one(
    stack: Stack,
) -> None:
    payloads = distinct_images()
    # the batch waits (up to 1 s) for all eight: one claim, one classification round, one store
    env = {"VQ_WORKER_BATCH_SIZE": str(BATCH), "VQ_WORKER_BATCH_WAIT_MS": "1000"}
    prefix = stack.env["VQ_BROKER_QUEUE_PREFIX"]
    # messages earlier tests left queued would share the eight's batches: a worker drains them
    with stack.worker(concurrency=2, name=f"drain-{uuid.uuid4().hex[:6]}"):
        wait_until(lambda: broker_idle(stack.broker_url, prefix), 60, "earlier messages drained")
    # the eight wait in the queue before the batching worker starts, so a slow submission on a
    # loaded machine cannot spread their arrival past the batch's wait
    files = [("images", (f"img{i}", data)) for i, data in enumerate(payloads)]
    resp = httpx.post(f"{stack.url}/v1/jobs", files=files, timeout=60)
    assert resp.status_code == 202, resp.text
    ids = [job["id"] for job in resp.json()["jobs"]]
    name = f"batch-{uuid.uuid4().hex[:6]}"
    with (
        stack.worker(concurrency=BATCH, name=name, env=env),
        database(stack.database_url) as engine,
    ):
        rows = wait_all_final(engine, ids, timeout=120)
        final = job_rows(engine, ids)
    assert set(rows) == set(ids)
    *good, corrupt = ids
    assert final[corrupt].status == "failed"
    assert final[corrupt].error_code == "invalid_image"
    assert final[corrupt].attempts == 1
    for job_id, data in zip(good, payloads, strict=False):
        job = final[job_id]
        assert job.status == "completed", (job.status, job.error_code)
        assert job.attempts == 1
        assert job.result is not None
        sync = httpx.post(f"{stack.url}/predict", files={"image": ("x", data)}, timeout=60)
        assert top5(job.result) == top5(sync.json()), job_id
        assert job.result["preprocessing"] == sync.json()["preprocessing"]
    # the seven were claimed together and stored in one transaction
    started = [final[i].started_at for i in good]
    finished = [final[i].finished_at for i in good]
    assert (max(started) - min(started)).total_seconds() < 0.5, started  # type: ignore[type-var,operator]
    assert (max(finished) - min(finished)).total_seconds() < 0.5, finished  # type: ignore[type-var,operator]
