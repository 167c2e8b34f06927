"""Accept async jobs: validate cheaply, store the image, commit the row, then enqueue.

Acceptance never decodes the full image or runs the model. If the store, the database or
the broker fails, the client gets a 503 and nothing it was told about exists: the rows of
a request whose messages could not all be published are deleted again. Except with an
``Idempotency-Key``: once its rows are committed a retry may already have been answered
with their ids, so they are kept (202) and the sweeper publishes what the broker refused.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from jobs.celery_app import CLASSIFY_TASK
from jobs.fs_broker import job_headers
from jobs.webhooks.ssrf import check_url
from persistence import job_leases, jobs_repo
from persistence.db import session_scope
from persistence.image_keys import digest_of
from persistence.models import Job, utcnow
from visionqueue.api.resources import FrontResources
from visionqueue.core.errors import (
    BrokerUnavailable,
    IdempotencyConflict,
    MissingField,
    TooManyRequests,
    Unprocessable,
    VQError,
)
from visionqueue.core.images import inspect_image
from visionqueue.dataplane.priority import JOB_PRIORITIES

logger = logging.getLogger(__name__)

MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 32
MAX_FILENAME_CHARS = 255
MAX_IMAGES_PER_REQUEST = 32


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str


def parse_metadata(raw: str | None) -> dict[str, Any]:
    """Return the ``metadata`` form field as a JSON object (422 otherwise)."""
    if raw is None or raw == "":
        return {}
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        raise Unprocessable(
            f"metadata must be at most {MAX_METADATA_BYTES} bytes", code="metadata_too_large"
        )
    try:
        # NaN/Infinity are not JSON, and PostgreSQL's jsonb refuses them (a 500 otherwise)
        value = json.loads(raw, parse_constant=_not_json, parse_float=_finite_float)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested thousands deep
        raise Unprocessable("metadata must be valid JSON", code="invalid_metadata") from None
    if not isinstance(value, dict):
        raise Unprocessable("metadata must be a JSON object", code="invalid_metadata")
    _check_storable(value)
    return value


def _not_json(literal: str) -> Any:
    raise ValueError(f"{literal} is not JSON")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if number in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return number


def _storable_text(text: str) -> bool:
    """Tell whether jsonb can store ``text``: no NUL character, no lone surrogate."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_storable(value: Any) -> None:
    """Refuse metadata the database cannot store: too deep, NUL characters, lone surrogates."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise Unprocessable(
                f"metadata must nest at most {MAX_METADATA_DEPTH} levels", code="invalid_metadata"
            )
        if isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str) and not _storable_text(item):
            raise Unprocessable(
                "metadata strings must not contain NUL characters or lone surrogates",
                code="invalid_metadata",
            )


def clean_filename(name: str) -> str:
    """Return an upload's file name fit to store: no control characters, at most 255 chars."""
    kept = "".join(ch for ch in name if ch.isprintable() and _storable_text(ch))
    return kept[:MAX_FILENAME_CHARS]


def check_webhook(url: str | None, allowed_hosts: list[str]) -> str | None:
    if url is None or url == "":
        return None
    check_url(url, allowed_hosts)
    return url


def _replayed(res: FrontResources, owner: str | None, key: str) -> list[Job] | None:
    with session_scope(res.engine) as session:
        first = jobs_repo.find_by_idempotency_key(session, owner, key)
        if first is None:
            return None
        if first.batch_id is None:
            return [first]
        rows = jobs_repo.batch_jobs(session, first.batch_id, first.owner)
        # keys are KEY, KEY#1 .. KEY#n: sort by number, or KEY#10 would come before KEY#2
        return sorted(rows, key=lambda j: _key_index(j.idempotency_key, key))


def check_backlog(res: FrontResources, adding: int) -> None:
    """Refuse (429) a submission of ``adding`` jobs that would take the backlog past its cap."""
    limit = res.settings.server.max_backlog
    if not limit:
        return
    with session_scope(res.engine) as session:
        active = jobs_repo.count_unfinished(session)
    if active + adding > limit:
        raise TooManyRequests(
            f"the job backlog is full ({active} of {limit} jobs unfinished; this request "
            f"adds {adding}); retry later",
            retry_after=5,
        )


def check_priority(priority: str | None) -> str:
    """Return a job's ``priority`` (high | normal | low; empty = normal), else raise a 422."""
    value = (priority or "normal").strip().lower()
    if value not in JOB_PRIORITIES:
        raise Unprocessable(
            f"priority must be one of {', '.join(JOB_PRIORITIES)}", code="invalid_priority"
        )
    return value


