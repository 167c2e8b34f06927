"""The promotion record in the database: every classifier replica reads the same one.

``DatabasePromotions`` is what ``model_store.promotions`` calls a record: ``entries`` (name ->
tag, previous, sequence), ``stamp`` (changes with every promotion: the largest sequence) and
``record`` (check, then write one promotion, serialised across processes).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, make_url, select, text
from sqlalchemy.orm import Session

from persistence.db import get_engine, session_scope
from persistence.models import ModelPromotion, utcnow
from visionqueue.core.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

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


def _is_missing_table(exc: BaseException) -> bool:
    return "model_promotions" in str(exc.__cause__ or exc)


@contextlib.contextmanager
def _missing_table() -> Iterator[None]:
    """Name the fix when the schema predates the table (SQLite: no such table)."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.ProgrammingError, DatabaseUnavailable) as exc:
        if not _is_missing_table(exc):
            raise
        raise MissingPromotionsTable(
            "the database has no model_promotions table: apply the migrations "
            "(python -m persistence upgrade)"
        ) from exc


class MissingPromotionsTable(DatabaseUnavailable):
    """The schema predates promotions in the database (reads find no promotion)."""


class DatabasePromotions:
    """The ``model_promotions`` table as a promotion record."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._warned = False

    def _no_database_yet(self) -> bool:
        # the embedded default's SQLite file appears with the first migration: reading
        # must not create it (nor fail a classifier started before it)
        url = make_url(self.url)
        return url.get_backend_name() == "sqlite" and not Path(url.database or "").exists()

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every promoted name (none when the schema predates the table: none was recorded)."""
        if self._no_database_yet():
            return {}
        try:
            with _missing_table(), session_scope(get_engine(self.url)) as session:
                rows = session.scalars(select(ModelPromotion)).all()
                return {row.name: _entry(row) for row in rows}
        except MissingPromotionsTable:
            self._warn_missing()
            return {}

    def stamp(self) -> object:
        """The largest sequence (None without the table: nothing to watch yet)."""
        if self._no_database_yet():
            return None
        try:
            with _missing_table(), session_scope(get_engine(self.url)) as session:
                return session.scalar(select(func.max(ModelPromotion.sequence))) or 0
        except MissingPromotionsTable:
            self._warn_missing()
            return None

    def _warn_missing(self) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "no model_promotions table in the database yet: no promotion applies until "
                "the migrations run (python -m persistence upgrade)"
            )

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
