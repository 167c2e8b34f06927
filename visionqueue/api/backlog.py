"""What the front appends to ``/metrics`` from the backends: backlog gauges and job totals.

- ``celery_queue_depth`` (the broker) and ``vq_jobs{status}`` (the job table);
- ``image_task_success_total``, ``image_task_failure_total{code}`` and
  ``image_task_latency_seconds``: the original VisionQueue's names, as running totals the
  database keeps with every job that finishes (``persistence.outcome_counts``). They are
  global: right with any number of workers and hosts, and every front replica reports the
  same values (aggregate them with ``max``, not ``sum``; ``prometheus.yml`` keeps the
  workers' per-process series instead).
- ``webhook_success_total``, ``webhook_failure_total{error}`` and ``webhook_latency_seconds``:
  the seed's webhook names, counted the same way from the delivery logs (every attempt of a
  job's or a batch's event, as each worker counts its own).

All are read at most once per ``VQ_HEALTH_CACHE_S`` per front worker whatever the scrape rate.
"""

from __future__ import annotations

import logging

from persistence.outcome_counts import INF, LATENCY_BUCKETS, WEBHOOK_BUCKETS, OutcomeTotals
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


def outcome_exposition(totals: OutcomeTotals) -> str:
    """Render the job totals under the original VisionQueue's metric names."""
    lines = [
        "# HELP image_task_success_total Jobs completed (all workers, from the database)",
        "# TYPE image_task_success_total counter",
        f"image_task_success_total {totals.success}",
        "# HELP image_task_failure_total Jobs failed, by error code (all workers, from the database)",
        "# TYPE image_task_failure_total counter",
        *(
            f'image_task_failure_total{{code="{code}"}} {n}'
            for code, n in sorted(totals.failures.items())
        ),
        "# HELP image_task_latency_seconds Job latency from submission to stored result "
        "(all workers, from the database)",
        "# TYPE image_task_latency_seconds histogram",
        *_histogram(
            "image_task_latency_seconds",
            LATENCY_BUCKETS,
            totals.latency_buckets,
            totals.latency_sum,
        ),
        "# HELP webhook_success_total Webhook deliveries answered with 2xx "
        "(all workers, from the delivery log)",
        "# TYPE webhook_success_total counter",
        f"webhook_success_total {totals.webhook_success}",
        "# HELP webhook_failure_total Webhook delivery attempts that failed, by error "
        "(all workers, from the delivery log)",
        "# TYPE webhook_failure_total counter",
        *(
            f'webhook_failure_total{{error="{error}"}} {n}'
            for error, n in sorted(totals.webhook_failures.items())
        ),
        "# HELP webhook_latency_seconds Duration of one webhook delivery attempt "
        "(all workers, from the delivery log)",
        "# TYPE webhook_latency_seconds histogram",
        *_histogram(
            "webhook_latency_seconds",
            WEBHOOK_BUCKETS,
            totals.webhook_latency_buckets,
            totals.webhook_latency_sum,
        ),
    ]
    return "\n".join(lines) + "\n"


def _histogram(
    name: str, bounds: tuple[float, ...], per_bucket: dict[str, float], total: float
) -> list[str]:
    """A histogram's cumulative ``_bucket`` lines, ``_count`` and ``_sum``."""
    lines = []
    cumulative = 0.0
    for bound in [str(float(b)) for b in bounds] + [INF]:
        cumulative += per_bucket.get(bound, 0.0)
        lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
    return [*lines, f"{name}_count {cumulative}", f"{name}_sum {total}"]


def read_backlog(resources: FrontResources) -> str:
    """Ask the broker and the database for the backlog; '' when either is down."""
    from jobs.celery_app import Queues
    from jobs.queue_depth import queue_depths
    from persistence import jobs_repo, outcome_counts
    from persistence.db import session_scope

    try:
        depths = queue_depths(resources.celery, Queues.of(resources.settings).all())
        with session_scope(resources.engine) as session:
            statuses = jobs_repo.count_by_status(session)
            totals = outcome_counts.read(session)
    except Exception:  # a down broker or database must not break /metrics
        logger.warning("backlog gauges unavailable for this scrape")
        return ""
    return backlog_exposition(depths, statuses) + outcome_exposition(totals)


class BacklogGauges:
    """The backlog gauges of one front worker, read at most once per ``ttl_s``."""

    def __init__(self, resources: FrontResources, ttl_s: float) -> None:
        self._exposition = CachedProbe(lambda: read_backlog(resources), ttl_s)

    def append_to(self, content: str) -> str:
        """Return BentoML's metrics ``content`` with the backlog gauges after it."""
        return content + self._exposition.get()
