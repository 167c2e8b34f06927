"""Read and change job rows: plain functions over a Session (webhook deliveries: ``deliveries_repo``).

None of these commits: the caller owns the transaction (``persistence.db.session_scope``).
They raise domain errors (``JobNotFound``, ``IdempotencyConflict``, ``InvalidCursor``),
never HTTP ones: the front maps them to statuses in ``visionqueue.api.domain_errors``.
State changes are single conditional UPDATEs, so concurrent workers cannot both win::

    pending ──claim──> processing ──complete──> completed
       │                  │  ^ └──────fail────> failed
       │                  └──┘ claim again (message redelivered after a worker crash)
       └──cancel──> cancelled
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from persistence import outcome_counts
from persistence.models import (
    ANONYMOUS_OWNER,
    JOB_STATUSES,
    Job,
    JobStatus,
    utcnow,
)
from visionqueue.core.errors import IdempotencyConflict, InvalidCursor, JobNotFound

CLAIMABLE_STATUSES = (JobStatus.PENDING.value, JobStatus.PROCESSING.value)


def _owner(owner: str | None) -> str:
    return ANONYMOUS_OWNER if owner is None else owner


def create_job(
    session: Session,
    *,
    image_key: str,
    image_sha256: str,
    content_type: str,
    image_size: int,
    width: int,
    height: int,
    metadata: dict[str, Any] | None = None,
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
    owner: str | None = None,
    batch_id: str | None = None,
    model_name: str | None = None,
    priority: str = "normal",
    created_at: datetime | None = None,
    queued_at: datetime | None = None,
    flush: bool = True,
) -> Job:
    """Insert a pending job; raise ``IdempotencyConflict`` when (owner, key) is taken.

    After an ``IdempotencyConflict`` the session must be rolled back; look the winner up in
    a new one. ``flush=False`` only adds the row: ``flush_jobs`` then writes a request's
    rows together.
    """
    job = Job(
        image_key=image_key,
        image_sha256=image_sha256,
        content_type=content_type,
        image_size=image_size,
        width=width,
        height=height,
        metadata_=metadata or {},
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
        owner=_owner(owner),
        batch_id=batch_id,
        model_name=model_name,
        priority=priority,
        created_at=created_at or utcnow(),
        queued_at=queued_at,
    )
    session.add(job)
    if flush:
        flush_jobs(session, [job])
    return job


def flush_jobs(session: Session, jobs: Sequence[Job]) -> None:
    """Write the added ``jobs`` in one statement; ``IdempotencyConflict`` as ``create_job``."""
    try:
        session.flush()
    except IntegrityError as exc:
        if all(job.idempotency_key is None for job in jobs):
            raise
        raise IdempotencyConflict("a job with this idempotency key already exists") from exc


def get_job(session: Session, job_id: str, owner: str | None) -> Job | None:
    """Return the job if it exists and belongs to ``owner``."""
    stmt = select(Job).where(Job.id == job_id, Job.owner == _owner(owner))
    return session.scalars(stmt).one_or_none()


def require_job(session: Session, job_id: str, owner: str | None) -> Job:
    """Return ``owner``'s job; raise ``JobNotFound`` if there is none with this id."""
    job = get_job(session, job_id, owner)
    if job is None:
        raise JobNotFound(f"no job with id {job_id}")
    return job


def get_job_by_id(session: Session, job_id: str) -> Job | None:
    """Return the job whoever owns it (workers, sweeps; never for client requests)."""
    return session.get(Job, job_id)


def find_by_idempotency_key(session: Session, owner: str | None, key: str) -> Job | None:
    """Return ``owner``'s job submitted with idempotency ``key``, if any."""
    stmt = select(Job).where(Job.owner == _owner(owner), Job.idempotency_key == key)
    return session.scalars(stmt).one_or_none()


