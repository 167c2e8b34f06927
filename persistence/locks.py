"""Named maintenance locks with an expiry: one sweep (or purge) at a time across workers.

A holder that dies leaves its lock to expire; the caller commits (each call is meant to be
its own short transaction, so the lock is visible to others at once).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from persistence.models import MaintenanceLock, utcnow


def acquire(session: Session, name: str, holder: str, ttl_s: float) -> bool:
    """Take lock ``name`` for ``ttl_s`` unless a live holder has it; True if taken."""
    now = utcnow()
    stmt = (
        update(MaintenanceLock)
        .where(
            MaintenanceLock.name == name,
            or_(MaintenanceLock.expires_at.is_(None), MaintenanceLock.expires_at < now),
        )
        .values(holder=holder, expires_at=now + timedelta(seconds=ttl_s))
        .returning(MaintenanceLock.name)
        .execution_options(synchronize_session=False)
    )
    return session.execute(stmt).first() is not None


def release(session: Session, name: str, holder: str) -> None:
    """Give lock ``name`` back if ``holder`` still has it."""
    session.execute(
        update(MaintenanceLock)
        .where(MaintenanceLock.name == name, MaintenanceLock.holder == holder)
        .values(holder=None, expires_at=None)
        .execution_options(synchronize_session=False)
    )
