"""Run one job: claim it under a lease, classify its image through the batched service, and
store the outcome together with the webhook event it owes (the outbox row).

Plain functions a unit test can call; the Celery task in ``jobs.tasks`` only adds retries.
Errors are the one tree of ``visionqueue.core.errors``: an ``Unavailable`` (the store, the
database or the classifier is briefly down) is retried with backoff; any other ``VQError``
(a corrupt image, a missing object) fails the job once, with its code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy.orm import Session

from jobs.notify import owe_event
from jobs.resources import Resources
from persistence import job_leases, jobs_repo
from persistence.db import session_scope
from persistence.models import utcnow
from visionqueue.core.errors import ImageNotFound, Unavailable, Unprocessable

logger = logging.getLogger(__name__)

ATTEMPTS_EXHAUSTED = "attempts_exhausted"


@dataclass(frozen=True)
class JobOutcome:
    status: str  # completed | failed | skipped
    latency_s: float | None = None
    webhook_url: str | None = None
    error_code: str | None = None


def classify_bytes(
    res: Resources, data: bytes, content_type: str, top_k: int, model: str | None = None
) -> dict[str, Any]:
    """POST the image to the front's ``/predict`` (the model's shared batching queue)."""
    url = f"{res.settings.classifier_url}/predict"
    headers = {}
    if res.settings.server.api_keys:
        headers["Authorization"] = f"Bearer {res.settings.server.api_keys[0].get_secret_value()}"
    try:
        resp = res.http.post(
            url,
            files={"image": ("image", data, content_type)},
            data={"top_k": str(top_k), **({"model": model} if model else {})},
            headers=headers,
        )
    except httpx.HTTPError as exc:
        raise Unavailable(
            f"the classifier could not be reached ({type(exc).__name__})",
            code="classifier_unavailable",
        ) from exc
    if resp.status_code == 200:
        return dict(resp.json())
    try:
        error = resp.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{resp.status_code}", "the classifier answered with an error"
    if resp.status_code in (408, 429) or resp.status_code >= 500:
        raise Unavailable(message, code=code)
    raise Unprocessable(message, code=code)


def process_job(job_id: str, res: Resources) -> JobOutcome:
    """Claim, classify and complete one job; idempotent under redelivery.

    Raises ``Unavailable`` (retry later) or another ``VQError`` (fail the job).
    """
    worker = res.settings.worker
    leases = res.leases
    with session_scope(res.engine) as session:
        job = job_leases.claim(
            session,
            job_id,
            holder=leases.holder,
            lease_s=worker.lease_s,
            max_attempts=worker.max_attempts,
        )
        if job is None:
            return exhaust_if_spent(session, job_id, worker.max_attempts)
    leases.hold(job_id)
    try:
        try:
            data = res.store.get(job.image_key)
        except ImageNotFound as exc:
            raise Unprocessable("the stored image no longer exists", code="image_missing") from exc
        # the version promoted when the job runs serves it (policy: docs/models.md)
        body = classify_bytes(res, data, job.content_type, worker.top_k, job.model_name)
        result = {
            "predictions": body["predictions"],
            "processing_time": body["processing_time"],
            "model": body["model"],
        }
        if "preprocessing" in body:
            result["preprocessing"] = body["preprocessing"]
        with session_scope(res.engine) as session:
            stored = jobs_repo.complete_job(
                session,
                job_id,
                result,
                body["model"]["tag"],
                body["model"]["weights"],
                holder=leases.holder,
            )
            if stored and job.webhook_url:
                owe_event(session, job_id, "completed", job.webhook_url)
    finally:
        leases.release(job_id)
    if not stored:
        return JobOutcome("skipped")  # the lease lapsed and another worker took the job
    latency_s = (utcnow() - job.created_at).total_seconds()
    return JobOutcome("completed", latency_s, webhook_url=job.webhook_url)


def exhaust_if_spent(session: Session, job_id: str, max_attempts: int) -> JobOutcome:
    """Fail a claimable job that used up its attempts (and owe its event); else ``skipped``."""
    message = f"the job did not finish in {max_attempts} attempts"
    if not job_leases.exhaust(
        session, job_id, max_attempts=max_attempts, code=ATTEMPTS_EXHAUSTED, message=message
    ):
        return JobOutcome("skipped")  # final already, running under a live lease, or unknown
    job = jobs_repo.get_job_by_id(session, job_id)
    webhook_url = job.webhook_url if job else None
    if webhook_url:
        owe_event(session, job_id, "failed", webhook_url)
    logger.warning("job %s failed: %s", job_id, message)
    return JobOutcome("failed", webhook_url=webhook_url, error_code=ATTEMPTS_EXHAUSTED)


def fail_job(job_id: str, res: Resources, code: str, message: str) -> JobOutcome:
    """Record a final failure (and owe its event); ``skipped`` if the job is not ours."""
    with session_scope(res.engine) as session:
        job = jobs_repo.get_job_by_id(session, job_id)
        webhook_url = job.webhook_url if job else None
        failed = jobs_repo.fail_job(session, job_id, code, message, holder=res.leases.holder)
        if failed and webhook_url:
            owe_event(session, job_id, "failed", webhook_url)
    if not failed:
        return JobOutcome("skipped")
    return JobOutcome("failed", webhook_url=webhook_url, error_code=code)


def release_for_retry(job_id: str, res: Resources, delay_s: float) -> None:
    """Hand the job back as pending until its retry message, due in ``delay_s``, claims it."""
    grace = max(res.settings.worker.lease_s, 2 * res.settings.worker.sweep_interval_s)
    with session_scope(res.engine) as session:
        job_leases.release_for_retry(session, job_id, res.leases.holder, delay_s + grace)
