"""Plan a batch: stream its source's listing into chunk rows, a page of chunks per
transaction, never holding more than one page of keys (bounded memory at any size).

A planner that dies resumes where the last committed page ended: the listing's order is
stable and ``planned_keys`` says how many keys to skip. Two planners of one batch (a
sweep restarted one that was only slow) never write the same chunk: ``add_chunks`` is
guarded by the chunk count each read, and the loser stops.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from jobs.resources import Resources
from persistence import batches_repo
from persistence.batch_sources import open_location
from persistence.db import session_scope

logger = logging.getLogger(__name__)

CHUNKS_PER_PAGE = 50


@dataclass(frozen=True)
class PlanReport:
    chunks: int  # chunks this planner added
    finished: bool  # the listing ended and the batch's total is final
    lost: bool = False  # another planner moved on first


def plan_batch(
    batch_id: str, res: Resources, on_page: Callable[[int], None] | None = None
) -> PlanReport:
    """List the batch's source into chunks of ``VQ_BATCH_CHUNK_SIZE`` keys.

    ``on_page`` is told the number of chunks planned after each page (to start lanes).
    """
    from jobs.batches.run_chunk import _source_location

    size = res.settings.batch.chunk_size
    with session_scope(res.engine) as session:
        batch = batches_repo.get_batch_by_id(session, batch_id)
        if batch is None or batch.planned or batch.status in batches_repo.FINAL:
            return PlanReport(0, bool(batch and batch.planned))
        skip, planned_chunks = batch.planned_keys, batch.planned_chunks
    keys = itertools.islice(open_location(_source_location(batch), res.settings).keys(), skip, None)
    added = 0
    for page in _pages(keys, size, CHUNKS_PER_PAGE):
        with session_scope(res.engine) as session:
            if not batches_repo.add_chunks(session, batch_id, planned_chunks, page):
                return PlanReport(added, False, lost=True)
        planned_chunks += len(page)
        added += len(page)
        if on_page is not None:
            on_page(planned_chunks)
    with session_scope(res.engine) as session:
        batch = batches_repo.get_batch_by_id(session, batch_id)
        if batch is None or batch.planned_chunks != planned_chunks:
            return PlanReport(added, False, lost=True)
        batches_repo.finish_planning(session, batch_id)
    return PlanReport(added, True)


def _pages(keys: Iterator[str], size: int, per_page: int) -> Iterator[list[list[str]]]:
    page: list[list[str]] = []
    while True:
        chunk = list(itertools.islice(keys, size))
        if chunk:
            page.append(chunk)
        if page and (len(page) == per_page or not chunk):
            yield page
            page = []
        if not chunk:
            return
