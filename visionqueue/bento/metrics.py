"""Prometheus metrics of the Bento services, created in the worker process.

BentoML sets ``PROMETHEUS_MULTIPROC_DIR`` when a worker starts, after ``service.py`` is
imported, and prometheus_client picks its storage mode on import; so these metrics are
built (and prometheus_client imported) lazily from the services' ``__init__``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


@dataclass(frozen=True)
class ClassifierMetrics:
    batch_seconds: Any
    batch_images: Any
    images: Any


@dataclass(frozen=True)
class FrontMetrics:
    queue_wait: Any


@functools.cache
def classifier_metrics() -> ClassifierMetrics:
    from prometheus_client import Counter, Histogram

    return ClassifierMetrics(
        batch_seconds=Histogram(
            "vq_inference_batch_seconds",
            "Forward pass time of one adaptive batch",
            buckets=BATCH_BUCKETS,
        ),
        # BentoML's adaptive_batch_size counts calls per batch; the front merges many
        # images into one call, so this is the size that matters for the model
        batch_images=Histogram(
            "vq_inference_batch_images", "Images in one forward pass", buckets=SIZE_BUCKETS
        ),
        images=Counter("vq_images_classified", "Images classified by the model"),
    )


@functools.cache
def front_metrics() -> FrontMetrics:
    from prometheus_client import Histogram

    return FrontMetrics(
        queue_wait=Histogram(
            "vq_batch_queue_wait_seconds",
            "Time a request waited for its batch (round trip minus the batch's forward pass)",
            buckets=WAIT_BUCKETS,
        )
    )
