"""Job leases: who runs a job, until when, and which jobs a dead worker left behind.

A worker claims a job with a lease (``leased_by``, ``lease_until``) and renews it while it
runs it. Nobody else can claim a processing job whose lease is live, so a slow but live
job never runs twice at once; once the lease lapses, the sweeper puts the job back to
``pending`` and re-enqueues it. A pending job's ``lease_until`` is the time by which its
message (a retry countdown, a re-enqueue) should have been claimed; after it, the message
is presumed lost and the sweeper sends another. Plain functions; the caller commits.

A transaction that writes several jobs locks their rows first, in primary-key order
(``lock_in_order``): a worker's lease renewal and its batch's claim or completion touch the
same rows from two connections, and in any other order PostgreSQL found them deadlocked
under load (each job then retried, an attempt spent for nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from persistence import outcome_counts
from persistence.models import Job, JobStatus, utcnow

PENDING = JobStatus.PENDING.value
PROCESSING = JobStatus.PROCESSING.value


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs of a job it claimed."""

    id: str
    image_key: str
    content_type: str
    webhook_url: str | None
    attempts: int
    created_at: datetime
    model_name: str | None = None  # the model asked for; None = the default
    priority: str = "normal"  # high | normal | low (visionqueue.dataplane.priority)


def lock_in_order(session: Session, job_ids: Collection[str]) -> None:
    """Lock the rows of ``job_ids`` in primary-key order (no-op on SQLite: one writer at once).

    Every writer of several jobs calls this before its updates, so two of them never wait on
    each other in a cycle.
    """
    if len(job_ids) > 1:
        session.execute(
            select(Job.id).where(Job.id.in_(list(job_ids))).order_by(Job.id).with_for_update()
        ).all()


def _update_jobs(
    session: Session,
    job_ids: Collection[str],
    condition: ColumnElement[bool],
    *,
    locked: bool = False,
    **values: object,
) -> list[str]:
    """Set ``values`` on the jobs of ``job_ids`` that meet ``condition``; return their ids.

    The rows are locked in key order first (``lock_in_order``) unless the caller ``locked``
    them already, in one go with others.
    """
    if not job_ids:
        return []
    if not locked:
        lock_in_order(session, job_ids)
    stmt = (
        update(Job)
        .where(Job.id.in_(list(job_ids)), condition)
        .values(**values)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return list(session.scalars(stmt))


def _claimable(now: datetime) -> ColumnElement[bool]:
    """Pending, or processing under no live lease (its worker died)."""
    return or_(
        Job.status == PENDING,
        and_(Job.status == PROCESSING, or_(Job.lease_until.is_(None), Job.lease_until < now)),
    )


def claim(
    session: Session, job_id: str, *, holder: str, lease_s: float, max_attempts: int
) -> ClaimedJob | None:
    """Claim a pending job (or one whose worker's lease lapsed) for ``holder``; count it.

    None if the job is final, runs under a live lease, is missing, or has used up
    ``max_attempts`` (see ``exhaust``).
    """
    now = utcnow()
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            Job.attempts < max_attempts,
            _claimable(now),
        )
        .values(
            status=PROCESSING,
            attempts=Job.attempts + 1,
            started_at=now,
            leased_by=holder,
            lease_until=now + timedelta(seconds=lease_s),
        )
        .returning(
            Job.id,
            Job.image_key,
            Job.content_type,
            Job.webhook_url,
            Job.attempts,
            Job.created_at,
            Job.model_name,
            Job.priority,
        )
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    return ClaimedJob(**row._asdict()) if row is not None else None


def claim_batch(
    session: Session, job_ids: Collection[str], *, holder: str, lease_s: float, max_attempts: int
) -> dict[str, ClaimedJob | None]:
    """Claim each of ``job_ids`` (see ``claim``) in one transaction, rows locked in key order.

    A worker's lease keeper renews some of the same rows from another connection meanwhile.
    """
    lock_in_order(session, job_ids)
    return {
        job_id: claim(session, job_id, holder=holder, lease_s=lease_s, max_attempts=max_attempts)
        for job_id in job_ids
    }


def exhaust(session: Session, job_id: str, *, max_attempts: int, code: str, message: str) -> bool:
    """Fail a claimable job that has used up its attempts; False if it is not one."""
    now = utcnow()
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            Job.attempts >= max_attempts,
            _claimable(now),
        )
        .values(
            status=JobStatus.FAILED.value,
            finished_at=now,
            error_code=code,
            error_message=message,
            lease_until=None,
            leased_by=None,
        )
        .returning(Job.created_at)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    if row is None:
        return False
    outcome_counts.record(
        session, JobStatus.FAILED.value, code, (now - row.created_at).total_seconds()
    )
    return True


