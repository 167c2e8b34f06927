"""The backlog gauges the front appends to ``/metrics``: broker queue depths, jobs by status.

Both are read from the backends (the broker, the job table), at most once per
``VQ_HEALTH_CACHE_S`` per front worker whatever the scrape rate.
"""

from __future__ import annotations

import logging

from visionqueue.api.probe_cache import CachedProbe
from visionqueue.api.resources import FrontResources

logger = logging.getLogger(__name__)


def backlog_exposition(depths: dict[str, int], statuses: dict[str, int]) -> str:
    """Render the broker backlog and jobs-by-status gauges in the text exposition format."""
    lines = [
        "# HELP celery_queue_depth Messages waiting in the broker queue (read from the broker)",
        "# TYPE celery_queue_depth gauge",
        *(f'celery_queue_depth{{queue="{q}"}} {n}' for q, n in sorted(depths.items())),
        "# HELP vq_jobs Jobs by status (from the job table)",
        "# TYPE vq_jobs gauge",
        *(f'vq_jobs{{status="{s}"}} {n}' for s, n in sorted(statuses.items())),
    ]
    return "\n".join(lines) + "\n"


def read_backlog(resources: FrontResources) -> str:
    """Ask the broker and the database for the backlog; '' when either is down."""
    from jobs.celery_app import Queues
    from jobs.queue_depth import queue_depths
    from persistence import jobs_repo
    from persistence.db import session_scope

    try:
        depths = queue_depths(resources.celery, Queues.of(resources.settings).all())
        with session_scope(resources.engine) as session:
            statuses = jobs_repo.count_by_status(session)
    except Exception:  # a down broker or database must not break /metrics
        logger.warning("backlog gauges unavailable for this scrape")
        return ""
    return backlog_exposition(depths, statuses)


class BacklogGauges:
    """The backlog gauges of one front worker, read at most once per ``ttl_s``."""

    def __init__(self, resources: FrontResources, ttl_s: float) -> None:
        self._exposition = CachedProbe(lambda: read_backlog(resources), ttl_s)

    def append_to(self, content: str) -> str:
        """Return BentoML's metrics ``content`` with the backlog gauges after it."""
        return content + self._exposition.get()
