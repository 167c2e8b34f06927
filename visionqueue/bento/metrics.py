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


class ClassMetrics:
    """Per class of work (``work_class`` label): queue wait, images, passes, deadlines missed.

    Batch share is ``rate(vq_class_forward_passes_total)`` of a class over all classes'.
    """

    def __init__(self, work_classes: tuple[str, ...]) -> None:
        from prometheus_client import Counter, Histogram

        label = ("work_class",)
        self._wait = Histogram(
            "vq_class_queue_wait_seconds",
            "Time a call waited in the classifier's priority queue for its forward pass",
            label,
            buckets=WAIT_BUCKETS,
        )
        self._images = Counter(
            "vq_class_images_classified", "Images classified, by class of work", label
        )
        self._passes = Counter("vq_class_forward_passes", "Forward passes, by class of work", label)
        self._expired = Counter(
            "vq_class_deadline_expired",
            "Calls answered 504 at their deadline, their forward pass never run",
            label,
        )
        for work_class in work_classes:  # every series exists from the start, at zero
            self._wait.labels(work_class)
            self._images.labels(work_class)
            self._passes.labels(work_class)
            self._expired.labels(work_class)

    def waited(self, work_class: Any, seconds: float) -> None:
        self._wait.labels(work_class.label).observe(seconds)

    def ran(self, work_class: Any, images: int) -> None:
        self._images.labels(work_class.label).inc(images)
        self._passes.labels(work_class.label).inc()

    def expired(self, work_class: Any) -> None:
        self._expired.labels(work_class.label).inc()


@functools.cache
def class_metrics(work_classes: tuple[str, ...]) -> ClassMetrics:
    return ClassMetrics(work_classes)


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


CROP_SOCKET_RUNNER = ":crop-socket"  # runner_name suffix of the crop socket's calls


@dataclass(frozen=True)
class RouteMetrics:
    """BentoML's per-endpoint request metrics, for calls that bypass its HTTP route."""

    total: Any
    duration: Any
    in_progress: Any

    def started(self, api: str) -> None:
        """Count one call of ``api`` in progress."""
        self.in_progress.labels(**_route_labels(api)).inc()

    def finished(self, api: str, status: int, seconds: float) -> None:
        """Count one finished call of ``api`` as BentoML's route would have."""
        labels = _route_labels(api)
        self.in_progress.labels(**labels).dec()
        self.total.labels(**labels, http_response_code=status).inc()
        self.duration.labels(**labels, http_response_code=status).observe(seconds)


def _route_labels(api: str) -> dict[str, Any]:
    from bentoml import server_context

    return {
        "endpoint": f"/{api}",
        "service_name": server_context.bento_name,
        "service_version": server_context.bento_version,
        "runner_name": f"{server_context.service_name}{CROP_SOCKET_RUNNER}",
    }


@functools.cache
def route_metrics() -> RouteMetrics:
    """Return BentoML's ``request_total``, ``request_duration_seconds`` and ``request_in_progress``.

    The crop socket's calls never pass BentoML's ``RunnerTrafficMetricsMiddleware``, which
    counts a service's HTTP requests; the dashboards read those series per endpoint (summed
    over ``runner_name``). Built here with BentoML's names, labels and buckets, unregistered
    (BentoML's registry already holds the names; in multiprocess mode every process's files
    are read at scrape time). Their ``runner_name`` ends in ``CROP_SOCKET_RUNNER``: each
    metric object caches its samples' values in multiprocess mode, so a sample written by
    both BentoML's middleware and these would lose counts.
    """
    from prometheus_client import Counter, Gauge, Histogram

    from visionqueue.bento.internals import bentoml_container

    container = bentoml_container()
    namespace = container.api_server_config.metrics.namespace.get()
    labels = ["endpoint", "service_name", "service_version", "http_response_code", "runner_name"]
    return RouteMetrics(
        total=Counter(
            "request_total",
            "Total number of runner RPC",
            labels,
            namespace=namespace,
            registry=None,
        ),
        duration=Histogram(
            "request_duration_seconds",
            "runner RPC duration in seconds",
            labels,
            namespace=namespace,
            buckets=container.duration_buckets.get(),
            registry=None,
        ),
        in_progress=Gauge(
            "request_in_progress",
            "Total number of runner RPC in progress now",
            [name for name in labels if name != "http_response_code"],
            namespace=namespace,
            multiprocess_mode="livesum",
            registry=None,
        ),
    )
