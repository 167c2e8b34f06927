"""Names of a job's or a batch's webhook event: its type, its stable id, its destination.

Plain functions: the front plans redeliveries with them, the worker sends with them, and a
batch owes its event with them in the transaction that ends it (``persistence``).
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit


def event_type_for(status: str) -> str:
    """Return the event type a finished job's status sends."""
    return "job.completed" if status == "completed" else "job.failed"


def batch_event_type_for(status: str) -> str:
    """Return the event type a finished batch's status sends (``batch.completed`` ...)."""
    return f"batch.{status}"


def event_id_for(job_id: str, event_type: str) -> str:
    """Return the stable id of an event (the same for every retry and redelivery)."""
    return f"evt_{uuid.uuid5(uuid.NAMESPACE_URL, f'visionqueue:{job_id}:{event_type}').hex}"


def destination_of(url: str) -> str:
    """Return ``scheme://host:port`` of a webhook URL: what the concurrency cap counts."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"[:300]
