"""Query and update the webhook delivery log: due retries, attempt numbers, duplicates.

Plain functions over an engine, importable by the front (no metrics, no Celery).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, func, select, update

from persistence.db import session_scope
from persistence.models import WebhookDelivery, utcnow


def due_deliveries(engine: Engine, limit: int = 100) -> list[tuple[str, int]]:
    """Claim logged attempts whose retry is due; return (job_id, next attempt number)."""
    now = utcnow()
    claimed: list[tuple[str, int]] = []
    with session_scope(engine) as session:
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.job_id, WebhookDelivery.attempt)
            .where(WebhookDelivery.next_attempt_at.is_not(None))
            .where(WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        ).all()
        for row_id, job_id, attempt in rows:
            # Clearing the mark under the row lock is the claim: a concurrent sweeper's
            # UPDATE re-reads the row after our commit, matches nothing and sends nothing.
            done = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == row_id, WebhookDelivery.next_attempt_at.is_not(None))
                .values(next_attempt_at=None)
                .returning(WebhookDelivery.id)
            ).first()
            if done:
                claimed.append((job_id, attempt + 1))
    return claimed


def next_attempt_number(engine: Engine, job_id: str) -> int:
    """Return the attempt number a manual redelivery gets."""
    with session_scope(engine) as session:
        last = session.scalar(
            select(func.max(WebhookDelivery.attempt)).where(WebhookDelivery.job_id == job_id)
        )
    return int(last or 0) + 1


def cancel_scheduled(engine: Engine, job_id: str, before_attempt: int) -> int:
    """Drop sweeper retries planned by attempts before ``before_attempt`` (a redelivery)."""
    with session_scope(engine) as session:
        result = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.job_id == job_id,
                WebhookDelivery.attempt < before_attempt,
                WebhookDelivery.next_attempt_at.is_not(None),
            )
            .values(next_attempt_at=None)
            .returning(WebhookDelivery.id)
        )
        return len(result.all())


def schedule_retry(engine: Engine, job_id: str, attempt: int, when: datetime) -> None:
    """Mark logged attempt ``attempt`` for a retry at ``when`` by the sweeper."""
    with session_scope(engine) as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id, WebhookDelivery.attempt == attempt)
            .values(next_attempt_at=when)
        )


def attempt_logged(engine: Engine, job_id: str, attempt: int) -> bool:
    """Tell whether attempt number ``attempt`` of the job's event is already in the log."""
    with session_scope(engine) as session:
        found = session.scalar(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.job_id == job_id, WebhookDelivery.attempt == attempt)
            .limit(1)
        )
    return found is not None
