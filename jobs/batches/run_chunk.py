"""Run a batch's chunks: claim one under a fenced lease, fetch, decode and crop its objects
here, classify the crops in few calls (``jobs.classify_crops``), store its lines in one
transaction, write its part file; repeat until none is left or the lane's time is up.

Every object of a chunk gets exactly one line: an answer, or an error (a corrupt image, a
missing object). A transient failure (storage, classifier, database) hands the chunk back
whole; a chunk that keeps failing gets error lines (``attempts_exhausted``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from jobs.classify_crops import crop_and_classify
from jobs.crash_points import BATCH_CHUNK_BEFORE_STORE, crash_point
from jobs.resources import Resources
from persistence import batches_repo
from persistence.batch_sources import Location, open_location, output_location, part_name
from persistence.batches_repo import ClaimedChunk
from persistence.db import session_scope
from persistence.models import Batch
from visionqueue.core.errors import Unavailable, VQError
from visionqueue.dataplane.priority import Priority

logger = logging.getLogger(__name__)

MAX_CHUNK_ATTEMPTS = 5
# A batch's calls are bulk work: behind interactive /predict and jobs (docs/priority.md).
PRIORITY = Priority.BULK
LANE_BUDGET_S = 60.0  # a lane hands over to a fresh message well inside the task time limit


@dataclass
class LaneReport:
    chunks: int = 0
    fenced: int = 0
    more: bool = False  # the lane stopped with chunks left (time up or a transient error)


def run_lane(batch_id: str, res: Resources, budget_s: float = LANE_BUDGET_S) -> LaneReport:
    """Take and run the batch's chunks until none is claimable or ``budget_s`` is spent."""
    report = LaneReport()
    cfg = res.settings.batch
    deadline = time.monotonic() + budget_s
    with session_scope(res.engine) as session:
        batch = batches_repo.get_batch_by_id(session, batch_id)
    if batch is None or batch.status in batches_repo.FINAL:
        return report
    source = open_location(_source_location(batch), res.settings)
    while time.monotonic() < deadline:
        with session_scope(res.engine) as session:
            chunk = batches_repo.claim_chunk(session, batch_id, res.leases.holder, cfg.lease_s)
            if chunk is not None:
                batches_repo.mark_running(session, batch_id)
        if chunk is None:
            return report
        try:
            stored = run_chunk(batch, chunk, source, res)
        except Unavailable as exc:
            logger.warning("batch %s chunk %d handed back: %s", batch_id, chunk.seq, exc.message)
            with session_scope(res.engine) as session:
                batches_repo.release_chunk(session, chunk)
            report.more = True
            return report
        report.chunks += 1
        report.fenced += not stored
    report.more = True
    return report


def _source_location(batch: Batch) -> Location:
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(batch.source)  # authorised at submission; parsed again without policy
    if parts.scheme == "s3":
        return Location("s3", parts.netloc, unquote(parts.path).lstrip("/"))
    return Location("file", "", unquote(parts.path))


def run_chunk(batch: Batch, chunk: ClaimedChunk, source: Any, res: Resources) -> bool:
    """Classify one claimed chunk and store its lines; False if the fence refused the write."""
    if chunk.attempts > MAX_CHUNK_ATTEMPTS:
        error = {"code": "attempts_exhausted", "message": "the chunk failed too many times"}
        lines = [_line(key, None, None, error) for key in chunk.keys]
        return _store(batch, chunk, lines, 0, len(lines), None, res)
    with _kept_lease(chunk, res):
        lines, done, failed, tag = _classify_keys(batch, chunk.keys, source, res)
        crash_point(BATCH_CHUNK_BEFORE_STORE)
        return _store(batch, chunk, lines, done, failed, tag, res)


def _classify_keys(
    batch: Batch, keys: list[str], source: Any, res: Resources
) -> tuple[list[str], int, int, str | None]:
    def fetch(key: str) -> bytes | VQError:
        try:
            return bytes(source.get(key))
        except Unavailable:
            raise
        except VQError as exc:  # missing object: its own error line
            return exc

    threads = max(1, res.settings.model.preprocess_threads)
    with ThreadPoolExecutor(min(16, len(keys)), "vq-batch-fetch") as fetch_pool:
        datas = list(fetch_pool.map(fetch, keys))
    with ThreadPoolExecutor(threads, "vq-batch-crop") as crop_pool:
        cropped = crop_and_classify(res, batch.model_name, datas, crop_pool, batch.top_k, PRIORITY)
    model = cropped.model
    lines, done, failed = [], 0, 0
    for key, outcome in zip(keys, cropped.outcomes, strict=True):
        if isinstance(outcome, VQError):
            error = {"code": outcome.code, "message": outcome.message}
            lines.append(_line(key, None, model, error))
            failed += 1
        else:
            lines.append(_line(key, outcome[0], model, None))
            done += 1
    return lines, done, failed, (model["tag"] if model else None)


def _line(
    key: str,
    predictions: list[dict[str, Any]] | None,
    model: dict[str, Any] | None,
    error: dict[str, str] | None,
) -> str:
    return json.dumps(
        {"key": key, "predictions": predictions, "model": model, "error": error},
        separators=(",", ":"),
    )


def _store(
    batch: Batch,
    chunk: ClaimedChunk,
    lines: list[str],
    done: int,
    failed: int,
    tag: str | None,
    res: Resources,
) -> bool:
    body = "\n".join(lines) + "\n"
    with session_scope(res.engine) as session:
        stored = batches_repo.complete_chunk(session, chunk, body, done, failed, tag)
    if not stored:
        logger.warning("batch %s chunk %d: lease lost, write refused", batch.id, chunk.seq)
        return False
    write_part(batch, chunk.seq, body, res)
    return True


def write_part(batch: Batch, seq: int, body: str, res: Resources) -> None:
    """Write one part file (idempotent: a chunk's stored lines never change)."""
    try:
        out = open_location(output_location(batch.output, res.settings), res.settings)
        out.put(part_name(seq), body.encode())
    except VQError as exc:  # the finaliser writes what is still missing
        logger.warning("batch %s: part %d not written yet: %s", batch.id, seq, exc.message)
        return
    with session_scope(res.engine) as session:
        batches_repo.mark_part_written(session, batch.id, seq)


def write_missing_parts(batch_id: str, res: Resources) -> int:
    """Write every part file a crash between a chunk's commit and its upload left out."""
    written = 0
    while True:
        with session_scope(res.engine) as session:
            batch = batches_repo.get_batch_by_id(session, batch_id)
            seqs = batches_repo.unwritten_parts(session, batch_id)
            bodies = {s: batches_repo.chunk_lines(session, batch_id, s) for s in seqs}
        if batch is None or not seqs:
            return written
        for seq, body in bodies.items():
            write_part(batch, seq, body or "", res)
            written += 1
        with session_scope(res.engine) as session:
            if batches_repo.unwritten_parts(session, batch_id, limit=1) == seqs[:1]:
                return written  # storage refuses: leave the rest to the next sweep


@contextmanager
def _kept_lease(chunk: ClaimedChunk, res: Resources) -> Iterator[None]:
    """Renew the chunk's lease every third of it while the chunk runs."""
    lease_s = res.settings.batch.lease_s
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            try:
                with session_scope(res.engine) as session:
                    if not batches_repo.renew_chunk(session, chunk, lease_s):
                        return  # fenced off: our write will be refused
            except VQError:
                continue

    keeper = threading.Thread(target=renew, name="vq-chunk-lease", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
