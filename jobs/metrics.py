"""Worker-side Prometheus metrics (the seed's names), served on ``VQ_WORKER_METRICS_PORT``."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from persistence.outcome_counts import LATENCY_BUCKETS

IMAGE_TASK_SUCCESS = Counter("image_task_success", "Jobs completed")
IMAGE_TASK_FAILURE = Counter("image_task_failure", "Jobs failed", ["code"])
IMAGE_TASK_LATENCY = Histogram(
    "image_task_latency_seconds",
    "Job latency from submission to stored result",
    buckets=LATENCY_BUCKETS,
)
WEBHOOK_SUCCESS = Counter("webhook_success", "Webhook deliveries answered with 2xx")
WEBHOOK_FAILURE = Counter("webhook_failure", "Webhook delivery attempts that failed", ["error"])
WEBHOOK_EXHAUSTED = Counter(
    "webhook_exhausted", "Webhook events given up on (retries or delivery deadline spent, 410)"
)
WEBHOOK_LATENCY = Histogram(
    "webhook_latency_seconds",
    "Duration of one webhook delivery attempt",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# Failure series that exist from start-up at 0, so Prometheus' increase() counts the first one.
COMMON_JOB_FAILURES = ("invalid_image", "image_missing", "classifier_unavailable")
COMMON_WEBHOOK_ERRORS = ("timeout", "connect_error", "http_500", "forbidden_address")


def prime_failure_series() -> None:
    """Create the common failure label sets at zero (call once at worker start)."""
    for code in COMMON_JOB_FAILURES:
        IMAGE_TASK_FAILURE.labels(code=code)
    for error in COMMON_WEBHOOK_ERRORS:
        WEBHOOK_FAILURE.labels(error=error)
