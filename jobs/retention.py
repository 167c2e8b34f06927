"""Retention: delete finished jobs older than ``VQ_WORKER_RETENTION_DAYS`` and their images.

An image object is shared by every job with the same content (sha256 key), so it is deleted
only when no remaining job refers to it, and only if it was not written again within
``IN_FLIGHT_GRACE``: a submission stores its image before it commits its row, so an image
written moments ago may belong to a job that is not in the database yet (a ``put`` of the
same bytes refreshes the write time). Pending and processing jobs are never touched.

``purge_orphans`` removes images no job refers to at all: those of submissions refused after
their image was stored (database or broker down), which nothing else would ever delete.
Each key is checked again just before it is deleted (no job, still old), so a re-upload
after the listing keeps its object. What is left is the instant between that check and
the delete; a job that loses its image to it fails ``image_missing``, never silently.

Jobs whose webhook event is still owed are kept past the retention period until the
event is delivered or exhausted.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine

from persistence import retention_repo
from persistence.db import session_scope
from persistence.images import ImageStore
from persistence.models import utcnow

IN_FLIGHT_GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class PurgeResult:
    jobs: int
    images: int


def purge_expired(engine: Engine, store: ImageStore, days: float, batch: int = 500) -> PurgeResult:
    """Delete up to ``batch`` finished jobs older than ``days`` and their unshared images."""
    if days <= 0:
        return PurgeResult(0, 0)
    cutoff = utcnow() - timedelta(days=days)
    with session_scope(engine) as session:
        rows = retention_repo.expired_jobs(session, cutoff, batch)
        if not rows:
            return PurgeResult(0, 0)
        retention_repo.delete_jobs(session, [r.id for r in rows])
        keys = {r.image_key for r in rows}
        still_used = retention_repo.keys_in_use(session, keys)
    deleted = _delete_unless_recent(store, keys - still_used)
    return PurgeResult(len(rows), deleted)


def _delete_unless_recent(store: ImageStore, keys: set[str]) -> int:
    recent = utcnow() - IN_FLIGHT_GRACE
    deleted = 0
    for key in sorted(keys):
        written = store.last_modified(key)
        if written is not None and written < recent:
            store.delete(key)
            deleted += 1
    return deleted


def purge_orphans(
    engine: Engine, store: ImageStore, batch: int = 1000, start_after: str | None = None
) -> int:
    """Delete images that no job refers to and that were written over an hour ago.

    Looks at up to ``batch`` keys from a random point of the (uniformly spread) sha256 key
    space, so that repeated runs cover a bucket of any size; returns how many it deleted.
    """
    start = start_after if start_after is not None else f"images/{secrets.token_hex(1)}/"
    listed = store.list_keys(start, batch)
    if len(listed) < batch and start_after is None:  # wrapped past the end: the beginning
        listed += store.list_keys("", batch - len(listed))
    recent = utcnow() - IN_FLIGHT_GRACE
    old = {key for key, written in listed if written < recent}
    if not old:
        return 0
    with session_scope(engine) as session:
        used = retention_repo.keys_in_use(session, old)
    deleted = 0
    for key in sorted(old - used):
        # again, just before deleting: a re-upload since the listing refreshed the write
        # time, and a job committed since then refers to it
        written = store.last_modified(key)
        if written is None or written >= recent:
            continue
        with session_scope(engine) as session:
            if retention_repo.keys_in_use(session, [key]):
                continue
        store.delete(key)
        deleted += 1
    return deleted
