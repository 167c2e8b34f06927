"""The end-of-batch webhook: one signed event (``batch.completed|failed|cancelled``), owed by
the transaction that ends the batch (``batches_repo``) and delivered like a job's event
(``jobs.notify.attempt_event``): the same claims, signing (the tenant's secrets), SSRF
guard, retry schedule, deadline and delivery log, in the batches' own outbox."""

from __future__ import annotations

from sqlalchemy.orm import Session

from jobs.batches.views import batch_view
from jobs.notify import DeliveryOutcome, OwedEvent, attempt_event, relay_due
from jobs.resources import Resources
from persistence import batches_repo
from persistence.deliveries_repo import BATCHES
from persistence.models import utcnow


def deliver_batch_event(batch_id: str, res: Resources) -> DeliveryOutcome:
    """Make the batch's due attempt (if any) and record it in the batch's delivery log."""
    return attempt_event(BATCHES, batch_id, res, _batch_event)


def _batch_event(session: Session, batch_id: str, res: Resources) -> OwedEvent:
    batch = batches_repo.get_batch_by_id(session, batch_id)
    assert batch is not None  # the outbox row references the batch
    return OwedEvent(
        batch.webhook_url or "", batch_view(batch), batch.finished_at or utcnow(), batch.owner
    )


def relay_due_batches(res: Resources, every_s: float) -> list[str]:
    """Return the batches whose due event lost its message (and mark them relayed)."""
    return relay_due(res, every_s=every_s, outbox=BATCHES)
