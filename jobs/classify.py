"""Run one job: load its image, classify it through the batched service, store the result.

Plain functions a unit test can call; the Celery task in ``jobs.tasks`` only adds retries.
Errors split in two: ``TransientJobError`` (retry with backoff: the store, the database or
the classifier is briefly unavailable) and ``PermanentJobError`` (the job fails once, e.g.
a corrupt image).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from jobs.resources import Resources
from persistence import jobs_repo
from persistence.db import session_scope
from persistence.models import utcnow
from visionqueue.core.errors import DatabaseUnavailable, ImageNotFound, StorageUnavailable

logger = logging.getLogger(__name__)


class TransientJobError(Exception):
    """A dependency is unavailable; the job should be retried later."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PermanentJobError(Exception):
    """The job cannot succeed (bad image, missing object); fail it once."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class JobOutcome:
    status: str  # completed | failed | skipped
    latency_s: float | None = None
    webhook_url: str | None = None
    error_code: str | None = None


def classify_bytes(res: Resources, data: bytes, content_type: str, top_k: int) -> dict[str, Any]:
    """POST the image to the front's ``/predict`` (the shared batching queue)."""
    url = f"{res.settings.classifier_url}/predict"
    headers = {}
    if res.settings.server.api_keys:
        headers["Authorization"] = f"Bearer {res.settings.server.api_keys[0].get_secret_value()}"
    try:
        resp = res.http.post(
            url,
            files={"image": ("image", data, content_type)},
            data={"top_k": str(top_k)},
            headers=headers,
        )
    except httpx.HTTPError as exc:
        raise TransientJobError(
            "classifier_unavailable", f"the classifier could not be reached ({type(exc).__name__})"
        ) from exc
    if resp.status_code == 200:
        return dict(resp.json())
    try:
        error = resp.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{resp.status_code}", "the classifier answered with an error"
    if resp.status_code in (408, 429) or resp.status_code >= 500:
        raise TransientJobError(code, message)
    raise PermanentJobError(code, message)


def process_job(job_id: str, res: Resources) -> JobOutcome:
    """Claim, classify and complete one job; idempotent under redelivery."""
    try:
        with session_scope(res.engine) as session:
            job = jobs_repo.claim_job(session, job_id)
            if job is None:
                return JobOutcome("skipped")  # final already, cancelled, or unknown
            image_key, content_type = job.image_key, job.content_type
            created_at, webhook_url = job.created_at, job.webhook_url
        try:
            data = res.store.get(image_key)
        except ImageNotFound as exc:
            raise PermanentJobError("image_missing", "the stored image no longer exists") from exc
        except StorageUnavailable as exc:
            raise TransientJobError("storage_unavailable", exc.message) from exc
        body = classify_bytes(res, data, content_type, res.settings.worker.top_k)
        result = {
            "predictions": body["predictions"],
            "processing_time": body["processing_time"],
            "model": body["model"],
        }
        if "preprocessing" in body:
            result["preprocessing"] = body["preprocessing"]
        with session_scope(res.engine) as session:
            stored = jobs_repo.complete_job(
                session, job_id, result, body["model"]["tag"], body["model"]["weights"]
            )
    except DatabaseUnavailable as exc:
        raise TransientJobError("database_unavailable", exc.message) from exc
    if not stored:
        return JobOutcome("skipped")  # another delivery of this message finished first
    return JobOutcome("completed", (utcnow() - created_at).total_seconds(), webhook_url=webhook_url)


def fail_job(job_id: str, res: Resources, code: str, message: str) -> JobOutcome:
    """Record a final failure; returns ``skipped`` if the job is no longer processing."""
    try:
        with session_scope(res.engine) as session:
            job = jobs_repo.get_job_by_id(session, job_id)
            webhook_url = job.webhook_url if job else None
            failed = jobs_repo.fail_job(session, job_id, code, message)
    except DatabaseUnavailable as exc:
        raise TransientJobError("database_unavailable", exc.message) from exc
    if not failed:
        return JobOutcome("skipped")
    return JobOutcome("failed", webhook_url=webhook_url, error_code=code)
