"""Batches and their chunks: create, plan, claim under a fenced lease, complete, read back.

Every chunk's lines are stored once, by the claim holding its current ``fence``: a claim
increments the fence, so a worker whose lease lapsed (stalled, partitioned, SIGSTOPped)
and that wakes up after another worker re-claimed the chunk finds its write refused
(``complete_chunk`` returns False). Chunk key sets are disjoint by construction: the
planner appends chunks and advances ``planned_keys`` in one transaction, guarded by the
chunk count it read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update

from persistence import deliveries_repo
from persistence.db import session_scope
from persistence.jobs_repo import decode_cursor, encode_cursor
from persistence.models import (
    ANONYMOUS_OWNER,
    BATCH_FINAL_STATUSES,
    Batch,
    BatchChunk,
    BatchStatus,
    utcnow,
)
from visionqueue.core.webhook_events import batch_event_type_for, destination_of, event_id_for

FINAL = tuple(status.value for status in BATCH_FINAL_STATUSES)


@dataclass(frozen=True)
class ClaimedChunk:
    batch_id: str
    seq: int
    fence: int
    attempts: int
    keys: list[str]


def changed_rows(session: Session, statement: Any) -> int:
    """Run an UPDATE; return how many rows it changed."""
    return cast("CursorResult[Any]", session.execute(statement)).rowcount


def _owner(owner: str | None) -> str:
    return ANONYMOUS_OWNER if owner is None else owner


def create_batch(
    session: Session,
    *,
    batch_id: str,
    source: str,
    output: str,
    owner: str | None,
    model_name: str | None,
    top_k: int,
    metadata: dict[str, Any] | None,
    webhook_url: str | None,
    output_owned: bool = False,
) -> Batch:
    batch = Batch(
        id=batch_id,
        source=source,
        output=output,
        output_owned=output_owned,
        owner=_owner(owner),
        model_name=model_name or None,
        top_k=top_k,
        metadata_=metadata or {},
        webhook_url=webhook_url,
        status=BatchStatus.PENDING.value,
        created_at=utcnow(),
    )
    session.add(batch)
    session.flush()
    return batch


def get_batch(session: Session, batch_id: str, owner: str | None) -> Batch | None:
    """The caller's batch, or None (another tenant's batch is as absent as a missing one)."""
    batch = session.get(Batch, batch_id)
    if batch is None or batch.owner != _owner(owner):
        return None
    return batch


def get_batch_by_id(session: Session, batch_id: str) -> Batch | None:
    return session.get(Batch, batch_id)


def list_batches(
    session: Session, owner: str | None, limit: int = 50, cursor: str | None = None
) -> tuple[list[Batch], str | None]:
    """One page of ``owner``'s batches, newest first, and the cursor of the next page (the
    jobs' keyset on ``created_at, id``; ``InvalidCursor`` for a token it did not make)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    query = select(Batch).where(Batch.owner == _owner(owner))
    if cursor is not None:
        created_at, batch_id = decode_cursor(cursor)
        query = query.where(
            or_(
                Batch.created_at < created_at,
                and_(Batch.created_at == created_at, Batch.id < batch_id),
            )
        )
    query = query.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)
    batches = list(session.scalars(query))
    if len(batches) <= limit:
        return batches, None
    last = batches[limit - 1]
    return batches[:limit], encode_cursor(last.created_at, last.id)


def add_chunks(
    session: Session, batch_id: str, expected_chunks: int, chunks: Sequence[Sequence[str]]
) -> bool:
    """Append ``chunks`` after the ``expected_chunks`` already planned; False if another
    planner got there first (nothing is written then)."""
    keys = sum(len(chunk) for chunk in chunks)
    moved = changed_rows(
        session,
        update(Batch)
        .where(Batch.id == batch_id, Batch.planned_chunks == expected_chunks)
        .values(
            planned_chunks=Batch.planned_chunks + len(chunks),
            planned_keys=Batch.planned_keys + keys,
        ),
    )
    if moved != 1:
        return False
    session.add_all(
        BatchChunk(
            batch_id=batch_id,
            seq=expected_chunks + i,
            keys="\n".join(chunk),
            size=len(chunk),
            status="pending",
        )
        for i, chunk in enumerate(chunks)
    )
    session.flush()
    return True


