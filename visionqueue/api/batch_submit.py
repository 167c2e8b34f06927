"""Accept a dataset batch: check the request and its source, store the row, start planning.

What can be known at submission is refused there with a 4xx: a malformed or forbidden
source or output, a source that does not exist or is empty, a bad webhook URL, an unknown
model. The row is committed before the planner's message is published; a message the
broker refuses is re-sent by the batch sweep.
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

from pydantic import BaseModel, Field

from jobs.celery_app import BATCH_PLAN_TASK
from persistence import batches_repo
from persistence.batch_sources import (
    client_output,
    default_output,
    open_location,
    output_location,
    parse_location,
)
from persistence.db import session_scope
from persistence.models import Batch, new_job_id
from visionqueue.api.resources import FrontResources
from visionqueue.api.submit import check_webhook, parse_metadata
from visionqueue.core.errors import NotFound, Unprocessable

logger = logging.getLogger(__name__)


class BatchRequest(BaseModel):
    """The body of ``POST /v1/batches``."""

    source: str = Field(
        description="s3://BUCKET/PREFIX/, a manifest s3://BUCKET/KEY.txt|.jsonl, or "
        "file:///DIR/ under VQ_BATCH_LOCAL_ROOTS"
    )
    model: str | None = Field(None, description="a served model's name; empty = the default")
    top_k: int = Field(5, ge=1, le=20, description="classes in each result line")
    metadata: dict[str, Any] | None = None
    webhook_url: str | None = Field(None, description="one signed event when the batch ends")
    output: str | None = Field(
        None, description="s3://BUCKET/PREFIX/ for the part files; default: the project's store"
    )


def submit_batch(
    res: FrontResources, owner: str | None, request: BatchRequest, served: list[str]
) -> Batch:
    """Validate, store and start a batch (blocking I/O: call it from a thread)."""
    settings = res.settings
    if request.model and request.model not in served:
        raise NotFound(
            f"no model named {request.model!r} is served here; served: {', '.join(served)}",
            code="model_not_found",
        )
    metadata = parse_metadata(json.dumps(request.metadata)) if request.metadata else {}
    webhook_url = check_webhook(request.webhook_url, settings.webhook.allowed_hosts)
    source = parse_location(request.source, settings)
    reader = open_location(source, settings)
    if not reader.exists():
        raise NotFound(f"the source {source} does not exist", code="source_not_found")
    if next(iter(itertools.islice(reader.keys(), 1)), None) is None:
        raise Unprocessable(f"the source {source} holds no objects", code="source_empty")
    batch_id = new_job_id()
    output = (
        client_output(request.output, settings)
        if request.output
        else output_location(default_output(batch_id, settings), settings)
    )
    with session_scope(res.engine) as session:
        batch = batches_repo.create_batch(
            session,
            batch_id=batch_id,
            source=str(source),
            output=str(output).rstrip("/") + "/",
            owner=owner,
            model_name=request.model,
            top_k=request.top_k,
            metadata=metadata,
            webhook_url=webhook_url,
            output_owned=request.output is None,  # the retention purge deletes its parts
        )
    try:
        res.celery.send_task(BATCH_PLAN_TASK, args=[batch_id])
    except Exception:  # kombu errors differ by transport; the batch sweep re-sends it
        logger.warning("batch %s: planner not queued; the batch sweep starts it", batch_id)
    return batch
