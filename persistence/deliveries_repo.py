"""The webhook outbox and delivery log: plain functions over a Session (the caller commits).

A finished job with a ``webhook_url`` gets one outbox row in the transaction that finishes
it. Every attempt is a claim of that row: a conditional UPDATE that counts the attempt (so
attempt numbers are unique) and holds the row until ``claimed_until`` (so one attempt at a
time), taken only while fewer than ``max_in_flight`` attempts go to the same destination::

    pending ──claim──> (attempt in flight) ──2xx──> delivered
       ^                    │  └──410, forbidden, out of retries──> exhausted
       └──due again─────────┘ (next_attempt_at)
    delivered/exhausted ──redeliver──> pending (a new retry series)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, or_, select, text, update
from sqlalchemy.orm import Session, aliased

from persistence import outcome_counts
from persistence.models import OutboxStatus, WebhookDelivery, WebhookOutbox, utcnow

PENDING = OutboxStatus.PENDING.value


@dataclass(frozen=True)
class Claim:
    """One attempt the caller may make now: its number, and its place in the retry series."""

    job_id: str
    attempt: int
    series_attempt: int  # 1 for the first attempt of a series (a redelivery starts one)
    event_id: str
    event_type: str


@dataclass(frozen=True)
class Redelivery:
    """The answer to a redelivery request: the next attempt number, or how long to wait."""

    attempt: int | None
    retry_after_s: float | None = None


def add_event(
    session: Session,
    *,
    job_id: str,
    event_id: str,
    event_type: str,
    destination: str,
    due: datetime | None = None,
) -> WebhookOutbox:
    """Owe the job's event to its webhook: a pending row, due ``due`` (default now)."""
    row = WebhookOutbox(
        job_id=job_id,
        event_id=event_id,
        event_type=event_type,
        destination=destination,
        status=PENDING,
        attempts=0,
        series_start=0,
        next_attempt_at=due or utcnow(),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def get_event(session: Session, job_id: str) -> WebhookOutbox | None:
    """Return the job's outbox row, if it has one."""
    return session.get(WebhookOutbox, job_id)


def claim_attempt(
    session: Session, job_id: str, *, hold_s: float, max_in_flight: int
) -> Claim | None:
    """Take the next attempt of a due event; None if not due, in flight, final or too busy.

    A claim lapses after ``hold_s``: an attempt whose worker died is made again later.
    One statement decides, so SQLite takes its write lock before reading anything.
    """
    now = utcnow()
    if session.get_bind().dialect.name == "postgresql":
        # Serialise claims per destination to the end of the transaction: two claims
        # cannot both count max_in_flight - 1 attempts in flight.
        session.execute(
            text(
                "SELECT pg_advisory_xact_lock(hashtext(destination)) "
                "FROM webhook_outbox WHERE job_id = :job_id"
            ),
            {"job_id": job_id},
        )
    stmt = update(WebhookOutbox).where(
        WebhookOutbox.job_id == job_id,
        WebhookOutbox.status == PENDING,
        WebhookOutbox.next_attempt_at <= now,
        _unclaimed(now),
    )
    if max_in_flight > 0:
        other = aliased(WebhookOutbox)
        in_flight = (
            select(func.count())
            .select_from(other)
            .where(other.destination == WebhookOutbox.destination, other.claimed_until > now)
            .scalar_subquery()
        )
        stmt = stmt.where(in_flight < max_in_flight)
    claimed = session.execute(
        stmt.values(
            attempts=WebhookOutbox.attempts + 1, claimed_until=now + timedelta(seconds=hold_s)
        )
        .returning(
            WebhookOutbox.attempts,
            WebhookOutbox.series_start,
            WebhookOutbox.event_id,
            WebhookOutbox.event_type,
        )
        .execution_options(synchronize_session=False)
    ).first()
    if claimed is None:
        return None
    attempts, series_start, event_id, event_type = claimed
    return Claim(job_id, attempts, attempts - series_start, event_id, event_type)


def waiting_for(session: Session, destination: str, limit: int = 1) -> list[str]:
    """Return the oldest due, unclaimed events for ``destination`` (refused at its cap)."""
    now = utcnow()
    stmt = (
        select(WebhookOutbox.job_id)
        .where(
            WebhookOutbox.destination == destination,
            WebhookOutbox.status == PENDING,
            WebhookOutbox.next_attempt_at <= now,
            _unclaimed(now),
        )
        .order_by(WebhookOutbox.next_attempt_at)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def _unclaimed(now: datetime) -> ColumnElement[bool]:
    return or_(WebhookOutbox.claimed_until.is_(None), WebhookOutbox.claimed_until < now)


def finish_attempt(
    session: Session,
    claim: Claim,
    *,
    delivered: bool,
    next_attempt_at: datetime | None,
) -> str | None:
    """Record the end of a claimed attempt; return the row's new status (None: claim lost).

    ``next_attempt_at`` None after a failure means no attempt is left: exhausted.
    """
    if delivered:
        status = OutboxStatus.DELIVERED.value
    elif next_attempt_at is None:
        status = OutboxStatus.EXHAUSTED.value
    else:
        status = PENDING
    done = session.execute(
        update(WebhookOutbox)
        .where(
            WebhookOutbox.job_id == claim.job_id,
            WebhookOutbox.attempts == claim.attempt,
            WebhookOutbox.status == PENDING,
        )
        .values(
            status=status,
            next_attempt_at=next_attempt_at if status == PENDING else None,
            claimed_until=None,
            relayed_at=None,
        )
        .returning(WebhookOutbox.job_id)
        .execution_options(synchronize_session=False)
    ).first()
    return status if done is not None else None


def relay_due(
    session: Session, *, stale_s: float, relay_every_s: float, limit: int = 100
) -> list[str]:
    """Return events due for over ``stale_s`` that no attempt holds, and mark them relayed.

    A message normally claims an event the moment it is due; one still waiting after
    ``stale_s`` has lost its message (a failed publish, a crash, a broker restart). Each
    is relayed at most once per ``relay_every_s``, so a long queue is not flooded.
    """
    now = utcnow()
    rows = list(
        session.scalars(
            select(WebhookOutbox.job_id)
            .where(
                WebhookOutbox.status == PENDING,
                WebhookOutbox.next_attempt_at <= now - timedelta(seconds=stale_s),
                _unclaimed(now),
                or_(
                    WebhookOutbox.relayed_at.is_(None),
                    WebhookOutbox.relayed_at < now - timedelta(seconds=relay_every_s),
                ),
            )
            .order_by(WebhookOutbox.next_attempt_at)
            .limit(limit)
        )
    )
    if rows:
        session.execute(
            update(WebhookOutbox)
            .where(WebhookOutbox.job_id.in_(rows))
            .values(relayed_at=now)
            .execution_options(synchronize_session=False)
        )
    return rows


def redeliver(
    session: Session,
    *,
    job_id: str,
    event_id: str,
    event_type: str,
    destination: str,
    min_interval_s: float,
) -> Redelivery:
    """Make the job's event due now in a new retry series, at most once per interval.

    Concurrent requests are serialised by the row update: one wins, the others wait.
    """
    now = utcnow()
    restart = (
        update(WebhookOutbox)
        .where(
            WebhookOutbox.job_id == job_id,
            or_(
                WebhookOutbox.redelivered_at.is_(None),
                WebhookOutbox.redelivered_at <= now - timedelta(seconds=min_interval_s),
            ),
        )
        .values(
            status=PENDING,
            series_start=WebhookOutbox.attempts,
            next_attempt_at=now,
            redelivered_at=now,
            relayed_at=None,
        )
        .returning(WebhookOutbox.attempts)
        .execution_options(synchronize_session=False)
    )
    attempts = session.execute(restart).scalar_one_or_none()
    if attempts is not None:
        return Redelivery(int(attempts) + 1)
    row = session.get(WebhookOutbox, job_id)
    if row is not None and row.redelivered_at is not None:
        wait = (row.redelivered_at + timedelta(seconds=min_interval_s) - now).total_seconds()
        return Redelivery(None, max(wait, 0.001))
    # A job finished before the outbox existed: owe its event now, numbered after its log.
    logged = session.scalar(
        select(func.max(WebhookDelivery.attempt)).where(WebhookDelivery.job_id == job_id)
    )
    last = int(logged or 0)
    add_event(
        session,
        job_id=job_id,
        event_id=event_id,
        event_type=event_type,
        destination=destination,
        due=now,
    )
    session.execute(
        update(WebhookOutbox)
        .where(WebhookOutbox.job_id == job_id)
        .values(attempts=last, series_start=last, redelivered_at=now)
        .execution_options(synchronize_session=False)
    )
    return Redelivery(last + 1)


def record_attempt(
    session: Session,
    *,
    job_id: str,
    event_id: str,
    event_type: str,
    attempt: int,
    succeeded: bool,
    latency_ms: float,
    status_code: int | None = None,
    error: str | None = None,
    next_attempt_at: datetime | None = None,
    attempted_at: datetime | None = None,
) -> WebhookDelivery:
    """Append one attempt to the job's delivery log (what ``/deliveries`` shows) and count it
    in the running webhook totals (the front's ``/metrics``)."""
    delivery = WebhookDelivery(
        job_id=job_id,
        event_id=event_id,
        event_type=event_type,
        attempt=attempt,
        attempted_at=attempted_at or utcnow(),
        status_code=status_code,
        error=error,
        latency_ms=latency_ms,
        succeeded=succeeded,
        next_attempt_at=next_attempt_at,
    )
    session.add(delivery)
    session.flush()
    outcome_counts.record_delivery(session, succeeded, error, latency_ms / 1000)
    return delivery


def list_attempts(session: Session, job_id: str) -> Sequence[WebhookDelivery]:
    """Return the job's delivery attempts, oldest first."""
    stmt = (
        select(WebhookDelivery)
        .where(WebhookDelivery.job_id == job_id)
        .order_by(WebhookDelivery.attempted_at, WebhookDelivery.id)
    )
    return list(session.scalars(stmt))


def pending_job_ids(session: Session, job_ids: Sequence[str]) -> set[str]:
    """Return which of ``job_ids`` still owe a webhook event (retention keeps them)."""
    if not job_ids:
        return set()
    stmt = select(WebhookOutbox.job_id).where(
        WebhookOutbox.job_id.in_(job_ids), WebhookOutbox.status == PENDING
    )
    return set(session.scalars(stmt))
