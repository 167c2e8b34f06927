"""Celery tasks: thin edges around ``jobs.classify`` and ``jobs.notify``.

``classify_job`` retries only transient failures, with exponential backoff and jitter;
``acks_late`` + ``reject_on_worker_lost`` (app config) redeliver a job whose worker died.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from typing import Any

from celery import Task
from celery.signals import setup_logging, worker_init, worker_process_init
from celery.utils.log import get_task_logger

from jobs.celery_app import CLASSIFY_TASK, PURGE_TASK, SWEEP_TASK, WEBHOOK_QUEUE, WEBHOOK_TASK, app
from jobs.classify import PermanentJobError, TransientJobError, fail_job, process_job
from jobs.metrics import IMAGE_TASK_FAILURE, IMAGE_TASK_LATENCY, IMAGE_TASK_SUCCESS
from jobs.notify import attempt_delivery, due_deliveries, hand_to_sweeper
from jobs.resources import get_resources
from persistence import jobs_repo
from persistence.db import session_scope
from visionqueue.core.errors import DatabaseUnavailable
from visionqueue.core.logging_setup import configure_logging, log_context

logger = get_task_logger(__name__)


def backoff_s(retries: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter: 1, 2, 4 ... capped, times U(0.5, 1.5)."""
    return min(cap, base * 2**retries) * random.uniform(0.5, 1.5)


def notify_if_needed(webhook_url: str | None, job_id: str) -> None:
    if webhook_url:
        app.send_task(WEBHOOK_TASK, args=[job_id, 1], queue=WEBHOOK_QUEUE)


@app.task(bind=True, name=CLASSIFY_TASK, max_retries=None)
def classify_job(self: Task, job_id: str) -> str:
    """Classify the image of job ``job_id`` and store the result."""
    # the whole task: retries and failures log with the job_id field too
    with log_context(job_id=job_id):
        res = get_resources()
        try:
            outcome = process_job(job_id, res)
        except PermanentJobError as exc:
            outcome = fail_job(job_id, res, exc.code, exc.message)
            if outcome.status == "failed":
                IMAGE_TASK_FAILURE.labels(code=exc.code).inc()
                logger.info("job %s failed: %s", job_id, exc.code)
        except TransientJobError as exc:
            if self.request.retries >= res.settings.worker.max_retries:
                outcome = fail_job(job_id, res, exc.code, f"gave up after retries: {exc.message}")
                if outcome.status == "failed":
                    IMAGE_TASK_FAILURE.labels(code=exc.code).inc()
            else:
                delay = backoff_s(self.request.retries)
                logger.warning("job %s: %s; retry in %.1fs", job_id, exc.code, delay)
                raise self.retry(countdown=delay, exc=exc) from exc
        if outcome.status == "completed":
            IMAGE_TASK_SUCCESS.inc()
            if outcome.latency_s is not None:
                IMAGE_TASK_LATENCY.observe(outcome.latency_s)
        if outcome.status in ("completed", "failed"):
            notify_if_needed(outcome.webhook_url, job_id)
        return outcome.status


@app.task(bind=True, name=WEBHOOK_TASK, max_retries=None)
def deliver_webhook(self: Task, job_id: str, attempt: int) -> bool:
    """Deliver the finished-job event of ``job_id`` (attempt number ``attempt``)."""
    res = get_resources()
    try:
        with log_context(job_id=job_id):
            outcome = attempt_delivery(job_id, attempt, res)
    except DatabaseUnavailable as exc:
        raise self.retry(countdown=backoff_s(self.request.retries), exc=exc) from exc
    if outcome.retry_in_s is not None:
        try:
            deliver_webhook.apply_async(args=[job_id, attempt + 1], countdown=outcome.retry_in_s)
        except Exception:  # kombu errors differ by transport; the attempt is already logged
            logger.warning("job %s: webhook retry not queued; left to the sweeper", job_id)
            hand_to_sweeper(res, job_id, attempt, outcome.retry_in_s)
    return outcome.succeeded


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> dict[str, Any]:
    """Re-enqueue jobs whose message was lost and send webhook retries that are due."""
    res = get_resources()
    worker = res.settings.worker
    older = timedelta(seconds=worker.pending_requeue_after_s)
    # processing for twice the task time limit: its worker died (a live one is done by then)
    stuck = max(older, timedelta(seconds=2 * worker.task_time_limit_s))
    with session_scope(res.engine) as session:
        stale = [job.id for job in jobs_repo.stale_pending_jobs(session, older)]
        stale += [job.id for job in jobs_repo.stale_processing_jobs(session, stuck)]
        jobs_repo.mark_queued(session, stale)
    for job_id in stale:
        app.send_task(CLASSIFY_TASK, args=[job_id])
    due = due_deliveries(res)
    for job_id, attempt in due:
        app.send_task(WEBHOOK_TASK, args=[job_id, attempt], queue=WEBHOOK_QUEUE)
    if stale or due:
        logger.info("sweep: re-enqueued %d jobs, %d webhook retries", len(stale), len(due))
    return {"requeued": len(stale), "webhooks": len(due)}


@worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    # a forked pool child must build its own engine and clients
    from persistence.db import dispose_engines

    dispose_engines()


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    # connected, so Celery leaves logging to us: VQ_LOG_LEVEL/VQ_LOG_JSON, ids, redaction
    from visionqueue.core.settings import get_settings

    configure_logging(get_settings(), housekeeping_tasks=(SWEEP_TASK, PURGE_TASK))


@worker_init.connect
def _start_metrics_server(**_: Any) -> None:
    from prometheus_client import start_http_server

    from jobs.migrations_at_start import migrate_on_start
    from visionqueue.core.settings import get_settings

    settings = get_settings()
    try:
        settings.check_secrets()
    except ValueError as exc:
        # SystemExit: Celery swallows ordinary exceptions raised in worker_init
        raise SystemExit(f"refusing to start: {exc}") from None
    migrate_on_start(settings)
    port = settings.observability.worker_metrics_port
    if port:
        from jobs.metrics import prime_failure_series

        prime_failure_series()
        try:
            start_http_server(port, addr=settings.server.host)
        except OSError as exc:  # another worker on this host has the port
            logging.getLogger(__name__).warning("worker metrics port %d busy: %s", port, exc)


@app.task(name=PURGE_TASK, ignore_result=True)
def purge() -> dict[str, int]:
    """Delete finished jobs and images past the retention period (VQ_WORKER_RETENTION_DAYS),
    and images no job refers to (left by submissions refused after storing them)."""
    from jobs.retention import purge_expired, purge_orphans

    res = get_resources()
    result = purge_expired(res.engine, res.store, res.settings.worker.retention_days)
    if result.jobs:
        logger.info("purge: deleted %d jobs and %d images", result.jobs, result.images)
    orphans = purge_orphans(res.engine, res.store) if res.settings.worker.purge_orphan_images else 0
    if orphans:
        logger.info("purge: deleted %d images no job refers to", orphans)
    return {"jobs": result.jobs, "images": result.images, "orphan_images": orphans}