def finish_planning(session: Session, batch_id: str) -> Batch | None:
    """Mark the listing complete (``total`` is final); finish the batch if nothing is left."""
    batch = session.get(Batch, batch_id, with_for_update=True)
    if batch is None or batch.planned:
        return batch
    batch.planned = True
    batch.total = batch.planned_keys
    session.flush()
    finish_if_done(session, batch)
    return batch


def mark_running(session: Session, batch_id: str) -> None:
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == BatchStatus.PENDING.value)
        .values(status=BatchStatus.RUNNING.value, started_at=utcnow())
    )


def fail_batch(session: Session, batch_id: str, code: str, message: str) -> bool:
    """Fail a batch that cannot run at all (its source vanished); owe its webhook."""
    batch = session.get(Batch, batch_id, with_for_update=True)
    if batch is None or batch.status in FINAL:
        return False
    _finish(session, batch, BatchStatus.FAILED.value)
    batch.error_code, batch.error_message = code, message
    return True


def cancel_batch(session: Session, batch_id: str, owner: str | None) -> Batch | None:
    """Cancel the caller's batch (no new chunk starts); None if it is not the caller's."""
    batch = get_batch(session, batch_id, owner)
    if batch is None:
        return None
    session.refresh(batch, with_for_update=True)
    if batch.status not in FINAL:
        _finish(session, batch, BatchStatus.CANCELLED.value)
    return batch


def _finish(session: Session, batch: Batch, status: str) -> None:
    """End the batch as ``status``; with a webhook, owe its event in the same transaction."""
    batch.status = status
    batch.finished_at = utcnow()
    if batch.webhook_url:
        event_type = batch_event_type_for(status)
        deliveries_repo.add_event(
            session,
            subject_id=batch.id,
            event_id=event_id_for(batch.id, event_type),
            event_type=event_type,
            destination=destination_of(batch.webhook_url),
            due=batch.finished_at,
            outbox=deliveries_repo.BATCHES,
        )


def claim_chunk(
    session: Session, batch_id: str, holder: str, lease_s: float, now: datetime | None = None
) -> ClaimedChunk | None:
    """Take the batch's first pending chunk, or one whose lease lapsed, raising its fence."""
    now = now or utcnow()
    status = session.scalar(select(Batch.status).where(Batch.id == batch_id))
    if status is None or status in FINAL:
        return None
    candidates = session.execute(
        select(BatchChunk.seq, BatchChunk.fence)
        .where(BatchChunk.batch_id == batch_id, _claimable(now))
        .order_by(BatchChunk.seq)
        .limit(8)
    ).all()
    for seq, fence in candidates:
        # the fence in the WHERE makes two claimers of one chunk exclusive on any database
        taken = changed_rows(
            session,
            update(BatchChunk)
            .where(
                BatchChunk.batch_id == batch_id,
                BatchChunk.seq == seq,
                BatchChunk.fence == fence,
                _claimable(now),
            )
            .values(
                status="running",
                fence=fence + 1,
                attempts=BatchChunk.attempts + 1,
                leased_by=holder,
                lease_until=now + timedelta(seconds=lease_s),
            ),
        )
        if taken == 1:
            chunk = session.get(BatchChunk, (batch_id, seq))
            assert chunk is not None
            session.refresh(chunk)
            return ClaimedChunk(batch_id, seq, chunk.fence, chunk.attempts, chunk.keys.split("\n"))
    return None


def _claimable(now: datetime) -> Any:
    return or_(
        BatchChunk.status == "pending",
        (BatchChunk.status == "running") & (BatchChunk.lease_until < now),
    )


def _while_ours(chunk: ClaimedChunk) -> Update:
    """An UPDATE of ``chunk`` that matches only while it runs under our fence."""
    return update(BatchChunk).where(
        BatchChunk.batch_id == chunk.batch_id,
        BatchChunk.seq == chunk.seq,
        BatchChunk.fence == chunk.fence,
        BatchChunk.status == "running",
    )


def renew_chunk(session: Session, chunk: ClaimedChunk, lease_s: float) -> bool:
    """Extend the lease while the fence is still ours."""
    moved = changed_rows(
        session,
        _while_ours(chunk).values(lease_until=utcnow() + timedelta(seconds=lease_s)),
    )
    return moved == 1


