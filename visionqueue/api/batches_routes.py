"""Dataset batch routes: submit, read, list, cancel, stream results, the webhook's delivery
log and redelivery; and the two routes of the workers' crops on the embedded default
(``jobs.classify_crops``): the one they classify a chunk through, and the one that says where
the classifier's crop sockets are, for a worker on this host to call them itself.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from jobs.batches.views import batch_view
from jobs.celery_app import BATCH_WEBHOOK_TASK
from jobs.views import delivery_view, event_view
from model_store.answers import model_block, top_k_rows
from persistence import batches_repo, deliveries_repo
from persistence.db import session_scope
from persistence.deliveries_repo import BATCHES
from persistence.models import Batch
from visionqueue.api.batch_submit import BatchRequest, submit_batch
from visionqueue.api.openapi_errors import error_responses
from visionqueue.api.redelivery import queue_delivery, schedule_redelivery
from visionqueue.api.routes import owner, resources
from visionqueue.api.state import current_dataplane, served_models
from visionqueue.core.errors import BadRequest, Conflict, NotFound
from visionqueue.core.webhook_events import batch_event_type_for
from visionqueue.dataplane.priority import Priority

router = APIRouter(tags=["batches"])
MAX_CROPS = 256


def _results_url(request: Request, batch: Batch) -> str:
    return str(request.url_for("batch_results", batch_id=batch.id))


def _load(request: Request, batch_id: str) -> Batch:
    with session_scope(resources(request).engine) as session:
        batch = batches_repo.get_batch(session, batch_id, owner(request))
    if batch is None:
        raise NotFound("batch not found", code="batch_not_found")
    return batch


@router.post(
    "/v1/batches", status_code=202, responses=error_responses(400, 401, 404, 413, 422, 503)
)
async def create_batch(request: Request, body: BatchRequest) -> Any:
    """Classify every object of a bucket prefix, a manifest or a local folder."""
    res = resources(request)
    served = served_models(request).names
    batch = await anyio.to_thread.run_sync(submit_batch, res, owner(request), body, served)
    return JSONResponse(batch_view(batch, _results_url(request, batch)), status_code=202)


@router.get("/v1/batches", responses=error_responses(400, 401, 422, 503))
async def list_batches(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query()] = None,
) -> Any:
    """The caller's batches, newest first; follow ``next_cursor`` for the next page."""

    def query() -> tuple[list[Batch], str | None]:
        with session_scope(resources(request).engine) as session:
            return batches_repo.list_batches(session, owner(request), limit, cursor)

    batches, next_cursor = await anyio.to_thread.run_sync(query)
    return {
        "batches": [batch_view(b, _results_url(request, b)) for b in batches],
        "next_cursor": next_cursor,
    }


@router.get("/v1/batches/{batch_id}", responses=error_responses(401, 404, 503))
async def get_batch(request: Request, batch_id: str) -> Any:
    """A batch's status, progress, rate, ETA, model and output locations."""
    batch = await anyio.to_thread.run_sync(_load, request, batch_id)
    return batch_view(batch, _results_url(request, batch))


@router.delete("/v1/batches/{batch_id}", responses=error_responses(401, 404, 503))
async def cancel_batch(request: Request, batch_id: str) -> Any:
    """Cancel a batch: no new chunk starts; lines already stored stay readable."""

    def cancel() -> Batch | None:
        with session_scope(resources(request).engine) as session:
            return batches_repo.cancel_batch(session, batch_id, owner(request))

    batch = await anyio.to_thread.run_sync(cancel)
    if batch is None:
        raise NotFound("batch not found", code="batch_not_found")
    if batch.webhook_url:  # batch.cancelled is owed now: no lane may be left to send it
        res = resources(request)
        await anyio.to_thread.run_sync(queue_delivery, res, BATCHES, batch.id, BATCH_WEBHOOK_TASK)
    return batch_view(batch, _results_url(request, batch))


