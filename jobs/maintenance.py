"""The sweeper and the purge (jobs, images, batches), each single-flight across every worker (a lock in the database).

``sweep_once`` finds what a crash or a lost message left behind: jobs whose worker's lease
lapsed, retries and enqueues nobody claimed, jobs out of attempts (failed, their event
owed), jobs whose message a worker took and died with before it leased them (the embedded
broker and Redis show which messages were taken), and webhook events due with no message
(relayed). The task publishes the messages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from jobs.celery_app import Queues
from jobs.celery_app import app as celery_app
from jobs.classify import exhaust_if_spent
from jobs.fs_broker import queue_folder, queued_job_ids
from jobs.notify import relay_due
from jobs.redis_unacked import redis_view
from jobs.resources import Resources
from persistence import job_leases, locks
from persistence.db import session_scope

logger = logging.getLogger(__name__)

SWEEP_LOCK, PURGE_LOCK = "sweep", "purge"
PURGE_LOCK_TTL_S = 3600.0


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    relayed: list[str] = field(default_factory=list)
    failed: int = 0
    skipped: bool = False  # another sweep held the lock


def requeue_grace_s(res: Resources) -> float:
    """Return how long a re-sent message has to be claimed before it is sent once more."""
    return max(15.0, 3 * res.settings.worker.sweep_interval_s)


def taken_and_unleased(res: Resources) -> Callable[[str], bool] | None:
    """Return whether a pending, unleased job's message was taken (by a worker that died).

    The embedded broker deletes a message as a worker takes it: a job with no message file
    left. Redis keeps it in its unacked hash (a job named there), or lost it with a worker
    killed between taking and noting it (a job no longer queued, ``jobs.redis_unacked``).
    None for other brokers (AMQP gives a dead consumer's messages back at once).
    """
    folder = queue_folder(res.settings)
    if folder is not None:
        queued = queued_job_ids(folder)
        return lambda job_id: job_id not in queued
    try:
        view = redis_view(celery_app, Queues.of(res.settings).jobs)
    except Exception:  # kombu/redis errors differ; the rest of the sweep needs no broker
        logger.warning("sweep: the broker did not say which messages were taken; next sweep")
        return None
    return None if view is None else view.taken


def sweep_once(res: Resources) -> SweepReport:
    """Run one sweep unless another one runs; return what it found."""
    holder = res.leases.holder
    worker = res.settings.worker
    # a sweeper killed mid-sweep keeps others out until its lock expires, so the expiry is
    # what a dead worker's lease gets (its jobs wait for both), not a fixed minute; a sweep
    # takes well under a second, and two overlapping ones re-send nothing twice (each
    # update re-checks its condition)
    ttl = max(worker.lease_s, 2 * worker.sweep_interval_s)
    with session_scope(res.engine) as session:
        if not locks.acquire(session, SWEEP_LOCK, holder, ttl):
            return SweepReport(skipped=True)
    try:
        report = SweepReport()
        lost = taken_and_unleased(res)  # asked of the broker before the transaction opens
        with session_scope(res.engine) as session:
            ids = job_leases.requeue_abandoned(
                session,
                pending_after=timedelta(seconds=worker.pending_requeue_after_s),
                legacy_stuck_after=timedelta(seconds=2 * worker.task_time_limit_s),
                grace=timedelta(seconds=requeue_grace_s(res)),
            )
            if lost is not None:
                # a live receiver leases a job within milliseconds of taking its message; a
                # sweep interval later, an unleased job whose message was taken lost both
                taken = timedelta(seconds=max(5.0, worker.sweep_interval_s))
                grace = timedelta(seconds=requeue_grace_s(res))
                ids += job_leases.requeue_message_lost(session, lost, older_than=taken, grace=grace)
            for job_id in ids:
                if exhaust_if_spent(session, job_id, worker.max_attempts).status == "failed":
                    report.failed += 1
                    report.relayed.append(job_id)
                else:
                    report.requeued.append(job_id)
        relayed = relay_due(res, every_s=requeue_grace_s(res))
        report.relayed += [j for j in relayed if j not in report.relayed]
        return report
    finally:
        with session_scope(res.engine) as session:
            locks.release(session, SWEEP_LOCK, holder)


def purge_once(res: Resources) -> dict[str, int]:
    """Run the retention and orphan purges unless another purge runs."""
    from jobs.batches.retention import purge_expired_batches
    from jobs.retention import purge_expired, purge_orphans

    holder = res.leases.holder
    with session_scope(res.engine) as session:
        if not locks.acquire(session, PURGE_LOCK, holder, PURGE_LOCK_TTL_S):
            return {"jobs": 0, "images": 0, "orphan_images": 0, "batches": 0, "skipped": 1}
    try:
        result = purge_expired(res.engine, res.store, res.settings.worker.retention_days)
        orphans = 0
        if res.settings.worker.purge_orphan_images:
            orphans = purge_orphans(res.engine, res.store)
        batches = purge_expired_batches(res.engine, res.settings)
        return {
            "jobs": result.jobs,
            "images": result.images,
            "orphan_images": orphans,
            "batches": batches,
        }
    finally:
        with session_scope(res.engine) as session:
            locks.release(session, PURGE_LOCK, holder)
