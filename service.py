"""Bento services: ``Classifier`` (the served models, batched) and ``VisionQueue`` (the front).

``bentoml serve service:VisionQueue`` starts both; the front calls the classifier over a Unix
socket per classifier worker into BentoML's batch queues (``VQ_CLASSIFIER_TRANSPORT=http``:
BentoML's inter-service client), so sync requests and async jobs (which call ``/predict``)
share each model's adaptive-batching queue. With ``VQ_CLASSIFIER_URL`` set, the classifier runs
on its own (``bentoml serve service:Classifier``, another process or host): the front depends
on that URL, and workers crop images themselves and call it directly, not ``/predict``.
``VQ_MODELS`` names the served models: each gets a batchable API of its own on the classifier,
so a batch never mixes models.

This module only composes. The classifier path is ``visionqueue.dataplane`` (docs/dataplane.md):
the classifier worker's ``ModelHost``, the generated per-model batch APIs, the front's
``DataPlane`` that ``/predict`` and every protocol route use. HTTP is ``visionqueue.api``,
BentoML's side ``visionqueue.bento``.

At import this module does three things, the first two because BentoML takes their values
when the classes are decorated: it reads the settings (the environment only: workers, port,
host, batch size and deadline, served models, middleware options), builds the (empty)
FastAPI app it mounts, and, in the process that starts the server, refuses served models that
would not fit in memory (file sizes only: a classifier worker that cannot load would just be
restarted forever). Models, engines, clients, threads and BentoML patches are built or applied in the
services' ``__init__``, which BentoML runs in each worker process.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from model_store.serving import check_memory, resolve_served
from visionqueue.api.app import attach_front, create_api_app
from visionqueue.api.backlog import BacklogGauges
from visionqueue.api.health import FrontHealth
from visionqueue.api.middleware import classifier_middleware, front_middleware
from visionqueue.api.predict import predict_upload
from visionqueue.api.resources import build_front_resources
from visionqueue.bento.internals import batch_entry, in_bentoml_worker
from visionqueue.bento.metrics import (
    class_metrics,
    classifier_metrics,
    front_metrics,
    route_metrics,
)
from visionqueue.bento.patches import NO_SESSION_RECYCLING, apply_bentoml_patches
from visionqueue.core.logging_setup import configure_logging
from visionqueue.core.settings import get_settings
from visionqueue.dataplane.classifier_apis import add_batch_apis
from visionqueue.dataplane.crop_socket import serve_crops, socket_paths
from visionqueue.dataplane.front import build_dataplane
from visionqueue.dataplane.model_host import ModelHost, model_sources
from visionqueue.dataplane.priority import Priority
from visionqueue.dataplane.registry import configured_specs

logger = logging.getLogger("visionqueue.service")

_settings = get_settings()  # decoration-time values only (see the module docstring)
_model_cfg = _settings.model
_served = configured_specs(_model_cfg)
# a front whose classifier runs elsewhere (VQ_CLASSIFIER_URL) loads no model
_serves_classifier = not _model_cfg.classifier_url or any(
    arg.endswith(":Classifier") for arg in sys.argv
)
# promotions live in the database (every replica reads the same); versions come from the
# shared bucket when there is one (VQ_S3_MODELS_BUCKET)
_promotions, _fetch = model_sources(_settings)
if _serves_classifier and not in_bentoml_worker():  # the process that starts the server
    # (it also fetches the served versions, once per host, before the workers start)
    check_memory(
        {name: m.path for name, m in resolve_served(_served, _promotions, _fetch).items()},
        _model_cfg.classifier_workers,
        _model_cfg.model_memory_limit_mb,
    )

api_app = create_api_app()


class _Classifier:
    """Every served model over uint8 crops; one adaptive-batching API per model."""

    # `bentoml build` packs the configured default version
    model_ref = bentoml.models.BentoModel(_served[0].tag)

    def __init__(self) -> None:
        configure_logging(_settings)
        apply_bentoml_patches(_model_cfg.batch_wait_policy)
        labels = tuple(priority.label for priority in Priority)
        self.host = ModelHost(
            _settings,
            _served,
            classifier_metrics(),
            class_metrics(labels),
            promotions=_promotions,
            fetch=_fetch,
        )
        self.crop_server: asyncio.AbstractServer | None = None

    @bentoml.on_startup
    async def listen_for_crops(self) -> None:
        """Hand the priority queue BentoML's batch dispatcher; open this worker's crop socket
        (``VQ_CLASSIFIER_TRANSPORT=socket``) into that queue."""
        try:
            self.host.dispatch = batch_entry(self)
        except RuntimeError as exc:  # the queue runs the model in a thread of its own
            logger.warning("BentoML's batch dispatcher not found (%s): the model runs alone", exc)
        paths = socket_paths(Classifier.name, _model_cfg.classifier_workers)
        if _model_cfg.classifier_transport != "socket" or not paths:
            return  # HTTP only (also when served on its own: no front on this host)
        path = paths[(bentoml.server_context.worker_index or 1) - 1]
        apis = frozenset(spec.api for spec in _served)
        self.crop_server = await serve_crops(path, apis, self.host.prioritized, route_metrics())

    def run_batch(self, name: str, crops: np.ndarray) -> np.ndarray:
        """Classify one adaptive batch of ``name``'s crops: ``(N, C + 2)`` wire rows."""
        return self.host.run_batch(name, crops)

    @bentoml.api
    def model_info(self, name: str = "") -> dict[str, Any]:
        """Describe a served model (default: the first): its version, and versions served."""
        return self.host.describe(name)


