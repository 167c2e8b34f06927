"""Protocol adapters' pure parts: each protocol's error body, Celery states of a job."""

from __future__ import annotations

import json

import pytest

from persistence.models import Job
from visionqueue.api.protocols.error_shapes import reshape, shape_for
from visionqueue.api.protocols.legacy import task_state
from visionqueue.core.errors import NotFound


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/v2/models/m/infer", {"error": "no model m"}),
        ("/v2", {"error": "no model m"}),
        (
            "/predictions/m",
            {"code": 404, "type": "ModelNotFoundException", "message": "no model m"},
        ),
        ("/ping", {"status": "Unhealthy", "message": "no model m"}),
        ("/api/task-status/x", {"detail": "no model m"}),
        ("/health", {"detail": "no model m"}),
    ],
)
def test_the_envelope_becomes_each_protocols_error_body(path: str, want: dict[str, object]) -> None:
    shape = shape_for(path)
    assert shape is not None
    envelope = json.dumps(NotFound("no model m", code="model_not_found").to_body()).encode()
    assert json.loads(reshape(envelope, 404, shape) or b"") == want


def test_native_routes_and_foreign_bodies_are_left_alone() -> None:
    for path in ("/predict", "/v1/jobs", "/v2x", "/healthz", "/apis", "/predictions"):
        assert shape_for(path) is None, path
    shape = shape_for("/v2")
    assert shape is not None
    assert reshape(b"not json", 500, shape) is None
    assert reshape(b'{"error": "already a string"}', 400, shape) is None


@pytest.mark.parametrize(
    ("status", "want"),
    [
        ("pending", {"state": "PENDING", "status": "Task is waiting in queue"}),
        ("processing", {"state": "STARTED", "status": "Task is running"}),
        ("cancelled", {"state": "REVOKED", "error": "the job was cancelled"}),
        ("failed", {"state": "FAILURE", "error": "cannot decode"}),
    ],
)
def test_job_statuses_read_as_celery_states(status: str, want: dict[str, str]) -> None:
    job = Job(id="t1", status=status, error_code="invalid_image", error_message="cannot decode")
    assert task_state(job, None) == want


def test_a_completed_job_is_success_with_its_result() -> None:
    result = {
        "predictions": [{"class": "tabby", "index": 281, "confidence": 0.6}],
        "processing_time": 0.05,
    }
    job = Job(id="t1", status="completed", result=result, metadata_={"user": 1})
    state = task_state(job, "http://img")
    assert state["state"] == "SUCCESS"
    assert state["result"] == {
        **result,
        "task_id": "t1",
        "metadata": {"user": 1},
        "image_url": "http://img",
    }