def release_chunk(session: Session, chunk: ClaimedChunk) -> None:
    """Hand a chunk back at once (a transient failure): the next claim takes it."""
    session.execute(_while_ours(chunk).values(status="pending", lease_until=None, leased_by=None))


def complete_chunk(
    session: Session,
    chunk: ClaimedChunk,
    lines: str,
    done: int,
    failed: int,
    model_tag: str | None,
) -> bool:
    """Store the chunk's lines if ``chunk.fence`` is still current; count them on the batch
    and finish the batch when this was its last chunk. False: the write is fenced off."""
    stored = changed_rows(
        session,
        _while_ours(chunk).values(
            status="done", lines=lines, done=done, failed=failed, lease_until=None
        ),
    )
    if stored != 1:
        return False
    # the counter update locks the batch row: the last two completions cannot both miss
    # each other's chunk when they count what is left (READ COMMITTED re-reads after it)
    values: dict[str, Any] = {"done": Batch.done + done, "failed": Batch.failed + failed}
    if model_tag:
        values["model_tag"] = model_tag
    session.execute(update(Batch).where(Batch.id == chunk.batch_id).values(**values))
    batch = session.get(Batch, chunk.batch_id)
    assert batch is not None
    session.refresh(batch)
    finish_if_done(session, batch)
    return True


def finish_if_done(session: Session, batch: Batch) -> bool:
    """Complete a fully planned batch whose chunks are all done."""
    if not batch.planned or batch.status in FINAL:
        return False
    left = session.scalar(
        select(func.count())
        .select_from(BatchChunk)
        .where(BatchChunk.batch_id == batch.id, BatchChunk.status != "done")
    )
    if left:
        return False
    _finish(session, batch, BatchStatus.COMPLETED.value)
    session.flush()
    return True


def mark_part_written(session: Session, batch_id: str, seq: int) -> None:
    session.execute(
        update(BatchChunk)
        .where(BatchChunk.batch_id == batch_id, BatchChunk.seq == seq)
        .values(part_written=True)
    )


def unwritten_parts(session: Session, batch_id: str, limit: int = 100) -> list[int]:
    query = (
        select(BatchChunk.seq)
        .where(
            BatchChunk.batch_id == batch_id,
            BatchChunk.status == "done",
            BatchChunk.part_written.is_(False),
        )
        .order_by(BatchChunk.seq)
        .limit(limit)
    )
    return list(session.scalars(query))


def chunk_lines(session: Session, batch_id: str, seq: int) -> str | None:
    return session.scalar(
        select(BatchChunk.lines).where(BatchChunk.batch_id == batch_id, BatchChunk.seq == seq)
    )


def iter_lines(engine: Engine, batch_id: str, page: int = 50) -> Iterator[str]:
    """Every stored line in chunk order, read a page of chunks per transaction."""
    after = -1
    while True:
        with session_scope(engine) as session:
            rows = session.execute(
                select(BatchChunk.seq, BatchChunk.lines)
                .where(
                    BatchChunk.batch_id == batch_id,
                    BatchChunk.seq > after,
                    BatchChunk.status == "done",
                )
                .order_by(BatchChunk.seq)
                .limit(page)
            ).all()
        if not rows:
            return
        for seq, lines in rows:
            after = seq
            if lines:
                yield lines if lines.endswith("\n") else lines + "\n"


def batches_needing_work(session: Session, now: datetime, limit: int = 100) -> list[str]:
    """Unfinished batches with a claimable chunk and no live lease: nobody works on them
    (their lanes died or ran out), so the sweeper restarts one."""
    live = (
        select(BatchChunk.batch_id)
        .where(BatchChunk.status == "running", BatchChunk.lease_until >= now)
        .distinct()
    )
    query = (
        select(BatchChunk.batch_id)
        .join(Batch, Batch.id == BatchChunk.batch_id)
        .where(Batch.status.not_in(FINAL), _claimable(now), BatchChunk.batch_id.not_in(live))
        .distinct()
        .limit(limit)
    )
    return list(session.scalars(query))


def batches_unplanned(session: Session, older_than: datetime, limit: int = 100) -> list[str]:
    """Unfinished batches whose listing has not ended (a planner may have died)."""
    query = (
        select(Batch.id)
        .where(Batch.status.not_in(FINAL), Batch.planned.is_(False))
        .where(Batch.created_at < older_than)
        .limit(limit)
    )
    return list(session.scalars(query))