@router.get(
    "/v1/batches/{batch_id}/results",
    name="batch_results",
    responses=error_responses(401, 404, 503),
)
async def batch_results(request: Request, batch_id: str) -> Any:
    """Stream the lines stored so far as JSON Lines, one per source object."""
    batch = await anyio.to_thread.run_sync(_load, request, batch_id)
    lines = batches_repo.iter_lines(resources(request).engine, batch.id)
    return StreamingResponse(lines, media_type="application/jsonl")


@router.get(
    "/v1/batches/{batch_id}/deliveries",
    tags=["webhooks"],
    responses=error_responses(401, 404, 503),
)
async def batch_deliveries(request: Request, batch_id: str) -> Any:
    """Every delivery attempt of the batch's webhook event, and where the event stands."""

    def query() -> dict[str, Any]:
        _load(request, batch_id)
        with session_scope(resources(request).engine) as session:
            rows = deliveries_repo.list_attempts(session, batch_id, BATCHES)
            owed = deliveries_repo.get_event(session, batch_id, BATCHES)
        return {"deliveries": [delivery_view(d) for d in rows], "event": event_view(owed)}

    return await anyio.to_thread.run_sync(query)


@router.post(
    "/v1/batches/{batch_id}/deliveries/redeliver",
    status_code=202,
    tags=["webhooks"],
    responses=error_responses(401, 404, 409, 429, 503),
)
async def redeliver_batch_event(request: Request, batch_id: str) -> Any:
    """Send the batch's event again now (same event id), e.g. after fixing the receiver."""

    def schedule() -> int:
        batch = _load(request, batch_id)
        if not batch.webhook_url:
            raise Conflict("the batch has no webhook_url")
        if batch.status not in batches_repo.FINAL:
            raise Conflict(f"batch is {batch.status}; its event is sent when it ends")
        return schedule_redelivery(
            resources(request),
            BATCHES,
            batch_id,
            batch_event_type_for(batch.status),
            batch.webhook_url,
            BATCH_WEBHOOK_TASK,
        )

    attempt = await anyio.to_thread.run_sync(schedule)
    return JSONResponse({"status": "scheduled", "attempt": attempt}, status_code=202)


@router.post("/v1/batches/crops", include_in_schema=False)
async def classify_crops(
    request: Request,
    shape: str,
    model: str = "",
    top_k: Annotated[int, Query(ge=1, le=20)] = 5,
    priority: str = "bulk",  # the class of work: bulk (batches) or jobs, never interactive
) -> Any:
    """Classify a chunk's raw ``N,H,W,3`` uint8 crops on the model's batching queue."""
    try:
        n, h, w, c = (int(v) for v in shape.split(","))
    except ValueError:
        raise BadRequest("shape must be N,H,W,C", code="invalid_shape") from None
    body = await request.body()
    if not 0 < n <= MAX_CROPS or c != 3 or h != w or n * h * w * c != len(body):
        raise BadRequest("the body does not hold N square RGB crops", code="invalid_shape")
    try:
        work_class = Priority.parse(priority)
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_priority") from None
    if work_class is Priority.INTERACTIVE:  # a worker's chunk never jumps ahead of a person
        raise BadRequest("a chunk is jobs or bulk work", code="invalid_priority")
    crops = np.frombuffer(body, np.uint8).reshape(n, h, w, c)
    registry = served_models(request)
    name = registry.get(model or None).name
    rows, version = await registry.classify_many(name, crops, work_class)
    return {
        "model": model_block(name, version),
        "preprocessing": version["preprocessing"],
        "predictions": [top_k_rows(row, version["labels"], top_k) for row in rows.probs],
    }


@router.get("/v1/batches/crops/classifier", include_in_schema=False)
async def crops_classifier(request: Request, model: str = "") -> Any:
    """Where a worker on this host may send a chunk's crops itself, and how to read the answer.

    ``sockets``: the classifier's crop sockets (empty when the front calls it over HTTP);
    with ``model``: its batch API on them and its versions as the classifier describes them
    (``model_info``), asked afresh (503 while the classifier loads).
    """
    dataplane = current_dataplane(request)
    body: dict[str, Any] = {"sockets": [str(path) for path in dataplane.crop_sockets]}
    if model:
        served = dataplane.models.get(model)
        described = await dataplane.models.described(served.name)
        body.update(model=served.name, api=served.api, described=described)
    return body
