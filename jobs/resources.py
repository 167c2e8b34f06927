"""Per-process resources of a worker: engine, image store, HTTP client, leases and the
classifier's client: at ``VQ_CLASSIFIER_URL``, or the crop sockets of the classifier the
front started on this host (never across fork)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx

from jobs.classifier_client import ClassifierClient, HttpWire
from jobs.lease_keeper import LeaseKeeper
from persistence.backends import Backends, open_backends
from visionqueue.core.settings import Settings, get_settings
from visionqueue.dataplane.registry import configured_specs

_lock = threading.Lock()
_by_pid: dict[int, Resources] = {}


@dataclass
class Resources(Backends):
    http: httpx.Client
    leases: LeaseKeeper
    classifier: ClassifierClient | None = None  # VQ_CLASSIFIER_URL's: set at start-up
    # on the embedded default: the crop sockets of the front's classifier when this process
    # can open them, None to post to the front's crops route; asked once (jobs.classify_crops)
    local: ClassifierClient | None = None
    local_checked: bool = False
    # on the embedded default: each model name (None: the default) -> served name and the
    # preprocessing its current version crops with, as the front last said (jobs.classify_crops)
    front_models: dict[str | None, tuple[str, dict[str, Any]]] = field(default_factory=dict)


def build_resources(settings: Settings) -> Resources:
    """Create the resources of one process (no I/O beyond pool set-up)."""
    limits = httpx.Limits(max_connections=settings.worker.concurrency * 2)
    engine, store = open_backends(settings)
    http = httpx.Client(timeout=httpx.Timeout(120, connect=5), limits=limits)
    model = settings.model
    classifier = None
    if model.classifier_url:
        specs = configured_specs(model)
        token = model.classifier_token.get_secret_value()
        wire = HttpWire(model.classifier_url, http, token=token)
        classifier = ClassifierClient(wire, specs, model.batch_max_size)
    return Resources(
        settings=settings,
        engine=engine,
        store=store,
        http=http,
        leases=LeaseKeeper(engine, settings.worker.lease_s),
        classifier=classifier,
    )


def get_resources() -> Resources:
    """Return this process' resources, building them on first use."""
    pid = os.getpid()
    res = _by_pid.get(pid)
    if res is None:
        with _lock:
            res = _by_pid.get(pid)
            if res is None:
                res = _by_pid[pid] = build_resources(get_settings())
    return res
