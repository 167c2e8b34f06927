"""Retention: delete finished jobs older than ``VQ_WORKER_RETENTION_DAYS`` and their images.

An image object is shared by every job with the same content (sha256 key), so it is deleted
only when no remaining job refers to it. Pending and processing jobs are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, delete, select

from persistence.db import session_scope
from persistence.images import ImageStore
from persistence.models import FINAL_STATUSES, Job, utcnow


@dataclass(frozen=True)
class PurgeResult:
    jobs: int
    images: int


def purge_expired(engine: Engine, store: ImageStore, days: float, batch: int = 500) -> PurgeResult:
    """Delete up to ``batch`` finished jobs older than ``days`` and their unshared images."""
    if days <= 0:
        return PurgeResult(0, 0)
    cutoff = utcnow() - timedelta(days=days)
    finals = [status.value for status in FINAL_STATUSES]
    with session_scope(engine) as session:
        rows = session.execute(
            select(Job.id, Job.image_key)
            .where(Job.status.in_(finals), Job.finished_at < cutoff)
            .order_by(Job.finished_at)
            .limit(batch)
        ).all()
        if not rows:
            return PurgeResult(0, 0)
        session.execute(delete(Job).where(Job.id.in_([r.id for r in rows])))
        keys = {r.image_key for r in rows}
        still_used = set(session.scalars(select(Job.image_key).where(Job.image_key.in_(keys))))
    orphans = keys - still_used
    for key in orphans:
        store.delete(key)
    return PurgeResult(len(rows), len(orphans))
