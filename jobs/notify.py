"""Webhook notifications of finished jobs and batches: the outbox row, one signed attempt,
the next one.

A finished job owes its event from the transaction that finishes it (``owe_event``): the
outbox row is the truth, a broker message only makes the attempt prompt. Each attempt
claims the row (``deliveries_repo.claim_attempt``), which numbers it, keeps it the only
attempt in flight, and caps attempts in flight per destination. The outcome and the next
due time are written back in one transaction with the delivery log. Short waits also get a
Celery countdown (the fast path); a message lost on the way (failed publish, SIGKILL, a
broker restart) is covered by the sweeper, which relays every due row no message claimed.

Jobs and batches share all of it (``attempt_event``), each with its own outbox and log
(``deliveries_repo.JOBS``, ``deliveries_repo.BATCHES``) and its own event body.

Without ``VQ_WEBHOOK_SECRETS`` requests go out unsigned, with no ``webhook-signature``
header, in dev only; in production they are not sent (logged ``signing_error``, retried).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from jobs.metrics import worker_metrics
from jobs.resources import Resources
from jobs.views import task_status_view
from jobs.webhooks.delivery import AttemptResult, build_event, deliver_once, next_delay
from jobs.webhooks.signing import USER_AGENT, SecretLike, signed_headers
from jobs.webhooks.tenant_secrets import signing_secrets
from persistence import deliveries_repo, jobs_repo
from persistence.db import session_scope
from persistence.images import image_url_or_none
from persistence.models import Job, utcnow
from visionqueue.core.webhook_events import destination_of, event_id_for, event_type_for

logger = logging.getLogger(__name__)

__all__ = ["destination_of", "event_id_for", "event_type_for"]  # re-exported for callers

# Above this wait only the row's due time schedules the next attempt (the sweeper relays
# it): no message sits in the broker for hours (Redis would redeliver it after its
# visibility timeout).
COUNTDOWN_LIMIT_S = 600.0
# A claimed attempt is held this long past its deadline before another may take over.
CLAIM_MARGIN_S = 10.0
# A due row still unclaimed after this long has lost its message; relay it, and again
# at most this often while the queue is long (the sweeper passes its own interval).
RELAY_STALE_S = 15.0
RELAY_EVERY_S = 30.0


@dataclass(frozen=True)
class DeliveryOutcome:
    succeeded: bool
    retry_in_s: float | None  # countdown for the fast path; None = none or the sweeper
    claimed: bool = True
    # events for the same destination that waited for this attempt's slot: publish them
    hand_off: tuple[str, ...] = ()


def owe_event(session: Session, job_id: str, status: str, webhook_url: str) -> None:
    """Write the finished job's outbox row, due now, in the caller's transaction."""
    event_type = event_type_for(status)
    deliveries_repo.add_event(
        session,
        subject_id=job_id,
        event_id=event_id_for(job_id, event_type),
        event_type=event_type,
        destination=destination_of(webhook_url),
    )


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


@dataclass(frozen=True)
class OwedEvent:
    """What an attempt sends: where, the event's data, when it happened, whose secrets sign it."""

    url: str
    data: dict[str, Any]
    happened_at: datetime
    owner: str | None


# Reads the subject of a claimed event in the claim's transaction.
DescribeEvent = Callable[[Session, str, Resources], OwedEvent]


def attempt_delivery(job_id: str, res: Resources) -> DeliveryOutcome:
    """Claim the job's next due attempt, make it, and record its outcome."""
    return attempt_event(deliveries_repo.JOBS, job_id, res, _job_event)


def _job_event(session: Session, job_id: str, res: Resources) -> OwedEvent:
    job = jobs_repo.get_job_by_id(session, job_id)
    assert job is not None  # the outbox row references the job
    # The event happened when the job finished: the body says so on every attempt.
    data = task_status_view(job, _image_url(res, job))
    return OwedEvent(job.webhook_url or "", data, job.finished_at or utcnow(), job.owner)


