"""The original VisionQueue's routes, as its code served them (not as its README said).

``POST /api/upload-image`` (multipart ``file``; query ``callback_url`` and ``metadata``)
answers ``{"task_id"}`` and submits a job exactly as ``POST /v1/jobs`` does (same store,
rows, workers, results and webhooks). ``GET /api/task-status/{task_id}`` answers with
Celery's state names. Errors are FastAPI's ``{"detail": "..."}`` (``error_shapes``).
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Query, Request, UploadFile
from pydantic import BaseModel

from persistence import jobs_repo
from persistence.db import session_scope
from persistence.images import image_url_or_none
from persistence.models import Job
from visionqueue.api.routes import owner, resources
from visionqueue.api.submit import Upload, check_webhook, parse_metadata, submit_jobs

router = APIRouter(tags=["original VisionQueue API"])
# Celery's state names, as the original answered from AsyncResult
STATES = {
    "pending": {"state": "PENDING", "status": "Task is waiting in queue"},
    "processing": {"state": "STARTED", "status": "Task is running"},
}


class LegacyError(BaseModel):
    """FastAPI's error body, which the original VisionQueue answered with."""

    detail: str


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": LegacyError} for status in statuses}


@router.post("/api/upload-image", responses=_errors(400, 401, 413, 415, 422, 429, 503))
async def upload_image(
    request: Request,
    file: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP or GIF")],
    callback_url: Annotated[str | None, Query(description="webhook called when done")] = None,
    metadata: Annotated[str | None, Query(description="a JSON object")] = None,
) -> dict[str, str]:
    """Submit one image for async classification; poll ``/api/task-status/{task_id}``."""
    res = resources(request)
    meta = parse_metadata(metadata)
    hook = check_webhook(callback_url, res.settings.webhook.allowed_hosts)
    upload = Upload(await file.read(), file.filename or "")
    jobs, _ = await anyio.to_thread.run_sync(
        lambda: submit_jobs(
            res, [upload], owner=owner(request), webhook_url=hook, metadata=meta,
            idempotency_key=None,
        )
    )  # fmt: skip
    return {"task_id": jobs[0].id}


def task_state(job: Job, image_url: str | None) -> dict[str, Any]:
    """Show a job as the original's ``task-status`` did: a Celery state and its payload."""
    if job.status in STATES:
        return dict(STATES[job.status])
    if job.status == "completed":
        result = {**(job.result or {}), "task_id": job.id, "metadata": job.metadata_ or {}}
        return {"state": "SUCCESS", "result": {**result, "image_url": image_url}}
    if job.status == "cancelled":
        return {"state": "REVOKED", "error": "the job was cancelled"}
    return {"state": "FAILURE", "error": job.error_message or job.error_code or "failed"}


@router.get("/api/task-status/{task_id}", responses=_errors(401, 404, 503))
async def task_status(request: Request, task_id: str) -> dict[str, Any]:
    """The job's Celery-style state; ``result`` holds the predictions once it succeeded."""
    res = resources(request)

    def load() -> Job:
        with session_scope(res.engine) as session:
            return jobs_repo.require_job(session, task_id, owner(request))

    job = await anyio.to_thread.run_sync(load)
    ttl_s = res.settings.server.image_url_ttl_s
    return task_state(job, image_url_or_none(res.store, job.image_key, ttl_s))


@router.get("/health")
async def health() -> dict[str, str]:
    """``{"status": "ok"}`` while the API answers (readiness: ``/readyz``)."""
    return {"status": "ok"}
