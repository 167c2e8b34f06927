"""Worker-side Prometheus metrics (the seed's names), served on ``VQ_WORKER_METRICS_PORT``.

Built on first use, not at import: importing ``jobs`` registers nothing in a process
(the front's) that never runs a task.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from persistence.outcome_counts import LATENCY_BUCKETS, WEBHOOK_BUCKETS

# Failure series that exist from start-up at 0, so Prometheus' increase() counts the first one.
COMMON_JOB_FAILURES = ("invalid_image", "image_missing", "classifier_unavailable")
COMMON_WEBHOOK_ERRORS = ("timeout", "connect_error", "http_500", "forbidden_address")
CLASSIFIER_ROUTES = ("crop_socket", "front", "classifier_url")


@dataclass(frozen=True)
class WorkerMetrics:
    job_success: Counter
    job_failure: Counter
    job_latency: Histogram
    webhook_success: Counter
    webhook_failure: Counter
    webhook_exhausted: Counter
    webhook_latency: Histogram
    job_batch_size: Histogram
    classifier_calls: Counter


@functools.cache
def worker_metrics() -> WorkerMetrics:
    """Return this process's worker metrics, registering them on the first call."""
    return WorkerMetrics(
        job_success=Counter("image_task_success", "Jobs completed"),
        job_failure=Counter("image_task_failure", "Jobs failed", ["code"]),
        job_latency=Histogram(
            "image_task_latency_seconds",
            "Job latency from submission to stored result",
            buckets=LATENCY_BUCKETS,
        ),
        webhook_success=Counter("webhook_success", "Webhook deliveries answered with 2xx"),
        webhook_failure=Counter(
            "webhook_failure", "Webhook delivery attempts that failed", ["error"]
        ),
        webhook_exhausted=Counter(
            "webhook_exhausted",
            "Webhook events given up on (retries or delivery deadline spent, 410)",
        ),
        webhook_latency=Histogram(
            "webhook_latency_seconds",
            "Duration of one webhook delivery attempt",
            buckets=WEBHOOK_BUCKETS,
        ),
        job_batch_size=Histogram(
            "job_batch_size",
            "Jobs a worker process claimed, classified and stored together (VQ_WORKER_BATCH_SIZE)",
            buckets=(1, 2, 4, 8, 16, 32, 64),
        ),
        classifier_calls=Counter(
            "vq_worker_classifier_calls",
            "Calls that classified a worker's crops, by the way they went to the classifier "
            "(crop_socket, front, classifier_url: jobs.classify_crops)",
            ["via"],
        ),
    )


def prime_failure_series() -> None:
    """Create the common failure label sets at zero (call once at worker start)."""
    metrics = worker_metrics()
    for code in COMMON_JOB_FAILURES:
        metrics.job_failure.labels(code=code)
    for error in COMMON_WEBHOOK_ERRORS:
        metrics.webhook_failure.labels(error=error)
    for via in CLASSIFIER_ROUTES:
        metrics.classifier_calls.labels(via=via)
