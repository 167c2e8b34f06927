"""Run one job: claim it under a lease, classify its image through the batched service, and
store the outcome together with the webhook event it owes (the outbox row).

Two ways to classify: through the front's ``/predict`` (``classify_bytes``), or, when the
classifier runs on its own (``VQ_CLASSIFIER_URL``), directly: the worker decodes and crops
with the front's own code and sends a batch's crops in one call (``classify_direct``).

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

import numpy as np
from sqlalchemy.orm import Session

from jobs.classifier_client import (
    ClassifierClient,
    front_auth_headers,
    is_transient,
    post_classifier,
)
from jobs.crash_points import BATCH_BEFORE_COMPLETION, crash_point
from jobs.notify import owe_event
from jobs.resources import Resources
from model_store.answers import answer_body
from model_store.crops import prepare_crop
from model_store.preprocess import Preprocessing
from persistence import job_leases, jobs_repo
from persistence.db import session_scope
from persistence.models import utcnow
from visionqueue.core.errors import ImageNotFound, Unavailable, Unprocessable, VQError
from visionqueue.dataplane.crop_retry import CropForVersion
from visionqueue.dataplane.priority import (
    JOB_PRIORITY,
    PRIORITY_HEADER,
    Priority,
    job_priority,
)

logger = logging.getLogger(__name__)

ATTEMPTS_EXHAUSTED = "attempts_exhausted"


@dataclass(frozen=True)
class JobOutcome:
    status: str  # completed | failed | skipped
    latency_s: float | None = None
    webhook_url: str | None = None
    error_code: str | None = None


def classify_bytes(
    res: Resources,
    data: bytes,
    content_type: str,
    top_k: int,
    model: str | None = None,
    priority: Priority = JOB_PRIORITY,
) -> dict[str, Any]:
    """POST the image to the front's ``/predict`` (the model's shared batching queue) in the
    job's priority class (``X-VQ-Work-Class``: behind every person's request)."""
    url = f"{res.settings.front_url}/predict"
    headers = {PRIORITY_HEADER: priority.label, **front_auth_headers(res.settings.server)}
    resp = post_classifier(
        res.http,
        url,
        files={"image": ("image", data, content_type)},
        data={"top_k": str(top_k), **({"model": model} if model else {})},
        headers=headers,
    )
    if resp.status_code == 200:
        return dict(resp.json())
    try:
        error = resp.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{resp.status_code}", "the classifier answered with an error"
    if is_transient(resp.status_code):
        raise Unavailable(message, code=code)
    raise Unprocessable(message, code=code)


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
    """Fetch and classify every job's image at once (the front merges them into one call)."""
    if res.classifier is not None:
        return classify_direct(jobs, res, res.classifier)
    if len(jobs) == 1:
        return {jobs[0].id: _classify_one(jobs[0], res)}
    with ThreadPoolExecutor(len(jobs), thread_name_prefix="vq-batch-item") as pool:
        results = list(pool.map(lambda job: _classify_one(job, res), jobs))
    return {job.id: result for job, result in zip(jobs, results, strict=True)}


def _fetch_image(job: job_leases.ClaimedJob, res: Resources) -> bytes:
    try:
        return res.store.get(job.image_key)
    except ImageNotFound as exc:
        raise Unprocessable("the stored image no longer exists", code="image_missing") from exc


def _classify_one(job: job_leases.ClaimedJob, res: Resources) -> dict[str, Any] | BaseException:
    """The image's ``/predict`` answer, or the exception that ends this job's run."""
    try:
        data = _fetch_image(job, res)
        # the version promoted when the job runs serves it (policy: docs/models.md)
        priority, _ = job_priority(job.priority)
        return classify_bytes(
            res, data, job.content_type, res.settings.worker.top_k, job.model_name, priority
        )
    except Exception as exc:  # handed to the job's own task: retry or fail that job only
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


def classify_direct(
    jobs: list[job_leases.ClaimedJob], res: Resources, classifier: ClassifierClient
) -> dict[str, dict[str, Any] | BaseException]:
    """Fetch, decode and crop every job's image here, exactly as the front's ``/predict`` does,
    and classify each model's crops in one call to the classifier service; build the answer
    ``/predict`` would give. A bad image fails only its own job."""
    results: dict[str, dict[str, Any] | BaseException] = {}
    by_model: dict[tuple[str, Priority], list[job_leases.ClaimedJob]] = {}
    for job in jobs:
        try:
            name = classifier.model_name(job.model_name)
        except VQError as exc:
            results[job.id] = exc
            continue
        by_model.setdefault((name, job_priority(job.priority)[0]), []).append(job)
    # the front's VQ_PREPROCESS_THREADS bound the decodes (and their memory) here too
    with (
        ThreadPoolExecutor(len(jobs), thread_name_prefix="vq-batch-item") as fetch_pool,
        ThreadPoolExecutor(res.settings.model.preprocess_threads, "vq-crop") as crop_pool,
    ):
        for (name, priority), group in by_model.items():
            pools = (fetch_pool, crop_pool)
            results.update(_classify_model(name, priority, group, res, classifier, pools))
    return results


def _classify_model(
    name: str,
    priority: Priority,
    jobs: list[job_leases.ClaimedJob],
    res: Resources,
    classifier: ClassifierClient,
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> dict[str, dict[str, Any] | BaseException]:
    """One model's share of a batch: crop for its current version, one classifier call.

    Crops made for a version a promotion replaced meanwhile are made again, as the front does.
    """
    settings = res.settings
    max_pixels, draft = settings.server.max_image_pixels, settings.model.jpeg_draft
    results: dict[str, dict[str, Any] | BaseException] = {}

    def fetch(job: job_leases.ClaimedJob) -> bytes | Exception:
        try:
            return _fetch_image(job, res)
        except Exception as exc:  # handed to the job's own task: retry or fail that job only
            return exc

    def crop(data: bytes | Exception, prep: Preprocessing) -> tuple[np.ndarray, str] | Exception:
        if isinstance(data, Exception):
            return data
        try:
            return prepare_crop(data, max_pixels, draft, prep)
        except Exception as exc:  # a bad image fails its own job (invalid_image)
            return exc

    fetch_pool, crop_pool = pools
    datas = list(fetch_pool.map(fetch, jobs))
    started = time.perf_counter()
    try:
        attempts = CropForVersion(
            Preprocessing.from_spec(classifier.current(name)["preprocessing"])
        )
    except Exception as exc:
        return {job.id: exc for job in jobs}
    for prep in attempts:
        crops = list(crop_pool.map(crop, datas, [prep] * len(datas)))
        good = [(job, c) for job, c in zip(jobs, crops, strict=True) if isinstance(c, tuple)]
        results = {j.id: c for j, c in zip(jobs, crops, strict=True) if not isinstance(c, tuple)}
        if not good:
            return results
        try:
            probs, version = classifier.classify(
                name, np.stack([pixels for _, (pixels, _) in good]), priority
            )
        except Exception as exc:
            return {**results, **{job.id: exc for job, _ in good}}
        attempts.ran(version)
    top_k = settings.worker.top_k
    for row, (job, (_, how)) in zip(probs, good, strict=True):
        results[job.id] = answer_body(
            row,
            top_k,
            name=name,
            version=version,
            started=started,
            preprocessing=how,
            work_class=priority.label,
        )
    return results
