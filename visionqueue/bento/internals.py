"""Every BentoML internal VisionQueue touches, imported here and nowhere else.

BentoML's public API covers the rest (``bentoml.Tag``, ``bentoml.server_context``,
``bentoml.depends``, ``bentoml.api``); what follows has no public equivalent in 1.4.40. Each
accessor imports on call, so importing this module loads nothing of BentoML's. The patches
that replace some of these (``visionqueue.bento.patches``) and the reasons are in
docs/bentoml-patches.md; an upgrade starts by reading this list.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np


def in_bentoml_worker() -> bool:
    """Whether this process is one of BentoML's server workers (not the process that starts
    the server, nor an import by ``bentoml build``)."""
    import sys

    return "_bentoml_impl" in sys.argv[0]


def io_mixin() -> Any:
    """``_bentoml_sdk.io_models.IOMixin`` (patch ``io-mime-type-cache``)."""
    from _bentoml_sdk.io_models import IOMixin

    return IOMixin


def timeout_middleware() -> Any:
    """BentoML's per-request ``traffic.timeout`` middleware (patch ``request-timer-cancel``)."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    return TimeoutMiddleware


def cork_dispatcher() -> Any:
    """The adaptive batching dispatcher (patch ``greedy-batching``)."""
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    return CorkDispatcher


def dispatcher_job() -> Any:
    """The dispatcher's queued ``Job`` (its fields are checked before patching)."""
    from bentoml._internal.marshal.dispatcher import Job

    return Job


def bentoml_container() -> Any:
    """BentoML's configuration container (its metrics namespace and duration buckets)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer


def multipart_serde() -> Any:
    """BentoML's multipart form deserialiser (patch ``no-url-uploads``)."""
    from _bentoml_impl.serde import MultipartSerde

    return MultipartSerde


def traffic_metrics_middleware() -> Any:
    """BentoML's per-request metrics middleware (patch ``route-template-labels``)."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    return RunnerTrafficMetricsMiddleware


def batch_entry(instance: Any) -> Callable[[str, np.ndarray], Awaitable[np.ndarray]]:
    """Return BentoML's own batching entry for ``instance``'s APIs (the route's dispatcher).

    BentoML keeps it on the ``ServiceAppFactory`` that created the service instance, which it
    does not expose; that factory is the one object holding the instance as
    ``_service_instance``. Raises ``RuntimeError`` when BentoML's internals changed.
    """
    from _bentoml_impl.server.app import ServiceAppFactory

    holders = gc.get_referrers(instance)
    # an attribute is held by the object itself or, once materialised, by its __dict__
    holders += [
        owner for held in holders if isinstance(held, dict) for owner in gc.get_referrers(held)
    ]
    factories = [
        holder
        for holder in holders
        if isinstance(holder, ServiceAppFactory)
        and getattr(holder, "_service_instance", None) is instance
    ]
    if not factories:
        raise RuntimeError("no ServiceAppFactory holds this service instance")
    factory = factories[0]
    if not callable(getattr(factory, "batch_infer", None)):
        raise RuntimeError("ServiceAppFactory lacks batch_infer")

    async def infer(api: str, crops: np.ndarray) -> np.ndarray:
        return np.asarray(await factory.batch_infer(api, (crops,), {}))

    return infer
