"""Run one job: claim it under a lease, classify its image through the batched service, and
store the outcome together with the webhook event it owes (the outbox row).

The worker fetches a batch's images, decodes and crops them itself with the front's own code
(at its lowered CPU priority) and sends the crops in few calls, in each job's class of work:
to the classifier service (``VQ_CLASSIFIER_URL``) or, on the embedded default, to the
front's crops route (``jobs.classify_crops``). No job image goes through ``/predict``.

Plain functions a unit test can call; the Celery task in ``jobs.tasks`` only adds retries.
Errors are the one tree of ``visionqueue.core.errors``: an ``Unavailable`` (the store, the
database or the classifier is briefly down) is retried with backoff; any other ``VQError``
(a corrupt image, a missing object) fails the job once, with its code.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from jobs.classify_crops import crop_and_classify
from jobs.crash_points import BATCH_BEFORE_COMPLETION, crash_point
from jobs.notify import owe_event
from jobs.resources import Resources
from model_store.answers import answer_from_rows
from persistence import job_leases, jobs_repo
from persistence.db import session_scope
from persistence.models import utcnow
from visionqueue.core.errors import ImageNotFound, Unprocessable, VQError
from visionqueue.dataplane.priority import Priority, job_priority

logger = logging.getLogger(__name__)

ATTEMPTS_EXHAUSTED = "attempts_exhausted"


@dataclass(frozen=True)
class JobOutcome:
    status: str  # completed | failed | skipped
    latency_s: float | None = None
    webhook_url: str | None = None
    error_code: str | None = None


def process_job(job_id: str, res: Resources) -> JobOutcome:
    """Claim, classify and complete one job; idempotent under redelivery.

    Raises ``Unavailable`` (retry later) or another ``VQError`` (fail the job).
    """
    outcome = process_batch([job_id], res)[job_id]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def process_batch(job_ids: list[str], res: Resources) -> dict[str, JobOutcome | BaseException]:
    """Claim the jobs in one transaction, classify their images concurrently, store every
    result in one transaction; idempotent under redelivery.

    Each job maps to its outcome or to its own exception: ``Unavailable`` (retry later) or
    another ``VQError`` (fail the job); one corrupt image fails only its job. If the
    database itself fails, so does the whole batch (every job retries).
    """
    worker = res.settings.worker
    leases = res.leases
    outcomes: dict[str, JobOutcome | BaseException] = {}
    claimed: list[job_leases.ClaimedJob] = []
    with session_scope(res.engine) as session:
        claims = job_leases.claim_batch(
            session,
            job_ids,
            holder=leases.holder,
            lease_s=worker.lease_s,
            max_attempts=worker.max_attempts,
        )
        for job_id, job in claims.items():
            if job is None:
                outcomes[job_id] = exhaust_if_spent(session, job_id, worker.max_attempts)
            else:
                claimed.append(job)
    if not claimed:
        return outcomes
    for job in claimed:
        leases.hold(job.id)
    try:
        bodies = _classify_all(claimed, res)
        crash_point(BATCH_BEFORE_COMPLETION)
        answers = {i: body for i, body in bodies.items() if not isinstance(body, BaseException)}
        stored: dict[str, bool] = {}
        if answers:
            with session_scope(res.engine) as session:
                job_leases.lock_in_order(session, list(answers))
                for job in claimed:
                    if job.id in answers:
                        stored[job.id] = _store_result(session, job, answers[job.id], leases.holder)
    finally:
        for job in claimed:
            leases.release(job.id)
    for job in claimed:
        body = bodies[job.id]
        if isinstance(body, BaseException):
            outcomes[job.id] = body
        elif not stored[job.id]:
            outcomes[job.id] = JobOutcome("skipped")  # the lease lapsed; another worker has it
        else:
            latency_s = (utcnow() - job.created_at).total_seconds()
            outcomes[job.id] = JobOutcome("completed", latency_s, webhook_url=job.webhook_url)
    return outcomes


def _classify_all(
    jobs: list[job_leases.ClaimedJob], res: Resources
) -> dict[str, dict[str, Any] | BaseException]:
    """Fetch every job's image, crop each model's share here and classify it in few calls;
    build the answer ``/predict`` would give. A bad image fails only its own job."""
    results: dict[str, dict[str, Any] | BaseException] = {}
    groups: dict[tuple[str | None, Priority], list[job_leases.ClaimedJob]] = {}
    for job in jobs:
        groups.setdefault((job.model_name, job_priority(job.priority)[0]), []).append(job)
    # the front's VQ_PREPROCESS_THREADS bound the decodes (and their memory) here too
    with (
        ThreadPoolExecutor(len(jobs), thread_name_prefix="vq-batch-item") as fetch_pool,
        ThreadPoolExecutor(res.settings.model.preprocess_threads, "vq-crop") as crop_pool,
    ):
        for (model, priority), group in groups.items():
            datas = list(fetch_pool.map(lambda job: _fetch_image(job, res), group))
            started = time.perf_counter()
            try:
                cropped = crop_and_classify(
                    res, model, datas, crop_pool, res.settings.worker.top_k, priority
                )
            except Exception as exc:  # handed to each job's own task: retry or fail it
                results.update({job.id: exc for job in group})
                continue
            for job, outcome in zip(group, cropped.outcomes, strict=True):
                if isinstance(outcome, VQError):
                    results[job.id] = outcome
                elif cropped.model is not None:
                    predictions, how = outcome
                    results[job.id] = answer_from_rows(
                        predictions,
                        cropped.model,
                        started=started,
                        preprocessing=how,
                        work_class=priority.label,
                    )
    return results


def _fetch_image(job: job_leases.ClaimedJob, res: Resources) -> bytes | VQError:
    """The job's stored image, or the error that ends (or retries) this job's run."""
    try:
        return res.store.get(job.image_key)
    except ImageNotFound:
        return Unprocessable("the stored image no longer exists", code="image_missing")
    except VQError as exc:  # the store is briefly down: this job is retried
        return exc


def _store_result(
    session: Session, job: job_leases.ClaimedJob, body: dict[str, Any], holder: str
) -> bool:
    """Complete ``job`` with its ``/predict`` answer (and owe its event); False if not ours."""
    result = {
        "predictions": body["predictions"],
        "processing_time": body["processing_time"],
        "model": body["model"],
    }
    if "preprocessing" in body:
        result["preprocessing"] = body["preprocessing"]
    stored = jobs_repo.complete_job(
        session, job.id, result, body["model"]["tag"], body["model"]["weights"], holder=holder
    )
    if stored and job.webhook_url:
        owe_event(session, job.id, "completed", job.webhook_url)
    return stored


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
