"""Per-process resources of a worker: engine, image store, HTTP client, leases (never across fork)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import httpx

from jobs.lease_keeper import LeaseKeeper
from persistence.backends import Backends, open_backends
from visionqueue.core.settings import Settings, get_settings

_lock = threading.Lock()
_by_pid: dict[int, Resources] = {}


@dataclass
class Resources(Backends):
    http: httpx.Client
    leases: LeaseKeeper


def build_resources(settings: Settings) -> Resources:
    """Create the resources of one process (no I/O beyond pool set-up)."""
    limits = httpx.Limits(max_connections=settings.worker.concurrency * 2)
    engine, store = open_backends(settings)
    return Resources(
        settings=settings,
        engine=engine,
        store=store,
        http=httpx.Client(timeout=httpx.Timeout(120, connect=5), limits=limits),
        leases=LeaseKeeper(engine, settings.worker.lease_s),
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