add_batch_apis(_Classifier, _served, _model_cfg.batch_max_size, _model_cfg.batch_max_latency_ms)
Classifier = bentoml.service(
    name="classifier",
    workers=_model_cfg.classifier_workers,
    threads=1,
    traffic={"timeout": 120},
    runner_connection=NO_SESSION_RECYCLING,  # bentoml/BentoML#5540: see visionqueue.bento
    # its only callers are our own services; the front logs the public request
    logging={"access": {"enabled": False}},
)(_Classifier)
# VQ_CLASSIFIER_TOKEN: its routes answer only to callers that send it (the front, the workers)
for _middleware, _options in classifier_middleware(_model_cfg):
    Classifier.add_asgi_middleware(_middleware, **_options)  # type: ignore[attr-defined]


@bentoml.service(
    name="visionqueue",
    workers=_settings.server.front_workers,
    traffic={"timeout": 120},
    http={"port": _settings.server.port, "host": _settings.server.host},
)
@bentoml.asgi_app(api_app, path="/")
class VisionQueue:
    """The public API: ``/predict`` here, jobs, protocols and health in ``visionqueue.api``."""

    # VQ_CLASSIFIER_URL: a classifier served on its own (`bentoml serve service:Classifier`)
    classifier = (
        bentoml.depends(url=_model_cfg.classifier_url, on=Classifier)
        if _model_cfg.classifier_url
        else bentoml.depends(Classifier)
    )

    def __init__(self) -> None:
        self.settings = get_settings()
        configure_logging(self.settings)
        apply_bentoml_patches(self.settings.model.batch_wait_policy)
        self.metrics = front_metrics()
        # the served models, their transport and the crop-for-the-version loop
        self.dataplane = build_dataplane(
            self.settings, self.classifier, Classifier.name, self.metrics.queue_wait
        )
        resources = build_front_resources(self.settings)
        cache_s = self.settings.server.health_cache_s
        self.backlog = BacklogGauges(resources, cache_s)
        health = FrontHealth(self.dataplane.models, resources, cache_s)
        attach_front(api_app, resources, health, self.dataplane)

    @bentoml.on_deployment
    def refuse_weak_secrets() -> None:  # type: ignore[misc]
        """Refuse to start, as the worker does, with placeholder or missing production secrets."""
        try:
            get_settings().check_secrets()
        except ValueError as exc:
            raise SystemExit(f"visionqueue: refusing to start: {exc}") from None

    def __metrics__(self, content: str) -> str:
        """Append the broker backlog, jobs-by-status and outcome totals to BentoML's metrics."""
        return self.backlog.append_to(content)

    @bentoml.api(route="/predict")
    async def predict(
        self, image: Path, ctx: bentoml.Context, top_k: int = 5, model: str = ""
    ) -> Any:
        """Classify one image (multipart field ``image``) with ``model`` (default: the first
        served); return the top ``top_k`` classes and the exact model version that answered."""
        return await predict_upload(self.dataplane, Path(image), ctx, top_k, model)


for _middleware, _options in front_middleware(_settings.server, api_app):
    VisionQueue.add_asgi_middleware(_middleware, **_options)  # type: ignore[attr-defined]
