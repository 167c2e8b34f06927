"""The Grafana dashboard as data: its queries, and the metric names they select."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "visionqueue.json"

# Metric families the processes export (names as prometheus_client exposes them).
COUNTERS = (
    "bentoml_service_request_total",
    "vq_images_classified_total",
    "image_task_success_total",
    "image_task_failure_total",
    "webhook_success_total",
    "webhook_failure_total",
    "vq_class_images_classified_total",
    "vq_class_forward_passes_total",
    "vq_class_deadline_expired_total",
    "vq_worker_classifier_calls_total",
)
GAUGES = (
    "bentoml_service_request_in_progress",
    "celery_queue_depth",
    "vq_jobs",
)
# (BentoML's bentoml_service_adaptive_batch_size is exported too, but counts dispatcher calls
# per batch: 1 per priority pass, so no panel shows it; images per pass are vq_class_*.)
HISTOGRAMS = (
    "bentoml_service_request_duration_seconds",
    "vq_inference_batch_seconds",
    "vq_inference_batch_images",
    "vq_batch_queue_wait_seconds",
    "image_task_latency_seconds",
    "webhook_latency_seconds",
    "job_batch_size",
    "vq_class_queue_wait_seconds",
)
# Series Prometheus itself attaches to every scrape.
SYNTHETIC = ("up",)
KNOWN_METRIC_NAMES = frozenset(
    [*COUNTERS, *GAUGES, *SYNTHETIC]
    + [f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")]
)

_PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "atan2",
    }
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """Return the metric names a PromQL expression selects (functions and labels dropped)."""
    text = _STRINGS.sub('""', expr)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.groups()
        if call or name.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def all_targets(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in all_panels(dashboard):
        yield from panel.get("targets", [])
