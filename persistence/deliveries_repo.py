"""The webhook outbox and delivery log: plain functions over a Session (the caller commits).

Two subjects owe events, each with its own outbox and log of the same columns: jobs
(``JOBS``: ``webhook_outbox``, ``webhook_deliveries``) and dataset batches (``BATCHES``:
``batch_webhook_outbox``, ``batch_webhook_deliveries``); every function takes the one it
works on (the jobs' by default). A finished job (or ended batch) with a ``webhook_url``
gets one outbox row in the transaction that finishes it. Every attempt is a claim of that row: a conditional UPDATE that counts the attempt (so
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
from typing import Any, cast

from sqlalchemy import ColumnElement, func, or_, select, text, update
from sqlalchemy.orm import Session, aliased

from persistence import outcome_counts
from persistence.models import (
    BatchWebhookDelivery,
    BatchWebhookOutbox,
    DeliveryLogColumns,
    OutboxColumns,
    OutboxStatus,
    WebhookDelivery,
    WebhookOutbox,
    utcnow,
)

PENDING = OutboxStatus.PENDING.value


@dataclass(frozen=True)
class Outbox:
    """Which subject's outbox and delivery log: their tables and the column naming the subject."""

    noun: str  # job | batch: how logs and messages name the subject
    row: type[WebhookOutbox] | type[BatchWebhookOutbox]
    log: type[WebhookDelivery] | type[BatchWebhookDelivery]
    key: str  # job_id | batch_id

    def row_key(self) -> Any:
        """The outbox's subject column."""
        return getattr(self.row, self.key)

    def log_key(self) -> Any:
        """The delivery log's subject column."""
        return getattr(self.log, self.key)


JOBS = Outbox("job", WebhookOutbox, WebhookDelivery, "job_id")
BATCHES = Outbox("batch", BatchWebhookOutbox, BatchWebhookDelivery, "batch_id")


@dataclass(frozen=True)
class Claim:
    """One attempt the caller may make now: its number, and its place in the retry series."""

    subject_id: str  # the job's or the batch's id
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
    subject_id: str,
    event_id: str,
    event_type: str,
    destination: str,
    due: datetime | None = None,
    outbox: Outbox = JOBS,
) -> OutboxColumns:
    """Owe the subject's event to its webhook: a pending row, due ``due`` (default now)."""
    row = outbox.row(
        event_id=event_id,
        event_type=event_type,
        destination=destination,
        status=PENDING,
        attempts=0,
        series_start=0,
        next_attempt_at=due or utcnow(),
        created_at=utcnow(),
        **{outbox.key: subject_id},
    )
    session.add(row)
    session.flush()
    return row


def get_event(session: Session, subject_id: str, outbox: Outbox = JOBS) -> OutboxColumns | None:
    """Return the subject's outbox row, if it has one."""
    return cast("OutboxColumns | None", session.get(outbox.row, subject_id))


def claim_attempt(
    session: Session,
    subject_id: str,
    *,
    hold_s: float,
    max_in_flight: int,
    outbox: Outbox = JOBS,
) -> Claim | None:
    """Take the next attempt of a due event; None if not due, in flight, final or too busy.

    A claim lapses after ``hold_s``: an attempt whose worker died is made again later.
    One statement decides, so SQLite takes its write lock before reading anything.
    """
    now = utcnow()
    row = outbox.row
    if session.get_bind().dialect.name == "postgresql":
        # Serialise claims per destination to the end of the transaction: two claims
        # cannot both count max_in_flight - 1 attempts in flight.
        session.execute(
            text(
                "SELECT pg_advisory_xact_lock(hashtext(destination)) "
                f"FROM {row.__tablename__} WHERE {outbox.key} = :subject_id"
            ),
            {"subject_id": subject_id},
        )
    stmt = update(row).where(
        outbox.row_key() == subject_id,
        row.status == PENDING,
        row.next_attempt_at <= now,
        _unclaimed(outbox, now),
    )
    if max_in_flight > 0:
        other = aliased(row)
        in_flight = (
            select(func.count())
            .select_from(other)
            .where(other.destination == row.destination, other.claimed_until > now)
            .scalar_subquery()
        )
        stmt = stmt.where(in_flight < max_in_flight)
    claimed = session.execute(
        stmt.values(attempts=row.attempts + 1, claimed_until=now + timedelta(seconds=hold_s))
        .returning(row.attempts, row.series_start, row.event_id, row.event_type)
        .execution_options(synchronize_session=False)
    ).first()
    if claimed is None:
        return None
    attempts, series_start, event_id, event_type = claimed
    return Claim(subject_id, attempts, attempts - series_start, event_id, event_type)


