"""What clients see of a batch (``GET /v1/batches/{id}``, the webhook's ``data``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from persistence.models import Batch, utcnow
from visionqueue.core.timestamps import iso_z


def batch_view(batch: Batch, results_url: str | None = None) -> dict[str, Any]:
    """The batch's status, progress, rate, ETA, model and output locations."""
    processed = batch.done + batch.failed
    end = batch.finished_at or utcnow()
    elapsed = (end - batch.started_at).total_seconds() if batch.started_at else 0.0
    rate = processed / elapsed if elapsed > 0 else None
    eta = None
    if rate and batch.total is not None and batch.finished_at is None:
        eta = round(max(0, batch.total - processed) / rate, 1)
    view: dict[str, Any] = {
        "id": batch.id,
        "status": batch.status,
        "source": batch.source,
        "total": batch.total,
        "planned": batch.planned_keys,
        "done": batch.done,
        "failed": batch.failed,
        "images_per_second": round(rate, 2) if rate else None,
        "eta_s": eta,
        "model": {"name": batch.model_name, "tag": batch.model_tag},
        "top_k": batch.top_k,
        "metadata": batch.metadata_,
        "output": batch.output,
        "parts": f"{batch.output}part-NNNNN.jsonl",
        "results_url": results_url,
        "webhook_url": batch.webhook_url,
        "created_at": iso(batch.created_at),
        "started_at": iso(batch.started_at),
        "finished_at": iso(batch.finished_at),
        "error": (
            {"code": batch.error_code, "message": batch.error_message} if batch.error_code else None
        ),
    }
    return view


def iso(value: datetime | None) -> str | None:
    return iso_z(value) if value is not None else None