def attempt_event(
    outbox: deliveries_repo.Outbox, subject_id: str, res: Resources, describe: DescribeEvent
) -> DeliveryOutcome:
    """Claim the subject's next due attempt, make it, and record its outcome in its log."""
    settings = res.settings
    hook = settings.webhook
    with session_scope(res.engine) as session:
        claim = deliveries_repo.claim_attempt(
            session,
            subject_id,
            hold_s=hook.timeout_s + CLAIM_MARGIN_S,
            max_in_flight=hook.max_in_flight_per_destination,
            outbox=outbox,
        )
        if claim is None:
            # not due, in flight, final; or its destination is at the cap, and then the
            # attempt that frees a slot hands it on (the relay if that attempt dies)
            return DeliveryOutcome(False, None, claimed=False)
        event = deliveries_repo.get_event(session, subject_id, outbox)
        assert event is not None
        owed = describe(session, subject_id, res)
        body = build_event(claim.event_type, claim.event_id, owed.data, owed.happened_at)
        owed_since, destination = event.created_at, event.destination

    try:
        headers = event_headers(
            signing_secrets(hook, owed.owner),
            claim.event_id,
            int(time.time()),
            body,
            allow_unsigned=settings.server.env != "production",
        )
    except ValueError:
        # The operator's to fix (check_secrets refuses it at start); retries go on meanwhile.
        logger.error(
            "%s %s: webhook not sent, VQ_WEBHOOK_SECRETS is malformed or empty",
            outbox.noun,
            subject_id,
        )
        result = AttemptResult(None, "signing_error", 0.0)
    else:
        result = deliver_once(owed.url, body, headers, hook.timeout_s, hook.allowed_hosts)
        worker_metrics().webhook_latency.observe(result.latency_s)

    delay = None
    if result.succeeded:
        worker_metrics().webhook_success.inc()
    else:
        worker_metrics().webhook_failure.labels(error=result.error or "unknown").inc()
        if not result.permanent:
            delay = next_delay(claim.series_attempt, hook.retry_schedule, result.retry_after_s)
    now = utcnow()
    next_at = None if delay is None else now + timedelta(seconds=delay)
    if next_at is not None and next_at > owed_since + timedelta(seconds=hook.delivery_deadline_s):
        next_at = delay = None  # past the delivery deadline: give up
    with session_scope(res.engine) as session:
        deliveries_repo.record_attempt(
            session,
            subject_id=subject_id,
            event_id=claim.event_id,
            event_type=claim.event_type,
            attempt=claim.attempt,
            succeeded=result.succeeded,
            latency_ms=result.latency_s * 1000,
            status_code=result.status_code,
            error=result.error,
            next_attempt_at=next_at,
            outbox=outbox,
        )
        status = deliveries_repo.finish_attempt(
            session, claim, delivered=result.succeeded, next_attempt_at=next_at, outbox=outbox
        )
        waiting = deliveries_repo.waiting_for(session, destination, outbox=outbox)
    if status == "exhausted":
        worker_metrics().webhook_exhausted.inc()
    logger.info(
        "%s %s: webhook attempt %d %s%s",
        outbox.noun,
        subject_id,
        claim.attempt,
        "delivered" if result.succeeded else f"failed ({result.error})",
        _next_note(next_at, status),
    )
    fast = delay if delay is not None and delay <= COUNTDOWN_LIMIT_S else None
    return DeliveryOutcome(result.succeeded, fast, hand_off=tuple(waiting))


def relay_due(
    res: Resources,
    every_s: float = RELAY_EVERY_S,
    limit: int = 100,
    outbox: deliveries_repo.Outbox = deliveries_repo.JOBS,
) -> list[str]:
    """Return the subjects whose due event lost its message (and mark them relayed)."""
    with session_scope(res.engine) as session:
        return deliveries_repo.relay_due(
            session, stale_s=RELAY_STALE_S, relay_every_s=every_s, limit=limit, outbox=outbox
        )


def _next_note(next_at: datetime | None, status: str | None) -> str:
    if status == "exhausted":
        return "; retries exhausted"
    if status is None:
        return "; its claim had lapsed (another attempt took over)"
    if next_at is not None:
        return f"; next at {next_at.isoformat()}"
    return ""


def _image_url(res: Resources, job: Job) -> str | None:
    if job.result is None:
        return None  # only results carry the image URL
    return image_url_or_none(res.store, job.image_key, res.settings.server.image_url_ttl_s)


@functools.cache
def _warn_unsigned() -> None:
    logger.warning("VQ_WEBHOOK_SECRETS is empty: webhooks are sent unsigned (dev only)")
