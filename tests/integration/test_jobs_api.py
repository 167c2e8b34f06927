"""The v1 jobs API on the production stack: batches, idempotency, listing, cancellation."""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from persistence.models import ANONYMOUS_OWNER, Job
from tests.integration.jobs_factories import (
    broker_idle,
    database,
    small_jpegs,
    worker_outcomes,
)
from tests.support import images
from tests.support.waiting import wait_for_job, wait_until

pytestmark = pytest.mark.integration
UNKNOWN_ID = "00000000-0000-0000-0000-000000000000"


@pytest.fixture(scope="module", autouse=True)
def _no_workers_before_or_after(stack):  # type: ignore[no-untyped-def]
    stack.stop_workers()
    yield
    stack.stop_workers()


@pytest.fixture
def worker(stack):  # type: ignore[no-untyped-def]
    """A running worker (started once, shared by the tests that need one)."""
    alive = [proc for proc in stack.workers if proc.poll() is None]
    return alive[0] if alive else stack.start_worker(name=f"api-{uuid.uuid4().hex[:6]}")


def post_jobs(
    url: str,
    payloads: list[bytes],
    *,
    metadata: str | None = None,
    idempotency_key: str | None = None,
) -> httpx.Response:
    files = [("images", (f"img{i}.jpg", d, "image/jpeg")) for i, d in enumerate(payloads)]
    data = {"metadata": metadata} if metadata is not None else {}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return httpx.post(f"{url}/v1/jobs", files=files, data=data, headers=headers, timeout=60)


