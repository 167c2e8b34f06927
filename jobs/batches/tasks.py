"""Celery tasks of dataset batches: thin edges around ``plan``, ``run_chunk`` and ``notify``.

Messages carry a batch id only; one message starts a lane that takes chunks until none is
left, so a batch costs a few messages, not one per object. The sweep restarts lanes for
batches with claimable chunks (a worker died, a lane ran out of time), planners that died,
missing part files and webhook events whose message was lost.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import Task

import jobs.worker_setup  # noqa: F401  (connects the worker's start-up signals)
from jobs.batches.notify import deliver_batch_event, relay_due_batches
from jobs.batches.plan import plan_batch
from jobs.batches.run_chunk import run_lane, write_missing_parts
from jobs.celery_app import (
    BATCH_LANE_TASK,
    BATCH_PLAN_TASK,
    BATCH_SWEEP_TASK,
    BATCH_WEBHOOK_TASK,
    app,
)
from jobs.maintenance import requeue_grace_s
from jobs.resources import get_resources
from jobs.tasks import backoff_s
from persistence import batches_repo, deliveries_repo
from persistence.db import session_scope
from persistence.models import utcnow
from visionqueue.core.errors import DatabaseUnavailable, Unavailable, VQError

logger = logging.getLogger(__name__)

PLANNER_STALE_S = 120.0


def _send(task: str, batch_id: str, count: int, lost: str) -> None:
    """Queue ``count`` messages of ``task`` for the batch, best effort: the batch row is the
    truth and the sweep redoes what a broker outage loses (``lost`` says what, in the log)."""
    try:
        for _ in range(count):
            app.send_task(task, args=[batch_id])
    except Exception:  # kombu/redis/amqp errors differ by transport
        logger.warning("batch %s: %s", batch_id, lost)


def start_lanes(batch_id: str, count: int) -> None:
    """Queue ``count`` lanes for the batch (the sweep restarts lost ones)."""
    _send(BATCH_LANE_TASK, batch_id, count, "lanes not queued; the sweep starts them")


def _notify(batch_id: str, countdown: float | None = None) -> None:
    try:
        app.send_task(BATCH_WEBHOOK_TASK, args=[batch_id], countdown=countdown)
    except Exception:  # kombu/redis/amqp errors differ by transport
        logger.warning("batch %s: webhook message not queued; the sweep relays it", batch_id)


@app.task(name=BATCH_PLAN_TASK, ignore_result=True)
def plan(batch_id: str) -> dict[str, Any]:
    """List the source into chunks; lanes start with the first page."""
    res = get_resources()
    lanes = res.settings.batch.lanes
    started = False

    def on_page(planned: int) -> None:
        nonlocal started
        if not started:
            started = True
            start_lanes(batch_id, min(lanes, planned))

    try:
        report = plan_batch(batch_id, res, on_page)
    except VQError as exc:
        if isinstance(exc, Unavailable):
            raise  # the sweep restarts the planner from its last page
        with session_scope(res.engine) as session:
            batches_repo.fail_batch(session, batch_id, exc.code, exc.message)
        _notify(batch_id)
        return {"failed": exc.code}
    _after_finish(batch_id)
    return {"chunks": report.chunks, "finished": report.finished}


@app.task(name=BATCH_LANE_TASK, ignore_result=True)
def lane(batch_id: str) -> dict[str, Any]:
    """Take the batch's chunks until none is left; hand over to a fresh lane when time is up."""
    res = get_resources()
    report = run_lane(batch_id, res)
    if report.more and report.chunks:
        start_lanes(batch_id, 1)  # time up: carry on in a fresh message
    _after_finish(batch_id)
    return {"chunks": report.chunks, "fenced": report.fenced}


def _after_finish(batch_id: str) -> None:
    res = get_resources()
    with session_scope(res.engine) as session:
        batch = batches_repo.get_batch_by_id(session, batch_id)
        final = batch is not None and batch.status in batches_repo.FINAL
        event = deliveries_repo.get_event(session, batch_id, deliveries_repo.BATCHES)
        owed = event is not None and event.status == "pending"
    if final:
        write_missing_parts(batch_id, res)
        if owed:
            _notify(batch_id)


@app.task(bind=True, name=BATCH_WEBHOOK_TASK, ignore_result=True, max_retries=None)
def deliver(self: Task, batch_id: str) -> bool:
    """Attempt the batch's due webhook event; queue the next attempt if it is due soon."""
    try:
        outcome = deliver_batch_event(batch_id, get_resources())
    except DatabaseUnavailable as exc:
        raise self.retry(countdown=backoff_s(self.request.retries), exc=exc) from exc
    for waiting in outcome.hand_off:
        _notify(waiting)
    if outcome.retry_in_s is not None:
        _notify(batch_id, countdown=outcome.retry_in_s)
    return outcome.succeeded


@app.task(name=BATCH_SWEEP_TASK, ignore_result=True)
def sweep() -> dict[str, int]:
    """Restart lanes and planners that died; write missing parts; relay due webhooks."""
    res = get_resources()
    now = utcnow()
    with session_scope(res.engine) as session:
        working = batches_repo.batches_needing_work(session, now)
        unplanned = batches_repo.batches_unplanned(
            session, now - timedelta(seconds=PLANNER_STALE_S)
        )
    due = relay_due_batches(res, every_s=requeue_grace_s(res))
    for batch_id in working:
        start_lanes(batch_id, 1)
    for batch_id in unplanned:
        _send(BATCH_PLAN_TASK, batch_id, 1, "planner not restarted; the next sweep tries")
    for batch_id in due:
        _notify(batch_id)
    done = {"lanes": len(working), "planners": len(unplanned), "webhooks": len(due)}
    if any(done.values()):  # the sweep is quiet housekeeping unless it does something
        logger.info(
            "batch sweep: restarted %(lanes)d lanes, %(planners)d planners; "
            "%(webhooks)d webhooks relayed",
            done,
        )
    return done
