"""The promotion record in the database: every classifier replica reads the same one.

``DatabasePromotions`` is what ``model_store.promotions`` calls a record: ``entries`` (name ->
tag, previous, sequence), ``stamp`` (changes with every promotion: the largest sequence) and
``record`` (check, then write one promotion, serialised across processes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from persistence.db import get_engine, session_scope
from persistence.models import ModelPromotion, utcnow
from visionqueue.core.errors import DatabaseUnavailable

# Any fixed 64-bit number; every VisionQueue process must use the same one.
PROMOTION_LOCK_KEY = 0x5651_5052_4F4D_4F54  # "VQPROMOT"


def _entry(row: ModelPromotion) -> dict[str, Any]:
    return {"tag": row.tag, "previous": row.previous, "sequence": row.sequence}


def _serialise(session: Session) -> None:
    """Make concurrent promotions take turns (read the current tag, then write)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PROMOTION_LOCK_KEY})
    elif dialect == "sqlite":
        # a write statement takes SQLite's write lock before the read below
        session.execute(text("UPDATE model_promotions SET sequence = sequence WHERE 0"))


@contextlib.contextmanager
def _missing_table() -> Iterator[None]:
    """Name the fix when the schema predates the table (SQLite: no such table)."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.ProgrammingError, DatabaseUnavailable) as exc:
        cause = str(exc.__cause__ or exc)
        if "model_promotions" not in cause:
            raise
        raise DatabaseUnavailable(
            "the database has no model_promotions table: apply the migrations "
            "(python -m persistence upgrade)"
        ) from exc


class DatabasePromotions:
    """The ``model_promotions`` table as a promotion record."""

    def __init__(self, url: str) -> None:
        self.url = url

    def entries(self) -> dict[str, dict[str, Any]]:
        with _missing_table(), session_scope(get_engine(self.url)) as session:
            rows = session.scalars(select(ModelPromotion)).all()
            return {row.name: _entry(row) for row in rows}

    def stamp(self) -> object:
        with _missing_table(), session_scope(get_engine(self.url)) as session:
            return session.scalar(select(func.max(ModelPromotion.sequence))) or 0

    def record(self, name: str, tag: str, check: Callable[[str | None], None]) -> dict[str, Any]:
        """Promote ``tag`` for ``name`` once ``check(current tag)`` has not raised."""
        with _missing_table(), session_scope(get_engine(self.url)) as session:
            _serialise(session)
            row = session.get(ModelPromotion, name)
            current = row.tag if row is not None else None
            check(current)
            sequence = (session.scalar(select(func.max(ModelPromotion.sequence))) or 0) + 1
            if row is None:
                row = ModelPromotion(name=name, tag=tag, previous=None, sequence=sequence)
                session.add(row)
            else:
                row.previous, row.tag, row.sequence = current, tag, sequence
            row.promoted_at = utcnow()
            return _entry(row)
