"""Webhook notifications of finished jobs: one signed attempt, logged, next one planned.

Short waits are scheduled with a Celery countdown; long ones (hours, up to ~3 days) are
written as ``next_attempt_at`` on the delivery row and picked up by the sweeper, so no
message sits in the broker for hours (Redis would redeliver it after its visibility timeout).

Every attempt number is sent at most once per log row: a duplicate message (broker
redelivery, a manual redelivery racing a pending retry) finds its number logged and stops.
Without ``VQ_WEBHOOK_SECRETS`` requests go out unsigned, with no ``webhook-signature``
header, in dev only; in production they are not sent (logged ``signing_error``, retried).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from jobs.metrics import WEBHOOK_FAILURE, WEBHOOK_LATENCY, WEBHOOK_SUCCESS
from jobs.resources import Resources
from jobs.views import task_status_view
from jobs.webhooks import delivery_log
from jobs.webhooks.delivery import AttemptResult, build_event, deliver_once, next_delay
from jobs.webhooks.signing import USER_AGENT, SecretLike, signed_headers
from persistence import jobs_repo
from persistence.db import session_scope
from persistence.images import image_url_or_none
from persistence.models import Job, utcnow

logger = logging.getLogger(__name__)

# Above this wait the sweeper, not a broker countdown, schedules the next attempt.
COUNTDOWN_LIMIT_S = 600.0


@dataclass(frozen=True)
class DeliveryOutcome:
    succeeded: bool
    retry_in_s: float | None  # countdown for the next attempt; None = none or the sweeper


def event_id_for(job_id: str, event_type: str) -> str:
    """Return the stable id of a job's event (the same for every retry and redelivery)."""
    return f"evt_{uuid.uuid5(uuid.NAMESPACE_URL, f'visionqueue:{job_id}:{event_type}').hex}"


def event_type_for(status: str) -> str:
    return "job.completed" if status == "completed" else "job.failed"


def event_headers(
    secrets: Sequence[SecretLike],
    event_id: str,
    timestamp: int,
    body: bytes,
    *,
    allow_unsigned: bool = True,
) -> dict[str, str]:
    """Return the request headers: signed with every secret, or unsigned when there is none."""
    if secrets:
        return signed_headers(secrets, event_id, timestamp, body)
    if not allow_unsigned:
        raise ValueError("no webhook secret configured")
    _warn_unsigned()
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(timestamp)),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def attempt_delivery(job_id: str, attempt: int, res: Resources) -> DeliveryOutcome:
    """Make delivery attempt number ``attempt`` for a finished job and log it."""
    settings = res.settings
    with session_scope(res.engine) as session:
        job = jobs_repo.get_job_by_id(session, job_id)
        if job is None or not job.webhook_url or job.status not in ("completed", "failed"):
            return DeliveryOutcome(False, None)
        event_type = event_type_for(job.status)
        event_id = event_id_for(job_id, event_type)
        data = task_status_view(job, _image_url(res, job))
        # The event happened when the job finished: the body says so on every attempt.
        body = build_event(event_type, event_id, data, job.finished_at or utcnow())
        url = job.webhook_url
    if delivery_log.attempt_logged(res.engine, job_id, attempt):
        logger.info("job %s: webhook attempt %d already made; duplicate dropped", job_id, attempt)
        return DeliveryOutcome(False, None)

    try:
        headers = event_headers(
            settings.webhook.secrets,
            event_id,
            int(time.time()),
            body,
            allow_unsigned=settings.server.env != "production",
        )
    except ValueError:
        # The operator's to fix (check_secrets refuses it at start); retries go on meanwhile.
        logger.error("job %s: webhook not sent, VQ_WEBHOOK_SECRETS is malformed or empty", job_id)
        result = AttemptResult(None, "signing_error", 0.0)
    else:
        result = deliver_once(
            url, body, headers, settings.webhook.timeout_s, settings.webhook.allowed_hosts
        )
        WEBHOOK_LATENCY.observe(result.latency_s)

    delay = None
    if result.succeeded:
        WEBHOOK_SUCCESS.inc()
    else:
        WEBHOOK_FAILURE.labels(error=result.error or "unknown").inc()
        if not result.permanent:
            delay = next_delay(attempt, settings.webhook.retry_schedule, result.retry_after_s)
    next_at = None
    if delay is not None and delay > COUNTDOWN_LIMIT_S:
        next_at, delay = utcnow() + timedelta(seconds=delay), None
    with session_scope(res.engine) as session:
        jobs_repo.record_delivery(
            session,
            job_id=job_id,
            event_id=event_id,
            event_type=event_type,
            attempt=attempt,
            succeeded=result.succeeded,
            latency_ms=result.latency_s * 1000,
            status_code=result.status_code,
            error=result.error,
            next_attempt_at=next_at,
        )
    logger.info(
        "job %s: webhook attempt %d %s%s",
        job_id,
        attempt,
        "delivered" if result.succeeded else f"failed ({result.error})",
        _next_note(delay, next_at),
    )
    return DeliveryOutcome(result.succeeded, delay)


def due_deliveries(res: Resources, limit: int = 100) -> list[tuple[str, int]]:
    """Claim logged attempts whose retry is due; return (job_id, next attempt number)."""
    return delivery_log.due_deliveries(res.engine, limit)


def hand_to_sweeper(res: Resources, job_id: str, attempt: int, delay_s: float) -> None:
    """Leave the retry after ``attempt`` to the sweeper (the countdown could not be queued)."""
    delivery_log.schedule_retry(res.engine, job_id, attempt, utcnow() + timedelta(seconds=delay_s))


def _next_note(delay: float | None, next_at: datetime | None) -> str:
    if delay is not None:
        return f"; next in {delay:.1f}s"
    if next_at is not None:
        return f"; next at {next_at.isoformat()} (sweeper)"
    return ""


def _image_url(res: Resources, job: Job) -> str | None:
    if job.result is None:
        return None  # only results carry the image URL
    return image_url_or_none(res.store, job.image_key, res.settings.server.image_url_ttl_s)


@functools.cache
def _warn_unsigned() -> None:
    logger.warning("VQ_WEBHOOK_SECRETS is empty: webhooks are sent unsigned (dev only)")
