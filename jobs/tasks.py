"""Celery tasks: thin edges around ``jobs.classify``, ``jobs.notify`` and ``jobs.maintenance``.

``classify_job`` retries only transient failures (``Unavailable``), with exponential backoff
and jitter; ``acks_late`` + ``reject_on_worker_lost`` (app config) redeliver a job whose
worker died where the broker can, and job leases let the sweeper recover it where not.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from typing import Any

from celery import Task
from celery.signals import task_postrun, task_received
from celery.utils.log import get_task_logger

import jobs.worker_setup  # noqa: F401  (connects the worker's start-up signals)
from jobs.batching import JobBatcher
from jobs.celery_app import CLASSIFY_TASK, PURGE_TASK, SWEEP_TASK, WEBHOOK_TASK, app
from jobs.classify import JobOutcome, fail_job, process_batch, release_for_retry
from jobs.crash_points import (
    AFTER_COMPLETION_COMMIT,
    AFTER_RETRY_PLANNED,
    SWEEP_BEFORE_PUBLISH,
    crash_point,
)
from jobs.fs_broker import job_headers
from jobs.maintenance import purge_once, sweep_once
from jobs.metrics import worker_metrics
from jobs.notify import attempt_delivery
from jobs.resources import Resources, get_resources
from visionqueue.core.errors import DatabaseUnavailable, Unavailable, VQError
from visionqueue.core.logging_setup import log_context

logger = get_task_logger(__name__)


def backoff_s(retries: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter: 1, 2, 4 ... capped, times U(0.5, 1.5)."""
    return min(cap, base * 2**retries) * random.uniform(0.5, 1.5)


def publish_delivery(job_id: str, countdown: float | None = None) -> None:
    """Publish a delivery message (the fast path); the sweeper relays what this loses."""
    try:
        deliver_webhook.apply_async(args=[job_id, 0], countdown=countdown)
    except Exception:  # kombu errors differ by transport; the outbox row is the truth
        logger.warning("job %s: webhook message not queued; the sweeper relays it", job_id)


def run_batch(job_ids: list[str], res: Resources) -> dict[str, JobOutcome | BaseException]:
    """Run one batch of jobs (``jobs.classify.process_batch``) and count its size."""
    worker_metrics().job_batch_size.observe(len(job_ids))
    return process_batch(job_ids, res)


_batchers: dict[int, JobBatcher[JobOutcome]] = {}
_batchers_lock = threading.Lock()


def job_batcher(res: Resources) -> JobBatcher[JobOutcome]:
    """Return this process' batcher (VQ_WORKER_BATCH_SIZE, VQ_WORKER_BATCH_WAIT_MS)."""
    pid = os.getpid()
    with _batchers_lock:
        batcher = _batchers.get(pid)
        if batcher is None:
            worker = res.settings.worker
            batcher = _batchers[pid] = JobBatcher(
                lambda job_ids: run_batch(job_ids, res),
                skipped=lambda: JobOutcome("skipped"),
                max_size=worker.batch_size,
                wait_s=worker.batch_wait_ms / 1000,
            )
    return batcher


@app.task(bind=True, name=CLASSIFY_TASK, max_retries=None)
def classify_job(self: Task, job_id: str) -> str:
    """Classify the image of job ``job_id`` and store the result."""
    # the whole task: retries and failures log with the job_id field too
    with log_context(job_id=job_id):
        res = get_resources()
        try:
            # its batch's claim, classification and completion; this job's own outcome
            outcome = job_batcher(res).run(job_id, timeout=res.settings.worker.task_time_limit_s)
        except Unavailable as exc:
            if self.request.retries >= res.settings.worker.max_retries:
                outcome = fail_job(job_id, res, exc.code, f"gave up after retries: {exc.message}")
                if outcome.status == "failed":
                    worker_metrics().job_failure.labels(code=exc.code).inc()
            else:
                delay = backoff_s(self.request.retries)
                logger.warning("job %s: %s; retry in %.1fs", job_id, exc.code, delay)
                # if the database is down, its lease lapses: the retry or the sweeper takes it
                with contextlib.suppress(DatabaseUnavailable):
                    release_for_retry(job_id, res, delay)
                raise self.retry(countdown=delay, exc=exc) from exc
        except VQError as exc:
            outcome = fail_job(job_id, res, exc.code, exc.message)
            if outcome.status == "failed":
                worker_metrics().job_failure.labels(code=exc.code).inc()
                logger.info("job %s failed: %s", job_id, exc.code)
        if outcome.status == "completed":
            worker_metrics().job_success.inc()
            if outcome.latency_s is not None:
                worker_metrics().job_latency.observe(outcome.latency_s)
        elif outcome.status == "failed" and outcome.error_code == "attempts_exhausted":
            worker_metrics().job_failure.labels(code=outcome.error_code).inc()
        if outcome.webhook_url and outcome.status in ("completed", "failed"):
            crash_point(AFTER_COMPLETION_COMMIT)
            publish_delivery(job_id)
        return outcome.status


