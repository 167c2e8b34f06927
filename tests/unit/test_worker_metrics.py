"""Worker metrics: common failure series exist at zero before the first failure."""

from __future__ import annotations

from prometheus_client import REGISTRY

from jobs.metrics import COMMON_JOB_FAILURES, COMMON_WEBHOOK_ERRORS, prime_failure_series


def test_failure_series_are_primed_at_zero() -> None:
    prime_failure_series()
    for code in COMMON_JOB_FAILURES:
        assert REGISTRY.get_sample_value("image_task_failure_total", {"code": code}) is not None
    for error in COMMON_WEBHOOK_ERRORS:
        assert REGISTRY.get_sample_value("webhook_failure_total", {"error": error}) is not None
