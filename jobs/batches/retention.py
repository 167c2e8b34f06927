"""Retention of dataset batches: delete those that ended longer ago than
``VQ_BATCH_RETENTION_DAYS`` (unset: ``VQ_WORKER_RETENTION_DAYS``, the jobs' setting).

A batch goes with its chunks (their result lines), its webhook outbox row and delivery log;
its part files go too when they are in the project's own store (``output_owned``: submitted
without an ``output``), deleted first, so a store that refuses leaves the row for the next
purge rather than files nobody can find. Part files written to an output the client chose
are the client's. A batch whose webhook event is still owed is kept until it is delivered
or exhausted.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import Engine

from persistence import retention_repo
from persistence.batch_sources import open_location, output_location, part_name
from persistence.db import session_scope
from persistence.models import utcnow
from visionqueue.core.errors import VQError
from visionqueue.core.settings import Settings

logger = logging.getLogger(__name__)


def batch_retention_days(settings: Settings) -> float:
    """The batches' retention in days: their own setting, else the jobs' (0 = forever)."""
    own = settings.batch.retention_days
    return settings.worker.retention_days if own is None else own


def purge_expired_batches(engine: Engine, settings: Settings, limit: int = 20) -> int:
    """Delete up to ``limit`` expired batches (and their own part files); return how many."""
    days = batch_retention_days(settings)
    if days <= 0:
        return 0
    with session_scope(engine) as session:
        expired = retention_repo.expired_batches(session, utcnow() - timedelta(days=days), limit)
    purged = 0
    for batch in expired:
        if batch.output_owned:
            try:
                output = open_location(output_location(batch.output, settings), settings)
                output.delete(part_name(seq) for seq in range(batch.parts))
            except VQError as exc:
                logger.warning("batch %s kept: its part files stay (%s)", batch.id, exc.message)
                continue
        with session_scope(engine) as session:
            retention_repo.delete_batch(session, batch.id)
        purged += 1
    return purged
