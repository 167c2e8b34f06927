"""Manual redelivery of a webhook event, for jobs and batches alike: a new retry series due
now (``deliveries_repo.redeliver``), at most once per ``VQ_WEBHOOK_REDELIVER_INTERVAL_S``
(429 ``redeliver_rate_limited``), and a message that makes it prompt (the sweepers relay it
if the broker refuses)."""

from __future__ import annotations

import logging
import math

from persistence import deliveries_repo
from persistence.db import session_scope
from visionqueue.api.resources import FrontResources
from visionqueue.core.errors import TooManyRequests
from visionqueue.core.webhook_events import destination_of, event_id_for

logger = logging.getLogger(__name__)


def schedule_redelivery(
    res: FrontResources,
    outbox: deliveries_repo.Outbox,
    subject_id: str,
    event_type: str,
    webhook_url: str,
    task: str,
) -> int:
    """Make the subject's event due now and queue ``task`` for it; return the attempt number."""
    with session_scope(res.engine) as session:
        planned = deliveries_repo.redeliver(
            session,
            subject_id=subject_id,
            event_id=event_id_for(subject_id, event_type),
            event_type=event_type,
            destination=destination_of(webhook_url),
            min_interval_s=res.settings.webhook.redeliver_interval_s,
            outbox=outbox,
        )
    if planned.attempt is None:
        wait = max(1, math.ceil(planned.retry_after_s or 1))
        raise TooManyRequests(
            f"this {outbox.noun}'s event was redelivered moments ago; retry in {wait}s",
            code="redeliver_rate_limited",
            retry_after=wait,
        )
    queue_delivery(res, outbox, subject_id, task)
    return planned.attempt


def queue_delivery(
    res: FrontResources, outbox: deliveries_repo.Outbox, subject_id: str, task: str
) -> None:
    """Queue an attempt of the subject's due event now, best effort (the sweepers relay it)."""
    try:
        res.celery.send_task(task, args=[subject_id])
    except Exception:  # kombu errors differ by transport
        # the event is due in the database: the sweeper relays it
        logger.warning(
            "%s %s: delivery message not queued; left to the sweeper", outbox.noun, subject_id
        )
