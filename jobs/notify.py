"""Webhook notifications of finished jobs: one signed attempt, logged, next one planned.

Short waits are scheduled with a Celery countdown; long ones (hours, up to ~3 days) are
written as ``next_attempt_at`` on the delivery row and picked up by the sweeper, so no
message sits in the broker for hours (Redis would redeliver it after its visibility timeout).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, update

from jobs.metrics import WEBHOOK_FAILURE, WEBHOOK_LATENCY, WEBHOOK_SUCCESS
from jobs.resources import Resources
from jobs.views import task_status_view
from jobs.webhooks.delivery import build_event, deliver_once, next_delay
from jobs.webhooks.signing import signed_headers
from persistence import jobs_repo
from persistence.db import session_scope
from persistence.models import WebhookDelivery, utcnow

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


def attempt_delivery(job_id: str, attempt: int, res: Resources) -> DeliveryOutcome:
    """Make delivery attempt number ``attempt`` for a finished job and log it."""
    settings = res.settings
    with session_scope(res.engine) as session:
        job = jobs_repo.get_job_by_id(session, job_id)
        if job is None or not job.webhook_url or job.status not in ("completed", "failed"):
            return DeliveryOutcome(False, None)
        event_type = event_type_for(job.status)
        event_id = event_id_for(job_id, event_type)
        image_url = res.store.url(job.image_key, settings.server.image_url_ttl_s)
        body = build_event(event_type, event_id, task_status_view(job, image_url), utcnow())
        url = job.webhook_url
    headers = (
        signed_headers(settings.webhook.secrets, event_id, int(time.time()), body)
        if (settings.webhook.secrets)
        else {
            "webhook-id": event_id,
            "webhook-timestamp": str(int(time.time())),
            "content-type": "application/json",
        }
    )
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
    next_at = (
        utcnow() + timedelta(seconds=delay)
        if delay is not None and (delay > COUNTDOWN_LIMIT_S)
        else None
    )
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
    if delay is not None and delay <= COUNTDOWN_LIMIT_S:
        return DeliveryOutcome(False, delay)
    return DeliveryOutcome(result.succeeded, None)


def due_deliveries(res: Resources, limit: int = 100) -> list[tuple[str, int]]:
    """Claim logged attempts whose retry is due; return (job_id, next attempt number)."""
    now = utcnow()
    claimed: list[tuple[str, int]] = []
    with session_scope(res.engine) as session:
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.job_id, WebhookDelivery.attempt)
            .where(WebhookDelivery.next_attempt_at.is_not(None))
            .where(WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        ).all()
        for row_id, job_id, attempt in rows:
            # clear the mark first so two sweepers never send the same attempt twice
            done = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == row_id, WebhookDelivery.next_attempt_at.is_not(None))
                .values(next_attempt_at=None)
                .returning(WebhookDelivery.id)
            ).first()
            if done:
                claimed.append((job_id, attempt + 1))
    return claimed


def next_attempt_number(res: Resources, job_id: str) -> int:
    """Return the attempt number a manual redelivery gets."""
    with session_scope(res.engine) as session:
        last = session.scalar(
            select(func.max(WebhookDelivery.attempt)).where(WebhookDelivery.job_id == job_id)
        )
    return int(last or 0) + 1


def cancel_scheduled(res: Resources, job_id: str) -> None:
    """Drop pending sweeper retries of a job (a manual redelivery replaces them)."""
    with session_scope(res.engine) as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id, WebhookDelivery.next_attempt_at.is_not(None))
            .values(next_attempt_at=None)
        )