@task_received.connect
def _lease_received_job(request: Any = None, **_: Any) -> None:
    """Lease a job the moment its message reaches this process (``LeaseKeeper.reserve``).

    The embedded broker forgets a message once a worker has received it; without this a job
    prefetched by a worker that then died waited VQ_WORKER_PENDING_REQUEUE_AFTER_S for the
    sweeper, instead of its lease (seconds).
    """
    # in memory only: the lease keeper's thread writes it, so receipt never waits on the DB
    if request is not None and request.name == CLASSIFY_TASK and request.args:
        get_resources().leases.reserve(str(request.args[0]))


@task_postrun.connect
def _release_job(sender: Any = None, args: Any = None, **_: Any) -> None:
    """Stop renewing a job's lease once its task is over (done, failed, or retrying)."""
    if sender is not None and getattr(sender, "name", None) == CLASSIFY_TASK and args:
        get_resources().leases.release(str(args[0]))


@app.task(bind=True, name=WEBHOOK_TASK, max_retries=None)
def deliver_webhook(self: Task, job_id: str, attempt: int = 0) -> bool:
    """Make the next due delivery attempt of ``job_id``'s event (``attempt`` is unused)."""
    res = get_resources()
    try:
        with log_context(job_id=job_id):
            outcome = attempt_delivery(job_id, res)
    except DatabaseUnavailable as exc:
        raise self.retry(countdown=backoff_s(self.request.retries), exc=exc) from exc
    for waiting in outcome.hand_off:
        publish_delivery(waiting)
    if outcome.retry_in_s is not None:
        publish_delivery(job_id, countdown=outcome.retry_in_s)
        if outcome.claimed:
            crash_point(AFTER_RETRY_PLANNED)
    return outcome.succeeded


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> dict[str, Any]:
    """Re-enqueue jobs whose worker or message was lost; relay webhook events nobody sent."""
    report = sweep_once(get_resources())
    if report.requeued or report.relayed:
        crash_point(SWEEP_BEFORE_PUBLISH)
    try:
        for job_id in report.requeued:
            app.send_task(CLASSIFY_TASK, args=[job_id], headers=job_headers(job_id))
    except Exception:  # kombu errors differ by transport; they are due again after a grace
        logger.warning("sweep: broker refused re-enqueues; the next sweeps try again")
    for job_id in report.relayed:
        publish_delivery(job_id)
    if report.requeued or report.relayed or report.failed:
        logger.info(
            "sweep: re-enqueued %d jobs, failed %d out of attempts, relayed %d webhooks",
            len(report.requeued),
            report.failed,
            len(report.relayed),
        )
    return {
        "requeued": len(report.requeued),
        "webhooks": len(report.relayed),
        "skipped": report.skipped,
    }


@app.task(name=PURGE_TASK, ignore_result=True)
def purge() -> dict[str, int]:
    """Delete finished jobs and images past the retention period (VQ_WORKER_RETENTION_DAYS),
    images no job refers to (left by submissions refused after storing them), and finished
    batches past theirs (VQ_BATCH_RETENTION_DAYS)."""
    result = purge_once(get_resources())
    if result["jobs"]:
        logger.info("purge: deleted %d jobs and %d images", result["jobs"], result["images"])
    if result["orphan_images"]:
        logger.info("purge: deleted %d images no job refers to", result["orphan_images"])
    if result["batches"]:
        logger.info("purge: deleted %d finished batches", result["batches"])
    return result