def waiting_for(
    session: Session, destination: str, limit: int = 1, outbox: Outbox = JOBS
) -> list[str]:
    """Return the oldest due, unclaimed events for ``destination`` (refused at its cap)."""
    now = utcnow()
    row = outbox.row
    stmt = (
        select(outbox.row_key())
        .where(
            row.destination == destination,
            row.status == PENDING,
            row.next_attempt_at <= now,
            _unclaimed(outbox, now),
        )
        .order_by(row.next_attempt_at)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def _unclaimed(outbox: Outbox, now: datetime) -> ColumnElement[bool]:
    return or_(outbox.row.claimed_until.is_(None), outbox.row.claimed_until < now)


def finish_attempt(
    session: Session,
    claim: Claim,
    *,
    delivered: bool,
    next_attempt_at: datetime | None,
    outbox: Outbox = JOBS,
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
    row = outbox.row
    done = session.execute(
        update(row)
        .where(
            outbox.row_key() == claim.subject_id,
            row.attempts == claim.attempt,
            row.status == PENDING,
        )
        .values(
            status=status,
            next_attempt_at=next_attempt_at if status == PENDING else None,
            claimed_until=None,
            relayed_at=None,
        )
        .returning(outbox.row_key())
        .execution_options(synchronize_session=False)
    ).first()
    return status if done is not None else None


def relay_due(
    session: Session,
    *,
    stale_s: float,
    relay_every_s: float,
    limit: int = 100,
    outbox: Outbox = JOBS,
) -> list[str]:
    """Return events due for over ``stale_s`` that no attempt holds, and mark them relayed.

    A message normally claims an event the moment it is due; one still waiting after
    ``stale_s`` has lost its message (a failed publish, a crash, a broker restart). Each
    is relayed at most once per ``relay_every_s``, so a long queue is not flooded.
    """
    now = utcnow()
    row = outbox.row
    rows = list(
        session.scalars(
            select(outbox.row_key())
            .where(
                row.status == PENDING,
                row.next_attempt_at <= now - timedelta(seconds=stale_s),
                _unclaimed(outbox, now),
                or_(
                    row.relayed_at.is_(None),
                    row.relayed_at < now - timedelta(seconds=relay_every_s),
                ),
            )
            .order_by(row.next_attempt_at)
            .limit(limit)
        )
    )
    if rows:
        session.execute(
            update(row)
            .where(outbox.row_key().in_(rows))
            .values(relayed_at=now)
            .execution_options(synchronize_session=False)
        )
    return rows


def redeliver(
    session: Session,
    *,
    subject_id: str,
    event_id: str,
    event_type: str,
    destination: str,
    min_interval_s: float,
    outbox: Outbox = JOBS,
) -> Redelivery:
    """Make the subject's event due now in a new retry series, at most once per interval.

    Concurrent requests are serialised by the row update: one wins, the others wait.
    """
    now = utcnow()
    row = outbox.row
    restart = (
        update(row)
        .where(
            outbox.row_key() == subject_id,
            or_(
                row.redelivered_at.is_(None),
                row.redelivered_at <= now - timedelta(seconds=min_interval_s),
            ),
        )
        .values(
            status=PENDING,
            series_start=row.attempts,
            next_attempt_at=now,
            redelivered_at=now,
            relayed_at=None,
        )
        .returning(row.attempts)
        .execution_options(synchronize_session=False)
    )
    attempts = session.execute(restart).scalar_one_or_none()
    if attempts is not None:
        return Redelivery(int(attempts) + 1)
    owed = get_event(session, subject_id, outbox)
    if owed is not None and owed.redelivered_at is not None:
        wait = (owed.redelivered_at + timedelta(seconds=min_interval_s) - now).total_seconds()
        return Redelivery(None, max(wait, 0.001))
    # A subject that ended before its outbox existed: owe its event now, after its log.
    logged = session.scalar(
        select(func.max(outbox.log.attempt)).where(outbox.log_key() == subject_id)
    )
    last = int(logged or 0)
    add_event(
        session,
        subject_id=subject_id,
        event_id=event_id,
        event_type=event_type,
        destination=destination,
        due=now,
        outbox=outbox,
    )
    session.execute(
        update(row)
        .where(outbox.row_key() == subject_id)
        .values(attempts=last, series_start=last, redelivered_at=now)
        .execution_options(synchronize_session=False)
    )
    return Redelivery(last + 1)


def record_attempt(
    session: Session,
    *,
    subject_id: str,
    event_id: str,
    event_type: str,
    attempt: int,
    succeeded: bool,
    latency_ms: float,
    status_code: int | None = None,
    error: str | None = None,
    next_attempt_at: datetime | None = None,
    attempted_at: datetime | None = None,
    outbox: Outbox = JOBS,
) -> DeliveryLogColumns:
    """Append one attempt to the subject's delivery log (what ``/deliveries`` shows) and
    count it in the running webhook totals (the front's ``/metrics``)."""
    delivery = outbox.log(
        event_id=event_id,
        event_type=event_type,
        attempt=attempt,
        attempted_at=attempted_at or utcnow(),
        status_code=status_code,
        error=error,
        latency_ms=latency_ms,
        succeeded=succeeded,
        next_attempt_at=next_attempt_at,
        **{outbox.key: subject_id},
    )
    session.add(delivery)
    session.flush()
    outcome_counts.record_delivery(session, succeeded, error, latency_ms / 1000)
    return delivery


def list_attempts(
    session: Session, subject_id: str, outbox: Outbox = JOBS
) -> Sequence[DeliveryLogColumns]:
    """Return the subject's delivery attempts, oldest first."""
    log = outbox.log
    stmt = select(log).where(outbox.log_key() == subject_id).order_by(log.attempted_at, log.id)
    return list(session.scalars(stmt))


def pending_job_ids(session: Session, job_ids: Sequence[str]) -> set[str]:
    """Return which of ``job_ids`` still owe a webhook event (retention keeps them)."""
    if not job_ids:
        return set()
    stmt = select(WebhookOutbox.job_id).where(
        WebhookOutbox.job_id.in_(job_ids), WebhookOutbox.status == PENDING
    )
    return set(session.scalars(stmt))