def get_job(url: str, job_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def queue_depth_metric(url: str, queue: str) -> float | None:
    """Return ``celery_queue_depth{queue=...}`` from the front's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "celery_queue_depth" and sample.labels.get("queue") == queue:
                return float(sample.value)
    return None


def test_the_queue_depth_gauge_is_the_brokers_queue_length(stack) -> None:  # type: ignore[no-untyped-def]
    import redis

    stack.stop_workers()  # nothing consumes: the messages stay queued
    assert post_jobs(stack.url, small_jpegs(3, seed=290)).status_code == 202
    prefix = stack.env["VQ_BROKER_QUEUE_PREFIX"]
    client = redis.Redis.from_url(stack.broker_url)
    try:
        queued = int(client.llen(f"{prefix}{prefix}visionqueue"))  # kombu prefixes the key too
        assert queued >= 3

        def reported() -> float | None:
            value = queue_depth_metric(stack.url, f"{prefix}visionqueue")
            return value if value == queued else None

        wait_until(reported, 30, f"celery_queue_depth == {queued} (the broker's length)")
    finally:
        client.close()


def test_a_cancelled_pending_job_is_never_processed(stack) -> None:  # type: ignore[no-untyped-def]
    assert not [p for p in stack.workers if p.poll() is None], "needs no worker running"
    doomed, kept = (post_jobs(stack.url, [d]) for d in small_jpegs(2, seed=300))
    assert doomed.status_code == kept.status_code == 202
    doomed_id = doomed.json()["jobs"][0]["id"]
    kept_id = kept.json()["jobs"][0]["id"]
    assert get_job(stack.url, doomed_id)["status"] == "pending"

    resp = httpx.delete(f"{stack.url}/v1/jobs/{doomed_id}", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "cancelled"
    assert resp.json()["finished_at"] is not None
    assert_error(httpx.delete(f"{stack.url}/v1/jobs/{doomed_id}", timeout=10), 409, "conflict")

    # a worker now receives both messages; it must drop the cancelled one
    name = f"api-{uuid.uuid4().hex[:6]}"
    stack.start_worker(name=name)
    assert wait_for_job(stack.url, kept_id)["status"] == "completed"
    prefix = stack.env["VQ_BROKER_QUEUE_PREFIX"]
    wait_until(lambda: broker_idle(stack.broker_url, prefix), 15, "broker drained")
    job = get_job(stack.url, doomed_id)
    assert job["status"] == "cancelled"
    assert job["started_at"] is None
    assert job["attempts"] == 0
    assert job["result"] is None and job["model"] is None
    assert worker_outcomes(stack.log_dir / f"worker-{name}.log")["skipped"] >= 1


def test_cancel_answers_409_once_finished_and_404_for_unknown_ids(stack, worker) -> None:  # type: ignore[no-untyped-def]
    resp = post_jobs(stack.url, small_jpegs(1, seed=310))
    job_id = resp.json()["jobs"][0]["id"]
    assert wait_for_job(stack.url, job_id)["status"] == "completed"

    assert_error(httpx.delete(f"{stack.url}/v1/jobs/{job_id}", timeout=10), 409, "conflict")
    assert get_job(stack.url, job_id)["status"] == "completed"
    assert_error(httpx.delete(f"{stack.url}/v1/jobs/{UNKNOWN_ID}", timeout=10), 404, "not_found")
    assert_error(httpx.get(f"{stack.url}/v1/jobs/{UNKNOWN_ID}", timeout=10), 404, "not_found")
    assert_error(httpx.get(f"{stack.url}/v1/jobs/not-a-uuid", timeout=10), 404, "not_found")
    assert_error(httpx.get(f"{stack.url}/task-status/{UNKNOWN_ID}", timeout=10), 404, "not_found")


def test_a_forged_listing_cursor_answers_400(stack) -> None:  # type: ignore[no-untyped-def]
    for cursor in ("not-a-cursor", "WyJ4IiwieSJd"):  # garbage, and base64 of ["x","y"]
        resp = httpx.get(f"{stack.url}/v1/jobs", params={"cursor": cursor}, timeout=10)
        assert_error(resp, 400, "bad_request")


def test_a_batch_shares_a_batch_id_and_an_idempotent_retry_replays_it(stack, worker) -> None:  # type: ignore[no-untyped-def]
    # 12 images: more than 10, so replayed jobs must keep their order past "key#9"
    payloads = [images.jpeg(64 + 8 * i, 48 + 4 * i, seed=400 + i) for i in range(12)]
    meta = '{"client": "api-test", "tags": ["a", "b"], "nested": {"x": 1.5, "ok": true}}'
    key = f"batch-{uuid.uuid4()}"

    first = post_jobs(stack.url, payloads, metadata=meta, idempotency_key=key)
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    jobs = first.json()["jobs"]
    ids = [job["id"] for job in jobs]
    assert len(set(ids)) == 12
    batch_ids = {job["batch_id"] for job in jobs}
    assert len(batch_ids) == 1 and None not in batch_ids
    for i, (job, data) in enumerate(zip(jobs, payloads, strict=True)):
        assert job["status"] == "pending"
        assert job["metadata"] == {
            "client": "api-test",
            "tags": ["a", "b"],
            "nested": {"x": 1.5, "ok": True},
            "filename": f"img{i}.jpg",
        }
        assert job["image"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert job["image"]["size"] == len(data)
        assert (job["image"]["width"], job["image"]["height"]) == (64 + 8 * i, 48 + 4 * i)

    again = post_jobs(stack.url, payloads, metadata=meta, idempotency_key=key)
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert [job["id"] for job in again.json()["jobs"]] == ids

    finals = [wait_for_job(stack.url, job_id) for job_id in ids]
    assert {job["status"] for job in finals} == {"completed"}
    for i, job in enumerate(finals):
        assert job["metadata"]["filename"] == f"img{i}.jpg"
        assert job["metadata"]["nested"] == {"x": 1.5, "ok": True}
        assert len(job["result"]["predictions"]) == 5
        assert job["attempts"] == 1
        times = [job[k] for k in ("created_at", "queued_at", "started_at", "finished_at")]
        assert None not in times
        assert sorted(times, key=datetime.fromisoformat) == times
    # a replay after completion still answers with the same jobs, now finished
    late = post_jobs(stack.url, payloads, metadata=meta, idempotency_key=key)
    assert late.status_code == 200
    assert [(j["id"], j["status"]) for j in late.json()["jobs"]] == [(i, "completed") for i in ids]
    with database(stack.database_url) as engine, Session(engine) as session:
        count = session.scalar(
            select(func.count()).select_from(Job).where(Job.batch_id == batch_ids.pop())
        )
    assert count == 12


def walk(url: str, limit: int, status: str | None = None, during: Any = None) -> list[str]:
    """Follow ``next_cursor`` through every page; call ``during()`` after the first page."""
    ids: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        resp = httpx.get(f"{url}/v1/jobs", params=params, timeout=10)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["jobs"]) <= limit
        assert all(status is None or job["status"] == status for job in body["jobs"])
        ids += [job["id"] for job in body["jobs"]]
        cursor = body["next_cursor"]
        pages += 1
        if pages == 1 and during is not None:
            during()
        if cursor is None:
            return ids
        assert body["jobs"], "an empty page with a next cursor"
        assert pages < 1000


def newest_first(engine: Any, status: str | None = None) -> list[str]:
    """The jobs an anonymous client may list (other tests on this stack use API keys)."""
    stmt = (
        select(Job.id)
        .where(Job.owner == ANONYMOUS_OWNER)
        .order_by(Job.created_at.desc(), Job.id.desc())
    )
    if status:
        stmt = stmt.where(Job.status == status)
    with Session(engine) as session:
        return list(session.scalars(stmt))


def test_listing_pages_newest_first_with_no_duplicates_or_gaps(stack) -> None:  # type: ignore[no-untyped-def]
    stack.stop_workers()  # so that the singles are still pending when cancelled
    # a batch (timestamps microseconds apart) and a few cancelled singles to filter on
    assert post_jobs(stack.url, small_jpegs(9, seed=500)).status_code == 202
    for data in small_jpegs(3, seed=520):
        job_id = post_jobs(stack.url, [data]).json()["jobs"][0]["id"]
        assert httpx.delete(f"{stack.url}/v1/jobs/{job_id}", timeout=10).status_code == 200

    with database(stack.database_url) as engine:
        expected = newest_first(engine)
        expected_cancelled = newest_first(engine, "cancelled")
        assert len(expected) >= 12 and len(expected_cancelled) >= 3

        added: list[str] = []

        def submit_more() -> None:  # new jobs land before page one: later pages are unaffected
            resp = post_jobs(stack.url, small_jpegs(2, seed=540 + len(added)))
            added.extend(job["id"] for job in resp.json()["jobs"])

        for limit in (5, 7, 200):
            started = time.monotonic()
            seen = walk(stack.url, limit, during=submit_more)
            assert len(seen) == len(set(seen)), f"duplicates at limit={limit}"
            assert [i for i in seen if i not in added] == expected, f"limit={limit}"
            assert time.monotonic() - started < 60
            expected = newest_first(engine)
            added.clear()
        assert walk(stack.url, 1, status="cancelled") == expected_cancelled
    # leave no work behind for the workers of later tests
    for job_id in walk(stack.url, 200, status="pending"):
        assert httpx.delete(f"{stack.url}/v1/jobs/{job_id}", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"cursor": "not-a-cursor"}, 400, "bad_request"),
        ({"cursor": "W10"}, 400, "bad_request"),  # valid base64 of "[]"
        ({"status": "bogus"}, 422, "validation_error"),
        ({"limit": 0}, 422, "validation_error"),
        ({"limit": 201}, 422, "validation_error"),
    ],
    ids=["garbage-cursor", "empty-cursor", "bad-status", "limit-0", "limit-201"],
)
def test_listing_rejects_bad_parameters(stack, params, status, code) -> None:  # type: ignore[no-untyped-def]
    assert_error(httpx.get(f"{stack.url}/v1/jobs", params=params, timeout=10), status, code)
