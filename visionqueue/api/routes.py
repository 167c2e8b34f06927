"""Job routes: the seed's API verbatim, the v1 API, signed image downloads.

Handlers raise ``VQError``s; the app's exception handler (``visionqueue.api.app``) turns
them into the error envelope.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from jobs.celery_app import WEBHOOK_TASK
from jobs.views import delivery_view, event_view, job_view, task_status_view
from persistence import deliveries_repo, jobs_repo
from persistence.db import session_scope
from persistence.image_keys import is_valid_key
from persistence.images import image_url_or_none
from persistence.local_images import LocalImageStore
from persistence.models import JOB_STATUSES, Job
from visionqueue.api.openapi_errors import error_responses
from visionqueue.api.redelivery import schedule_redelivery
from visionqueue.api.resources import FrontResources
from visionqueue.api.state import served_models
from visionqueue.api.submit import (
    Upload,
    check_priority,
    check_webhook,
    parse_metadata,
    submit_jobs,
)
from visionqueue.core.errors import Conflict, NotFound, Unprocessable
from visionqueue.core.images import ACCEPTED_FORMATS, sniff_format
from visionqueue.core.webhook_events import event_type_for

logger = logging.getLogger(__name__)
router = APIRouter()
MODEL_FIELD = "a served model's name (GET /v1/models); empty = the default model"
PRIORITY_FIELD = (
    "high | normal (default) | low: high and normal run in the jobs class of work, low in "
    "bulk; every class yields to interactive requests (docs/priority.md)"
)
ACCEPTED_MESSAGE = "Image classification task submitted successfully"


def resources(request: Request) -> FrontResources:
    return request.app.state.resources  # type: ignore[no-any-return]


def owner(request: Request) -> str | None:
    return request.scope.get("state", {}).get("vq_owner")


async def _read(files: list[UploadFile]) -> list[Upload]:
    return [Upload(await f.read(), f.filename or "") for f in files]


def _image_url(res: FrontResources, job: Job) -> str | None:
    return image_url_or_none(res.store, job.image_key, res.settings.server.image_url_ttl_s)


async def _submit(
    request: Request,
    files: list[UploadFile],
    webhook_url: str | None,
    metadata: str | None,
    idempotency_key: str | None,
    model: str | None = None,
    priority: str | None = None,
) -> tuple[list[Job], bool]:
    res = resources(request)
    priority = check_priority(priority)
    # an unknown model is refused now (404), not when a worker gets to the job
    model_name = served_models(request).get(model).name if model else None
    meta = parse_metadata(metadata)
    hook = check_webhook(webhook_url, res.settings.webhook.allowed_hosts)
    uploads = await _read(files)
    return await anyio.to_thread.run_sync(
        lambda: submit_jobs(
            res,
            uploads,
            owner=owner(request),
            webhook_url=hook,
            metadata=meta,
            idempotency_key=idempotency_key,
            model_name=model_name,
            priority=priority,
        )
    )


def _load(request: Request, job_id: str) -> Job:
    with session_scope(resources(request).engine) as session:
        return jobs_repo.require_job(session, job_id, owner(request))


SUBMIT_ERRORS = error_responses(400, 401, 404, 413, 415, 422, 429, 503)
JOB_ERRORS = error_responses(401, 404, 503)


@router.post("/classify", status_code=202, tags=["seed API"], responses=SUBMIT_ERRORS)
async def classify(
    request: Request,
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP or GIF")],
    webhook_url: Annotated[str | None, Form()] = None,
    metadata: Annotated[str | None, Form(description="a JSON object")] = None,
    model: Annotated[str | None, Form(description=MODEL_FIELD)] = None,
) -> Any:
    """Submit one image for async classification (the original VisionQueue API)."""
    jobs, _ = await _submit(request, [image], webhook_url, metadata, None, model)
    return JSONResponse(
        {"task_id": jobs[0].id, "status": "pending", "message": ACCEPTED_MESSAGE},
        status_code=202,
    )


@router.get("/task-status/{task_id}", tags=["seed API"], responses=JOB_ERRORS)
async def task_status(request: Request, task_id: str) -> Any:
    """Return a job's status and result in the original API's shape."""
    job = await anyio.to_thread.run_sync(_load, request, task_id)
    return task_status_view(job, _image_url(resources(request), job))


@router.post(
    "/v1/jobs",
    status_code=202,
    tags=["jobs"],
    responses={**SUBMIT_ERRORS, 200: {"description": "Idempotent replay: the first jobs."}},
)
async def create_jobs(
    request: Request,
    images: Annotated[list[UploadFile], File(description="one or more images")],
    webhook_url: Annotated[str | None, Form()] = None,
    metadata: Annotated[str | None, Form(description="a JSON object")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    model: Annotated[str | None, Form(description=MODEL_FIELD)] = None,
    priority: Annotated[str | None, Form(description=PRIORITY_FIELD)] = None,
) -> Any:
    """Submit one or many images; the same Idempotency-Key returns the same jobs."""
    jobs, replayed = await _submit(
        request, images, webhook_url, metadata, idempotency_key, model, priority
    )
    res = resources(request)
    body = {"jobs": [job_view(j, _image_url(res, j)) for j in jobs]}
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return JSONResponse(body, status_code=200 if replayed else 202, headers=headers)


@router.get("/v1/jobs/{job_id}", tags=["jobs"], responses=JOB_ERRORS)
async def get_job(request: Request, job_id: str) -> Any:
    """Return one job."""
    job = await anyio.to_thread.run_sync(_load, request, job_id)
    return job_view(job, _image_url(resources(request), job))


@router.get("/v1/jobs", tags=["jobs"], responses=error_responses(400, 401, 422, 503))
async def list_jobs(
    request: Request,
    status: Annotated[str | None, Query(description="|".join(JOB_STATUSES))] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query()] = None,
) -> Any:
    """List your jobs, newest first; follow ``next_cursor`` for the next page."""
    res = resources(request)
    if status is not None and status not in JOB_STATUSES:
        raise Unprocessable(f"status must be one of {', '.join(JOB_STATUSES)}")

    def query() -> tuple[list[Job], str | None]:
        with session_scope(res.engine) as session:
            return jobs_repo.list_jobs(session, owner(request), status, limit, cursor)

    jobs, next_cursor = await anyio.to_thread.run_sync(query)
    return {"jobs": [job_view(j, _image_url(res, j)) for j in jobs], "next_cursor": next_cursor}


@router.delete("/v1/jobs/{job_id}", tags=["jobs"], responses=error_responses(401, 404, 409, 503))
async def cancel_job(request: Request, job_id: str) -> Any:
    """Cancel a pending job (409 once it is processing or finished)."""
    res = resources(request)

    def cancel() -> Job:
        with session_scope(res.engine) as session:
            cancelled = jobs_repo.cancel_job(session, job_id, owner(request))
            job = jobs_repo.require_job(session, job_id, owner(request))
            if not cancelled:
                raise Conflict(f"job is {job.status}; only pending jobs can be cancelled")
            return job

    job = await anyio.to_thread.run_sync(cancel)
    return job_view(job, _image_url(res, job))


@router.get("/v1/jobs/{job_id}/deliveries", tags=["webhooks"], responses=JOB_ERRORS)
async def list_deliveries(request: Request, job_id: str) -> Any:
    """Return every webhook delivery attempt of a job, and where its event stands."""
    res = resources(request)

    def query() -> dict[str, Any]:
        _load(request, job_id)
        with session_scope(res.engine) as session:
            rows = deliveries_repo.list_attempts(session, job_id)
            owed = deliveries_repo.get_event(session, job_id)
        return {"deliveries": [delivery_view(d) for d in rows], "event": event_view(owed)}

    return await anyio.to_thread.run_sync(query)


@router.post(
    "/v1/jobs/{job_id}/deliveries/redeliver",
    status_code=202,
    tags=["webhooks"],
    responses=error_responses(401, 404, 409, 429, 503),
)
async def redeliver(request: Request, job_id: str) -> Any:
    """Send the job's event again now (same event id), e.g. after fixing the receiver."""
    res = resources(request)

    def schedule() -> int:
        job = _load(request, job_id)
        if not job.webhook_url:
            raise Conflict("the job has no webhook_url")
        if job.status not in ("completed", "failed"):
            raise Conflict(f"job is {job.status}; events are sent when it finishes")
        return schedule_redelivery(
            res,
            deliveries_repo.JOBS,
            job_id,
            event_type_for(job.status),
            job.webhook_url,
            WEBHOOK_TASK,
        )

    attempt = await anyio.to_thread.run_sync(schedule)
    return JSONResponse({"status": "scheduled", "attempt": attempt}, status_code=202)


@router.get(
    "/v1/images/{key:path}",
    tags=["images"],
    include_in_schema=True,
    responses=error_responses(400, 404, 422, 503),
)
async def download_image(
    request: Request,
    key: str,
    expires: Annotated[int, Query()],
    sig: Annotated[str, Query(max_length=128)],
) -> Response:
    """Download a stored image through a signed, expiring URL (local image store)."""
    res = resources(request)
    store = res.store
    if (
        not isinstance(store, LocalImageStore)
        or not is_valid_key(key)
        or not store.link_is_valid(key, expires, sig)
    ):
        raise NotFound("no such image, or the link expired")
    data = await anyio.to_thread.run_sync(store.get, key)
    media = ACCEPTED_FORMATS.get(sniff_format(data) or "", "application/octet-stream")
    headers = {"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}
    return Response(data, media_type=media, headers=headers)