def batch_jobs(session: Session, batch_id: str, owner: str) -> list[Job]:
    """Return every job of ``owner``'s submission ``batch_id`` (in no particular order)."""
    stmt = select(Job).where(Job.batch_id == batch_id, Job.owner == owner)
    return list(session.scalars(stmt))


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """Encode a listing position as an opaque URL-safe token."""
    raw = json.dumps([created_at.isoformat(), job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Decode a token from ``encode_cursor``; raise ``InvalidCursor`` on anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        created_at = datetime.fromisoformat(created)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidCursor("invalid cursor") from exc
    if not isinstance(job_id, str) or created_at.tzinfo is None:
        raise InvalidCursor("invalid cursor")
    return created_at, job_id


def list_jobs(
    session: Session,
    owner: str | None,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """Return one page of ``owner``'s jobs, newest first, and the cursor of the next page."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    stmt = select(Job).where(Job.owner == _owner(owner))
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if cursor is not None:
        created_at, job_id = decode_cursor(cursor)
        stmt = stmt.where(
            or_(
                Job.created_at < created_at,
                and_(Job.created_at == created_at, Job.id < job_id),
            )
        )
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    jobs = list(session.scalars(stmt))
    if len(jobs) <= limit:
        return jobs, None
    last = jobs[limit - 1]
    return jobs[:limit], encode_cursor(last.created_at, last.id)


def claim_job(session: Session, job_id: str) -> Job | None:
    """Move the job to processing and count the attempt; None if it is final or missing."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_(CLAIMABLE_STATUSES))
        .values(
            status=JobStatus.PROCESSING.value,
            attempts=Job.attempts + 1,
            started_at=utcnow(),
        )
        .returning(Job)
        .execution_options(populate_existing=True)
    )
    return session.scalars(stmt).one_or_none()


def _finish(session: Session, job_id: str, holder: str | None = None, **values: Any) -> bool:
    conditions = [Job.id == job_id, Job.status == JobStatus.PROCESSING.value]
    if holder is not None:
        # a worker whose lease lapsed (and was taken over) must not finish the job
        conditions.append(Job.leased_by == holder)
    finished_at = utcnow()
    stmt = (
        update(Job)
        .where(*conditions)
        .values(finished_at=finished_at, lease_until=None, leased_by=None, **values)
        .returning(Job.created_at)
    )
    row = session.execute(stmt).first()
    if row is None:
        return False
    latency_s = (finished_at - row.created_at).total_seconds()
    outcome_counts.record(session, values["status"], values.get("error_code"), latency_s)
    return True


def complete_job(
    session: Session,
    job_id: str,
    result: dict[str, Any],
    model_tag: str,
    weights_origin: str,
    *,
    holder: str | None = None,
) -> bool:
    """Store the result of a processing job; False if it was not processing (no-op)."""
    return _finish(
        session,
        job_id,
        holder,
        status=JobStatus.COMPLETED.value,
        result=result,
        model_tag=model_tag,
        weights_origin=weights_origin,
        error_code=None,
        error_message=None,
    )


def fail_job(
    session: Session, job_id: str, code: str, message: str, *, holder: str | None = None
) -> bool:
    """Mark a processing job failed; False if it was not processing (no-op)."""
    return _finish(
        session,
        job_id,
        holder,
        status=JobStatus.FAILED.value,
        error_code=code,
        error_message=message,
    )


def cancel_job(session: Session, job_id: str, owner: str | None) -> bool:
    """Cancel ``owner``'s job if it is still pending; False otherwise."""
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            Job.owner == _owner(owner),
            Job.status == JobStatus.PENDING.value,
        )
        .values(status=JobStatus.CANCELLED.value, finished_at=utcnow())
        .returning(Job.id)
    )
    return session.execute(stmt).first() is not None


def delete_unfinished(session: Session, job_ids: Iterable[str]) -> None:
    """Delete those of these jobs that are still pending or processing."""
    stmt = delete(Job).where(Job.id.in_(list(job_ids)), Job.status.in_(CLAIMABLE_STATUSES))
    session.execute(stmt)


def mark_queued(session: Session, job_ids: Iterable[str]) -> None:
    """Record that these unfinished jobs were just handed to the broker."""
    ids = list(job_ids)
    if not ids:
        return
    stmt = (
        update(Job)
        .where(Job.id.in_(ids), Job.status.in_(CLAIMABLE_STATUSES))
        .values(queued_at=utcnow())
    )
    session.execute(stmt)


def _stale(
    session: Session, status: JobStatus, since: Any, older_than: timedelta, limit: int
) -> list[Job]:
    """Jobs in ``status`` since before the cutoff and not (re-)queued after it, oldest first."""
    cutoff = utcnow() - older_than
    stmt = (
        select(Job)
        .where(
            Job.status == status.value,
            since < cutoff,
            or_(Job.queued_at.is_(None), Job.queued_at < cutoff),
        )
        .order_by(since, Job.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def stale_pending_jobs(session: Session, older_than: timedelta, limit: int = 100) -> list[Job]:
    """Return pending jobs not queued within ``older_than`` (lost enqueues), oldest first."""
    return _stale(session, JobStatus.PENDING, Job.created_at, older_than, limit)


def stale_processing_jobs(session: Session, older_than: timedelta, limit: int = 100) -> list[Job]:
    """Return jobs processing (and not re-queued) for longer than ``older_than``, oldest first.

    Their worker died and its message is gone too: the filesystem broker cannot redeliver,
    and a Redis without persistence forgets unacknowledged messages when it restarts.
    """
    return _stale(session, JobStatus.PROCESSING, Job.started_at, older_than, limit)


def count_unfinished(session: Session) -> int:
    """Return how many jobs are pending or processing (the (status, created_at) index)."""
    stmt = select(func.count()).select_from(Job).where(Job.status.in_(CLAIMABLE_STATUSES))
    return int(session.execute(stmt).scalar_one())


def count_by_status(session: Session) -> dict[str, int]:
    """Return the number of jobs in every status (zeros included)."""
    counts = dict.fromkeys(JOB_STATUSES, 0)
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    for status, count in rows:
        counts[status] = count
    return counts
