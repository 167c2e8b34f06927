"""The original VisionQueue's routes end to end: upload, Celery states, result, webhook."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.integration.webhook_receiver import WebhookReceiver
from tests.support import images
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def state(url: str, task_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/api/task-status/{task_id}", timeout=30)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def wait_state(url: str, task_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll the original's task-status route until the task succeeded or failed."""

    def final() -> dict[str, Any] | None:
        body = state(url, task_id)
        return body if body["state"] in ("SUCCESS", "FAILURE") else None

    return wait_until(final, timeout, f"task {task_id} final")


def upload(url: str, data: bytes, **params: str) -> httpx.Response:
    return httpx.post(
        f"{url}/api/upload-image", files={"file": ("photo.png", data)}, params=params, timeout=30
    )


def test_health(stack) -> None:  # type: ignore[no-untyped-def]
    resp = httpx.get(f"{stack.url}/health", timeout=30)
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


def test_upload_waits_then_succeeds_with_predicts_answer_and_its_webhook(stack) -> None:  # type: ignore[no-untyped-def]
    data = images.skimage_photo("chelsea.png")
    with WebhookReceiver() as receiver:
        resp = upload(stack.url, data, callback_url=receiver.url(), metadata='{"user": 42}')
        assert resp.status_code == 200, resp.text
        assert list(resp.json()) == ["task_id"]
        task_id = resp.json()["task_id"]
        # no worker yet: the job waits in the queue
        assert state(stack.url, task_id) == {
            "state": "PENDING",
            "status": "Task is waiting in queue",
        }
        stack.start_worker()
        try:
            final = wait_state(stack.url, task_id)
            received = receiver.wait_for_requests(1, timeout_s=30)
        finally:
            stack.stop_workers()
    assert final["state"] == "SUCCESS", final
    result = final["result"]
    assert result["processing_time"] > 0 and result["metadata"] == {
        "user": 42,
        "filename": "photo.png",
    }
    sync = httpx.post(f"{stack.url}/predict", files={"image": ("c.png", data)}, timeout=30).json()
    got = [(p["class"], round(p["confidence"], 4)) for p in result["predictions"]]
    assert got == [(p["class"], round(p["confidence"], 4)) for p in sync["predictions"]]
    # the same job, seen through the native API, and the same webhook event
    native = httpx.get(f"{stack.url}/v1/jobs/{task_id}", timeout=30).json()
    assert native["status"] == "completed" and native["metadata"]["user"] == 42
    assert json.loads(received[0].body)["data"]["task_id"] == task_id


def test_a_broken_image_ends_in_failure(stack) -> None:  # type: ignore[no-untyped-def]
    resp = upload(stack.url, images.truncated_jpeg())
    assert resp.status_code == 200, resp.text
    stack.start_worker()
    try:
        final = wait_state(stack.url, resp.json()["task_id"])
    finally:
        stack.stop_workers()
    assert final["state"] == "FAILURE" and isinstance(final["error"], str) and final["error"]


def service_metric(url: str, sample: str) -> float:
    """Return one sample's value from the service's own /metrics (0 when absent)."""
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_originals_monitoring_example_works_on_the_service_port(stack) -> None:  # type: ignore[no-untyped-def]
    """``curl -s :3000/metrics | grep image_task_success_total``: totals of every worker."""
    samples = {
        "success": "image_task_success_total",
        "failure": 'image_task_failure_total{code="invalid_image"}',
        "latency": "image_task_latency_seconds_count",
    }
    before = {k: service_metric(stack.url, s) for k, s in samples.items()}
    good = upload(stack.url, images.skimage_photo("coffee.png")).json()["task_id"]
    bad = upload(stack.url, images.truncated_jpeg()).json()["task_id"]
    # two worker processes share the jobs; the front's totals come from the database
    stack.start_worker(concurrency=2)
    stack.start_worker(concurrency=2)
    try:
        assert wait_state(stack.url, good)["state"] == "SUCCESS"
        assert wait_state(stack.url, bad)["state"] == "FAILURE"
    finally:
        stack.stop_workers()

    def moved() -> dict[str, float] | None:
        now = {k: service_metric(stack.url, s) for k, s in samples.items()}
        return now if now != before else None

    # the front caches backend reads for VQ_HEALTH_CACHE_S
    after = wait_until(moved, 30, "the service's totals to move", interval=0.5)
    assert after["success"] - before["success"] == 1
    assert after["failure"] - before["failure"] == 1
    assert after["latency"] - before["latency"] == 1


def test_bad_inputs_get_fastapis_error_shape(stack) -> None:  # type: ignore[no-untyped-def]
    photo = images.skimage_photo("coffee.png")
    url = f"{stack.url}/api/upload-image"
    cases = [
        ("no file", {"data": {"x": "1"}}, 400),
        ("not an image", {"files": {"file": ("a.txt", b"hello")}}, 415),
        ("empty", {"files": {"file": ("a.png", b"")}}, 400),
        ("bomb", {"files": {"file": ("a.png", images.png_header_bomb())}}, 422),
        ("two files", {"files": [("file", ("a", photo)), ("file", ("b", photo))]}, 422),
        ("file as text", {"files": {"file": (None, "abc")}}, 422),
        ("bad metadata", {"files": {"file": ("a", photo)}, "params": {"metadata": "[1]"}}, 422),
        (
            "private callback",
            {"files": {"file": ("a", photo)}, "params": {"callback_url": "http://10.0.0.1/x"}},
            422,
        ),
    ]
    for label, kwargs, status in cases:
        resp = httpx.post(url, timeout=30, **kwargs)
        assert resp.status_code == status, (label, resp.text)
        assert list(resp.json()) == ["detail"] and isinstance(resp.json()["detail"], str), label
    missing = httpx.get(f"{stack.url}/api/task-status/no-such-task", timeout=30)
    assert missing.status_code == 404 and isinstance(missing.json()["detail"], str)