def submit_jobs(
    res: FrontResources,
    uploads: list[Upload],
    *,
    owner: str | None,
    webhook_url: str | None,
    metadata: dict[str, Any],
    idempotency_key: str | None,
    model_name: str | None = None,
    priority: str = "normal",
) -> tuple[list[Job], bool]:
    """Accept ``uploads`` as jobs; return (jobs, replayed). Runs in a worker thread.

    ``model_name`` is a served model's name (checked by the caller); None means the default.
    """
    if not uploads:
        raise MissingField("multipart field 'image' is required")
    if len(uploads) > MAX_IMAGES_PER_REQUEST:
        raise Unprocessable(
            f"at most {MAX_IMAGES_PER_REQUEST} images per request", code="too_many_images"
        )
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
        raise Unprocessable("Idempotency-Key must be 1..200 characters", code="invalid_header")
    if idempotency_key and (earlier := _replayed(res, owner, _key(idempotency_key, 0))):
        return earlier, True
    settings = res.settings
    infos = [inspect_image(u.data, settings.server.max_image_pixels) for u in uploads]
    check_backlog(res, len(uploads))

    keys = [
        res.store.put(u.data, info.content_type) for u, info in zip(uploads, infos, strict=False)
    ]
    batch_id = str(uuid.uuid4()) if len(uploads) > 1 else None
    # queued_at is set with the row (the same instant as created_at): it is committed
    # before the messages are published (a worker may claim a job as soon as its message
    # is out), and a request whose publish fails has its rows withdrawn
    accepted_at = utcnow()
    try:
        with session_scope(res.engine) as session:
            jobs = [
                jobs_repo.create_job(
                    session,
                    image_key=key,
                    image_sha256=digest_of(key),  # the store hashed it already
                    content_type=info.content_type,
                    image_size=len(u.data),
                    width=info.width,
                    height=info.height,
                    metadata={**metadata, **_filename_entry(u.filename)},
                    webhook_url=webhook_url,
                    idempotency_key=_key(idempotency_key, i) if idempotency_key else None,
                    owner=owner,
                    batch_id=batch_id,
                    model_name=model_name,
                    priority=priority,
                    created_at=accepted_at,
                    queued_at=accepted_at,
                    flush=False,
                )
                for i, (u, info, key) in enumerate(zip(uploads, infos, keys, strict=False))
            ]
            jobs_repo.flush_jobs(session, jobs)  # one INSERT for the request's rows
    except IdempotencyConflict:
        # a concurrent request with the same key won the race: answer with its jobs
        earlier = _replayed(res, owner, _key(idempotency_key or "", 0))
        if earlier:
            return earlier, True
        raise
    enqueue(res, jobs, keep=idempotency_key is not None)
    return jobs, False


def _filename_entry(filename: str) -> dict[str, str]:
    name = clean_filename(filename)
    return {"filename": name} if name else {}


def _key(idempotency_key: str | None, index: int) -> str:
    return f"{idempotency_key}" if index == 0 else f"{idempotency_key}#{index}"


def _key_index(job_key: str | None, base: str) -> int:
    """Return the image index ``_key`` encoded in ``job_key`` (0 for ``base`` itself)."""
    head, _, index = (job_key or "").partition(f"{base}#")
    return int(index) if not head and index.isdigit() else 0


def enqueue(res: FrontResources, jobs: list[Job], *, keep: bool = False) -> None:
    """Publish one message per committed job (ids only); undo the rows if the broker refuses.

    ``keep``: the rows may already have been handed out (an idempotent replay); never
    withdraw them, leave their messages to the sweeper instead.
    """
    ids = [job.id for job in jobs]
    published = 0
    try:
        for job_id in ids:
            res.celery.send_task(CLASSIFY_TASK, args=[job_id], headers=job_headers(job_id))
            published += 1
    except Exception as exc:  # kombu/redis/amqp errors differ by transport
        if keep and _leave_to_sweeper(res, ids[published:]):
            logger.warning(
                "broker refused %d jobs; the sweeper enqueues them", len(ids) - published
            )
            return
        # the client hears that nothing was accepted: withdraw the published jobs too
        # (a worker skips a message whose row is gone), or its retry would duplicate them
        _withdraw(res, ids)
        if published:
            logger.warning("broker failed mid-batch; withdrew %d published jobs", published)
        raise BrokerUnavailable("the job queue is unavailable, retry later", retry_after=5) from exc


def _leave_to_sweeper(res: FrontResources, job_ids: list[str]) -> bool:
    """Mark the unpublished jobs for the sweeper; False if even the database refused."""
    within = max(15.0, 3 * res.settings.worker.sweep_interval_s)
    try:
        with session_scope(res.engine) as session:
            job_leases.leave_to_sweeper(session, job_ids, within)
    except VQError as exc:
        logger.error("could not mark %d unpublished jobs for the sweeper: %s", len(job_ids), exc)
        return False
    return True


def _withdraw(res: FrontResources, job_ids: list[str]) -> None:
    """Delete the rows of a refused request's jobs that have not finished (the client got 503)."""
    try:
        with session_scope(res.engine) as session:
            jobs_repo.delete_unfinished(session, job_ids)
    except VQError:
        # the sweeper will enqueue them later: they are processed, never lost
        logger.error("could not withdraw %d unpublished jobs", len(job_ids))
