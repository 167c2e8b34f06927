"""The retention queries: finished jobs and batches past a cutoff, and which image keys are
still used.

Plain functions over a Session; the caller commits. A job or batch whose webhook event is
still owed (a pending outbox row) is kept whatever its age: deleting it would cascade to
the retries the delivery promise depends on.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from persistence.models import (
    BATCH_FINAL_STATUSES,
    FINAL_STATUSES,
    Batch,
    BatchWebhookOutbox,
    Job,
    OutboxStatus,
    WebhookOutbox,
)


@dataclass(frozen=True)
class ExpiredJob:
    id: str
    image_key: str


def expired_jobs(session: Session, cutoff: datetime, limit: int) -> list[ExpiredJob]:
    """Return up to ``limit`` finished jobs finished before ``cutoff`` that owe no event."""
    finals = [status.value for status in FINAL_STATUSES]
    owing = select(WebhookOutbox.job_id).where(
        WebhookOutbox.job_id == Job.id, WebhookOutbox.status == OutboxStatus.PENDING.value
    )
    rows = session.execute(
        select(Job.id, Job.image_key)
        .where(Job.status.in_(finals), Job.finished_at < cutoff, ~owing.exists())
        .order_by(Job.finished_at)
        .limit(limit)
    ).all()
    return [ExpiredJob(row.id, row.image_key) for row in rows]


def delete_jobs(session: Session, job_ids: Collection[str]) -> None:
    """Delete jobs (their delivery log and outbox rows cascade)."""
    if job_ids:
        session.execute(delete(Job).where(Job.id.in_(list(job_ids))))


def keys_in_use(session: Session, keys: Collection[str]) -> set[str]:
    """Return which of ``keys`` some job still refers to."""
    if not keys:
        return set()
    return set(session.scalars(select(Job.image_key).where(Job.image_key.in_(list(keys)))))


@dataclass(frozen=True)
class ExpiredBatch:
    id: str
    output: str
    output_owned: bool
    parts: int  # part files it may have written: part-00000 .. part-(parts - 1)


def expired_batches(session: Session, cutoff: datetime, limit: int) -> list[ExpiredBatch]:
    """Up to ``limit`` batches that ended before ``cutoff`` and owe no webhook event (an owed
    event keeps its batch, as it keeps a job), oldest first."""
    owing = select(BatchWebhookOutbox.batch_id).where(
        BatchWebhookOutbox.batch_id == Batch.id,
        BatchWebhookOutbox.status == OutboxStatus.PENDING.value,
    )
    rows = session.execute(
        select(Batch.id, Batch.output, Batch.output_owned, Batch.planned_chunks)
        .where(
            Batch.status.in_([status.value for status in BATCH_FINAL_STATUSES]),
            Batch.finished_at < cutoff,
            ~owing.exists(),
        )
        .order_by(Batch.finished_at)
        .limit(limit)
    ).all()
    return [ExpiredBatch(r.id, r.output, r.output_owned, r.planned_chunks) for r in rows]


def delete_batch(session: Session, batch_id: str) -> None:
    """Delete a batch; its chunks (and their lines), outbox row and delivery log cascade."""
    session.execute(delete(Batch).where(Batch.id == batch_id))