def reserve(
    session: Session, holder: str, job_ids: Collection[str], lease_s: float, *, locked: bool = False
) -> int:
    """Lease pending jobs whose messages ``holder`` received but has not started.

    If ``holder`` dies before claiming them, ``requeue_abandoned`` sends them again once the
    lease lapses (their messages may have died with it).
    """
    expiry = utcnow() + timedelta(seconds=lease_s)
    condition = Job.status == PENDING
    updated = _update_jobs(
        session, job_ids, condition, locked=locked, leased_by=holder, lease_until=expiry
    )
    return len(updated)


def renew(
    session: Session, holder: str, job_ids: Collection[str], lease_s: float, *, locked: bool = False
) -> int:
    """Extend ``holder``'s leases on ``job_ids`` (running or reserved); return how many it holds."""
    expiry = utcnow() + timedelta(seconds=lease_s)
    condition = and_(Job.leased_by == holder, Job.status.in_((PENDING, PROCESSING)))
    return len(_update_jobs(session, job_ids, condition, locked=locked, lease_until=expiry))


def release_for_retry(session: Session, job_id: str, holder: str, due_in_s: float) -> bool:
    """Hand a job back to the queue for a retry in ``due_in_s`` (its message is in the broker).

    The job waits as pending; if no message claims it by ``due_in_s`` plus the lease,
    the sweeper presumes the message lost and sends another.
    """
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == PROCESSING, Job.leased_by == holder)
        .values(
            status=PENDING,
            leased_by=None,
            lease_until=utcnow() + timedelta(seconds=due_in_s),
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return session.execute(stmt).first() is not None


def leave_to_sweeper(session: Session, job_ids: Collection[str], within_s: float) -> int:
    """Mark pending jobs whose message was never published: the sweeper sends it later."""
    expiry = utcnow() + timedelta(seconds=within_s)
    return len(_update_jobs(session, job_ids, Job.status == PENDING, lease_until=expiry))


def requeue_abandoned(
    session: Session,
    *,
    pending_after: timedelta,
    legacy_stuck_after: timedelta,
    grace: timedelta,
    limit: int = 100,
) -> list[str]:
    """Put back to pending, and return, the jobs whose worker or message was lost.

    - processing with a lapsed lease (its worker died);
    - processing with no lease for ``legacy_stuck_after`` (claimed by a worker that
      predates leases);
    - pending past its ``lease_until`` (a retry or re-enqueue nobody claimed);
    - pending with no lease and not queued within ``pending_after`` (a lost enqueue).

    Each gets ``grace`` more before it is sent again, so a long queue is not flooded.
    """
    now = utcnow()
    abandoned = or_(
        and_(Job.status == PROCESSING, Job.lease_until < now),
        and_(
            Job.status == PROCESSING,
            Job.lease_until.is_(None),
            Job.started_at < now - legacy_stuck_after,
            or_(Job.queued_at.is_(None), Job.queued_at < now - legacy_stuck_after),
        ),
        and_(Job.status == PENDING, Job.lease_until < now),
        and_(
            Job.status == PENDING,
            Job.lease_until.is_(None),
            Job.created_at < now - pending_after,
            or_(Job.queued_at.is_(None), Job.queued_at < now - pending_after),
        ),
    )
    ids = list(
        session.scalars(
            select(Job.id).where(abandoned).order_by(Job.created_at, Job.id).limit(limit)
        )
    )
    return _update_jobs(
        session,
        ids,
        abandoned,
        status=PENDING,
        leased_by=None,
        lease_until=now + grace,
        queued_at=now,
    )


def requeue_message_lost(
    session: Session,
    lost: Callable[[str], bool],
    *,
    older_than: timedelta,
    grace: timedelta,
    limit: int = 100,
) -> list[str]:
    """Mark for re-sending, and return, pending unleased jobs whose message was taken and lost.

    ``lost(job_id)`` says, from the broker, that the job's message was taken by a worker (no
    longer queued, or unacknowledged). A job that is pending and has no lease (its receiver
    never said it had it) and was queued over ``older_than`` ago lost its message with a
    worker that died between taking it and leasing the job. Each gets ``grace`` to be claimed
    before the sweeper looks at it again.
    """
    now = utcnow()
    unleased = and_(
        Job.status == PENDING,
        Job.lease_until.is_(None),
        Job.created_at < now - older_than,
        or_(Job.queued_at.is_(None), Job.queued_at < now - older_than),
    )
    candidates = session.scalars(select(Job.id).where(unleased).order_by(Job.created_at, Job.id))
    gone = [job_id for job_id in candidates if lost(job_id)][:limit]
    return _update_jobs(session, gone, unleased, lease_until=now + grace, queued_at=now)


def keep_leases(
    session: Session, holder: str, received: Collection[str], held: Collection[str], lease_s: float
) -> int:
    """Lease the newly ``received`` jobs and renew every ``held`` one (``received`` among
    them) under one lock of all their rows; return how many ``holder`` still holds."""
    lock_in_order(session, held)
    reserve(session, holder, received, lease_s, locked=True)
    return renew(session, holder, held, lease_s, locked=True)
