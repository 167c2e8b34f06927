"""Which jobs' messages Redis workers have taken and not yet acknowledged.

kombu's Redis transport keeps every message a worker took in an ``unacked`` hash until the
worker acknowledges it (after the job, ``acks_late``), and gives it back only after the
visibility timeout (``VQ_BROKER_VISIBILITY_TIMEOUT_S``, 1 h). A live worker leases the job of
a message within milliseconds of taking it (``jobs.lease_keeper``), so a pending job that is
still unleased while its message sits in this hash was taken by a worker that died first.
"""

from __future__ import annotations

import json
from typing import Any

from jobs.fs_broker import JOB_HEADER


def unacked_job_ids(celery_app: Any) -> set[str] | None:
    """Return the jobs named by unacknowledged messages; None if the broker is not Redis."""
    if not celery_app.conf.broker_url.startswith(("redis://", "rediss://")):
        return None
    ids: set[str] = set()
    with celery_app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        channel = conn.channel()
        try:
            # the channel's client adds the deployment's key prefix
            for raw in channel.client.hvals(channel.unacked_key):
                try:
                    payload = json.loads(raw)[0]
                    job = payload["headers"].get(JOB_HEADER)
                except (ValueError, LookupError, TypeError, AttributeError):
                    continue  # not one of ours
                if isinstance(job, str):
                    ids.add(job)
        finally:
            channel.close()
    return ids
