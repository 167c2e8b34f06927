"""Which jobs' messages Redis still queues, and which ones workers took and have not acknowledged.

kombu's Redis transport keeps every message a worker took in an ``unacked`` hash until the
worker acknowledges it (after the job, ``acks_late``), and gives it back only after the
visibility timeout (``VQ_BROKER_VISIBILITY_TIMEOUT_S``, 1 h). A live worker leases the job of
a message within milliseconds of taking it (``jobs.lease_keeper``), so a pending job that is
still unleased while its message sits in this hash was taken by a worker that died first.

Taking a message is two steps in kombu: ``BRPOP`` off the queue's list, then a note in the
unacked hash. A worker killed between the two (seen with a worker busy decoding images
in its other threads) leaves the message in neither place: a pending, unleased job whose
message is no longer queued lost it too. Reading every queued message costs a pass over the
queue, so it is done only while the queue is short (``QUEUE_SCAN_LIMIT``); behind a longer
queue, such a job is sent again after ``VQ_WORKER_PENDING_REQUEUE_AFTER_S``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jobs.fs_broker import JOB_HEADER

QUEUE_SCAN_LIMIT = 5000  # queued messages read per sweep, at most (a few MB)


@dataclass(frozen=True)
class RedisView:
    """The jobs a Redis broker still queues (None: too many to read) and has out unacknowledged."""

    queued: frozenset[str] | None
    unacked: frozenset[str]

    def taken(self, job_id: str) -> bool:
        """Tell whether ``job_id``'s message left the queue (taken, acknowledged or lost)."""
        if job_id in self.unacked:
            return True
        return self.queued is not None and job_id not in self.queued


def _job_of(raw: bytes | str) -> str | None:
    """Return the job a serialized kombu message names, or None (not one of ours)."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # unacked entries: [message, exchange, routing key]
            message = message[0]
        job = message["headers"].get(JOB_HEADER)
    except (ValueError, LookupError, TypeError, AttributeError):
        return None
    return job if isinstance(job, str) else None


def _key(channel: Any, command: str, name: str) -> str:
    """Return the key to pass ``command`` for ``name``: kombu's client adds the deployment's
    prefix (``global_keyprefix``) for some commands only (not LRANGE or HVALS)."""
    client = channel.client
    if command in getattr(client, "PREFIXED_SIMPLE_COMMANDS", ()):
        return name
    return f"{getattr(client, 'global_keyprefix', '') or ''}{name}"


def _queued(channel: Any, queue: str, limit: int) -> frozenset[str] | None:
    client = channel.client
    steps = sorted({int(p) for p in channel.priority_steps} | {0})
    names = [queue if not p else f"{queue}{channel.sep}{p}" for p in steps]
    if sum(int(client.llen(_key(channel, "LLEN", name))) for name in names) > limit:
        return None
    ids: set[str] = set()
    for name in names:
        for raw in client.lrange(_key(channel, "LRANGE", name), 0, -1):
            job = _job_of(raw)
            if job is not None:
                ids.add(job)
    return frozenset(ids)


def redis_view(celery_app: Any, queue: str, limit: int = QUEUE_SCAN_LIMIT) -> RedisView | None:
    """Return what the broker says of ``queue``'s job messages; None if it is not Redis.

    The queue is read before the unacked hash: a message taken meanwhile is then found in
    the hash, never in neither.
    """
    if not celery_app.conf.broker_url.startswith(("redis://", "rediss://")):
        return None
    with celery_app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        channel = conn.channel()
        try:
            queued = _queued(channel, queue, limit)
            taken = [
                _job_of(raw)
                for raw in channel.client.hvals(_key(channel, "HVALS", channel.unacked_key))
            ]
        finally:
            channel.close()
    return RedisView(queued, frozenset(job for job in taken if job is not None))
