"""The end-of-batch webhook: one signed event (``batch.completed|failed|cancelled``), owed on
the batch row by the transaction that finishes it, delivered with the jobs' signing, SSRF
guard, deadline and retry schedule (``jobs.webhooks``); the sweeper relays due ones."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from sqlalchemy import update

from jobs.batches.views import batch_view
from jobs.notify import event_headers
from jobs.resources import Resources
from jobs.webhooks.delivery import build_event, deliver_once, next_delay
from jobs.webhooks.events import event_id_for
from persistence import batches_repo
from persistence.batches_repo import changed_rows
from persistence.db import session_scope
from persistence.models import Batch, utcnow

logger = logging.getLogger(__name__)

CLAIM_HOLD_S = 30.0


def deliver_batch_event(batch_id: str, res: Resources) -> bool:
    """Make the batch's due attempt (if any); record the outcome and the next due time."""
    hook = res.settings.webhook
    now = utcnow()
    with session_scope(res.engine) as session:
        # claim: push the due time past this attempt so a relay cannot send it twice
        claimed = changed_rows(
            session,
            update(Batch)
            .where(
                Batch.id == batch_id,
                Batch.webhook_state == "owed",
                Batch.webhook_next_at <= now,
            )
            .values(
                webhook_next_at=now + timedelta(seconds=hook.timeout_s + CLAIM_HOLD_S),
                webhook_attempts=Batch.webhook_attempts + 1,
            ),
        )
        if claimed != 1:
            return False
        batch = batches_repo.get_batch_by_id(session, batch_id)
        assert batch is not None
        session.refresh(batch)
        event_type = f"batch.{batch.status}"
        event_id = event_id_for(batch.id, event_type)
        body = build_event(event_type, event_id, batch_view(batch), batch.finished_at or now)
        url, attempt = batch.webhook_url or "", batch.webhook_attempts
    try:
        headers = event_headers(
            hook.secrets,
            event_id,
            int(time.time()),
            body,
            allow_unsigned=res.settings.server.env != "production",
        )
    except ValueError:
        logger.error("batch %s: webhook not sent, VQ_WEBHOOK_SECRETS is malformed", batch_id)
        succeeded, error, permanent, retry_after = False, "signing_error", False, None
    else:
        result = deliver_once(url, body, headers, hook.timeout_s, hook.allowed_hosts)
        succeeded, error = result.succeeded, result.error or ""
        permanent, retry_after = result.permanent, result.retry_after_s
    delay = (
        None if succeeded or permanent else next_delay(attempt, hook.retry_schedule, retry_after)
    )
    state = "delivered" if succeeded else ("owed" if delay is not None else "exhausted")
    with session_scope(res.engine) as session:
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(
                webhook_state=state,
                webhook_last_error=error,
                webhook_next_at=utcnow() + timedelta(seconds=delay) if delay else None,
            )
        )
    return succeeded
