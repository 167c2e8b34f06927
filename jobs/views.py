"""How a job is shown to clients: the seed's task-status shape, the v1 shape, its deliveries.

Webhook events carry the same object ``GET /task-status/{id}`` returns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from persistence.models import DeliveryLogColumns, Job, OutboxColumns
from visionqueue.core.timestamps import iso_z
from visionqueue.dataplane.priority import job_priority


def _iso(value: datetime | None) -> str | None:
    return iso_z(value) if value else None


def _error(job: Job) -> dict[str, str] | None:
    if job.error_code is None:
        return None
    return {"code": job.error_code, "message": job.error_message or job.error_code}


def _result(job: Job, image_url: str | None) -> dict[str, Any] | None:
    if job.result is None:
        return None
    return {**job.result, "image_url": image_url}


def task_status_view(job: Job, image_url: str | None) -> dict[str, Any]:
    """Return the seed API's ``GET /task-status/{task_id}`` body."""
    return {
        "task_id": job.id,
        "status": job.status,
        "result": _result(job, image_url),
        "error": _error(job),
    }


def job_view(job: Job, image_url: str | None) -> dict[str, Any]:
    """Return the v1 API's job object."""
    return {
        "id": job.id,
        "status": job.status,
        "batch_id": job.batch_id,
        "created_at": _iso(job.created_at),
        "queued_at": _iso(job.queued_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "attempts": job.attempts,
        "image": {
            "sha256": job.image_sha256,
            "content_type": job.content_type,
            "size": job.image_size,
            "width": job.width,
            "height": job.height,
            "url": image_url,
        },
        "model": (
            {"name": job.model_name, "tag": job.model_tag, "weights": job.weights_origin}
            if job.model_tag or job.model_name
            else None
        ),
        "priority": job.priority,
        "work_class": job_priority(job.priority)[0].label,
        "metadata": job.metadata_ or {},
        "webhook_url": job.webhook_url,
        "result": _result(job, image_url),
        "error": _error(job),
    }


def delivery_view(delivery: DeliveryLogColumns) -> dict[str, Any]:
    """Return one delivery attempt as ``GET /v1/jobs|batches/{id}/deliveries`` lists it."""
    return {
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "attempt": delivery.attempt,
        "attempted_at": _iso(delivery.attempted_at),
        "status_code": delivery.status_code,
        "error": delivery.error,
        "latency_ms": round(delivery.latency_ms, 3),
        "succeeded": delivery.succeeded,
        "next_attempt_at": _iso(delivery.next_attempt_at),
    }


def event_view(event: OutboxColumns | None) -> dict[str, Any] | None:
    """Return where a webhook event stands (None: none is owed yet)."""
    if event is None:
        return None
    return {
        "id": event.event_id,
        "type": event.event_type,
        "status": event.status,  # pending | delivered | exhausted
        "attempts": event.attempts,
        "next_attempt_at": _iso(event.next_attempt_at),
    }
