"""Batches on a migrated database (SQLite file or a throwaway PostgreSQL), for batch tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy import Engine

from persistence import batches_repo
from persistence.db import dispose_engines, get_engine, session_scope
from persistence.migrate import upgrade_database
from persistence.models import new_job_id


@contextlib.contextmanager
def migrated_engine(kind: str, tmp_path: Path) -> Iterator[Engine]:
    """A migrated ``sqlite`` file or ``postgres`` database, disposed after the block."""
    from tests.support.postgres import throwaway_postgres_url

    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite:///{tmp_path}/vq.db"
        else:
            url = stack.enter_context(throwaway_postgres_url())
        upgrade_database(url)
        try:
            yield get_engine(url)
        finally:
            dispose_engines(url)


def new_batch(
    engine: Engine,
    chunks: Sequence[Sequence[str]] = (),
    owner: str | None = None,
    source: str = "file:///data/",
    planned: bool = True,
    webhook_url: str | None = None,
) -> str:
    """A batch row with ``chunks`` already planned (``planned``: the listing ended)."""
    batch_id = new_job_id()
    with session_scope(engine) as session:
        batches_repo.create_batch(
            session,
            batch_id=batch_id,
            source=source,
            output=f"file:///out/{batch_id}/",
            owner=owner,
            model_name=None,
            top_k=3,
            metadata=None,
            webhook_url=webhook_url,
        )
        if chunks:
            assert batches_repo.add_chunks(session, batch_id, 0, chunks)
    if planned:
        with session_scope(engine) as session:
            batches_repo.finish_planning(session, batch_id)
    return batch_id
