"""Bento services: ``Classifier`` (the served models, batched) and ``VisionQueue`` (the front).

``bentoml serve service:VisionQueue`` starts both; the front calls the classifier over a Unix
socket per classifier worker into BentoML's batch queues (``visionqueue.bento.crop_socket``;
``VQ_CLASSIFIER_TRANSPORT=http``: BentoML's inter-service client), so sync requests and async
jobs (which call ``/predict``) share each model's adaptive-batching queue. With ``VQ_CLASSIFIER_URL`` set, the classifier runs
on its own (``bentoml serve service:Classifier``, another process or host): the front depends
on that URL, and workers crop images themselves and call it directly, not ``/predict``. ``VQ_MODELS`` names the served models: each gets
a batchable API of its own on the classifier (generated below from the settings), so a batch
never mixes models. This module only composes: logic lives in
``model_store`` (the model), ``visionqueue.api`` (HTTP: routes, middleware, health, backlog
gauges) and ``visionqueue.bento`` (BentoML patches and metrics).

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
import contextlib
import functools
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import anyio
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from bentoml.validators import DType
from starlette.responses import JSONResponse

from model_store.serving import check_memory, resolve_served, served_specs
from model_store.shared import fetch as fetch_shared
from model_store.wire import pack_crops, packed_api, unpack_crops
from persistence.model_bucket import build_model_bucket
from persistence.promotions_repo import DatabasePromotions
from visionqueue.api.app import attach_front, create_api_app
from visionqueue.api.backlog import BacklogGauges
from visionqueue.api.health import FrontHealth
from visionqueue.api.middleware import classifier_middleware, front_middleware
from visionqueue.api.predict import check_top_k, classify_images, classify_upload
from visionqueue.api.resources import build_front_resources
from visionqueue.api.served_models import Answer, ServedModels
from visionqueue.bento.crop_socket import (
    CropSocketClient,
    CropSocketError,
    CropSocketMissing,
    bentoml_batch_entry,
    serve_crops,
    socket_paths,
)
from visionqueue.bento.metrics import classifier_metrics, front_metrics, route_metrics
from visionqueue.bento.patches import NO_SESSION_RECYCLING, apply_bentoml_patches
from visionqueue.bento.remote import REFUSED_TOKEN, refused_token, send_token
from visionqueue.core.errors import Unavailable, VQError
from visionqueue.core.logging_setup import configure_logging
from visionqueue.core.settings import get_settings

logger = logging.getLogger("visionqueue.service")

_settings = get_settings()  # decoration-time values only (see the module docstring)
_model_cfg = _settings.model
_served = served_specs(_model_cfg.models, _model_cfg.model_name, _model_cfg.model_tag)
# a front whose classifier runs elsewhere (VQ_CLASSIFIER_URL) loads no model
_serves_classifier = not _model_cfg.classifier_url or any(
    arg.endswith(":Classifier") for arg in sys.argv
)
# promotions live in the database (every replica reads the same); versions come from the
# shared bucket when there is one (VQ_S3_MODELS_BUCKET). Neither does I/O until used.
_promotions = DatabasePromotions(_settings.database_url)
_fetch = functools.partial(fetch_shared, archives=build_model_bucket(_settings))
if _serves_classifier and "_bentoml_impl" not in sys.argv[0]:  # the serving process only
    # (it also fetches the served versions, once per host, before the workers start)
    check_memory(
        {name: m.path for name, m in resolve_served(_served, _promotions, _fetch).items()},
        _model_cfg.classifier_workers,
        _model_cfg.model_memory_limit_mb,
    )

api_app = create_api_app()
UInt8Crops = Annotated[np.ndarray, DType("uint8")]
Float32Rows = Annotated[np.ndarray, DType("float32")]
CLASSIFY_DEADLINE_S = 90.0


class _Classifier:
    """Every served model over uint8 crops; one adaptive-batching API per model."""

    # `bentoml build` packs the configured default version
    model_ref = bentoml.models.BentoModel(_served[0].tag)

    def __init__(self) -> None:
        from model_store.inference import configure_threads
        from model_store.serving import ModelSlot, PromotionWatcher

        configure_logging(_settings)
        apply_bentoml_patches(_model_cfg.batch_wait_policy)
        self.threads = configure_threads(_model_cfg.torch_threads)
        # a promoted version wins over VQ_MODELS for its name, also across restarts
        stored = resolve_served(_served, _promotions, _fetch)
        self.slots = {name: ModelSlot(name, self._load) for name in stored}
        for name, model in stored.items():
            self.slots[name].load(model.tag)
        self.metrics = classifier_metrics()
        self.watcher = PromotionWatcher(self.slots, _promotions, _model_cfg.promotion_poll_s)
        self.watcher.start()
        self.crop_server: asyncio.AbstractServer | None = None

    @bentoml.on_startup
    async def listen_for_crops(self) -> None:
        """Open this worker's crop socket (``VQ_CLASSIFIER_TRANSPORT=socket``) into the batch queues."""
        from bentoml._internal.context import server_context

        paths = socket_paths(Classifier.name, _model_cfg.classifier_workers)
        if _model_cfg.classifier_transport != "socket" or not paths:
            return  # HTTP only (also when served on its own: no front on this host)
        try:
            infer = bentoml_batch_entry(self)
        except RuntimeError as exc:  # the front falls back to HTTP when no socket exists
            logger.warning("crop socket not opened: %s; the front calls over HTTP", exc)
            return
        path = paths[(server_context.worker_index or 1) - 1]
        apis = frozenset(spec.api for spec in _served)
        self.crop_server = await serve_crops(path, apis, infer, route_metrics())

    def _load(self, tag: str) -> Any:
        """Load one stored version and warm it up (start-up and promotions)."""
        from model_store.inference import load_classifier
        from model_store.store import get_model

        _fetch(tag)  # a version promoted after this host started may be in the bucket only
        stored = get_model(tag)
        model = load_classifier(
            stored.path,
            tag=stored.tag,
            weights_origin=stored.weights_origin,
            labels=tuple(stored.metadata["labels"]),
            device=_model_cfg.device,
            backend=_model_cfg.inference_backend,
            warmup_batch=_model_cfg.batch_max_size,
            compile_cache_dir=_model_cfg.compile_cache_dir
            or str(_settings.data_dir.resolve() / "torch-compile"),
            metadata=stored.metadata,
        )
        info = model.info
        logger.info(
            "classifier loaded %s (%s, %d classes) weights=%s device=%s backend=%s threads=%d",
            info.tag,
            info.architecture,
            len(info.labels),
            info.weights_origin,
            info.device,
            info.backend,
            self.threads,
        )
        if info.demo:
            logger.warning(
                "SERVING A RANDOM-INIT DEMO MODEL (%s, %s): predictions are meaningless. "
                "Set VQ_WEIGHTS to imagenet1k_v1 (online) or a checkpoint path.",
                info.tag,
                info.weights_origin,
            )
        return model

    def run_batch(self, name: str, crops: np.ndarray) -> np.ndarray:
        """Classify one adaptive batch of ``name``'s crops.

        Returns ``(N, C + 2)`` float32: C softmax probabilities, the forward-pass seconds of
        the batch (the caller derives its queue wait from it), and the id of the tag that
        ran it (``model_store.serving.tag_id``).
        """
        out, elapsed = self.slots[name].run(crops)
        self.metrics.batch_seconds.observe(elapsed)
        self.metrics.batch_images.observe(len(out))
        self.metrics.images.inc(len(out))
        return out

    @bentoml.api
    def model_info(self, name: str = "") -> dict[str, Any]:
        """Describe a served model (default: the first): its version, and versions served."""
        slot = self.slots.get(name or _served[0].name)
        if slot is None:
            raise BentoMLException(f"no served model {name!r}")
        return slot.describe()


def _batch_api(name: str, api: str) -> Any:
    """Make ``name``'s batchable API: its own adaptive batching queue."""

    # the dtypes let a JSON caller's nested lists arrive as uint8 crops
    def classify(self: Any, crops: UInt8Crops) -> Float32Rows:
        return self.run_batch(name, crops)  # type: ignore[no-any-return]

    classify.__name__ = classify.__qualname__ = api
    classify.__doc__ = f"Classify ``(N, H, W, 3)`` uint8 crops with {name} (its own queue)."
    return _batchable(classify)


def _packed_batch_api(name: str, api: str) -> Any:
    """Make ``name``'s batchable API for callers over the network: packed crops (model_store.wire)."""

    def classify_packed(self: Any, crops: list[str]) -> Float32Rows:
        return self.run_batch(name, unpack_crops(crops))  # type: ignore[no-any-return]

    classify_packed.__name__ = classify_packed.__qualname__ = packed_api(api)
    classify_packed.__doc__ = f"Classify packed crops with {name} (its own queue)."
    return _batchable(classify_packed)


def _batchable(func: Any) -> Any:
    return bentoml.api(
        batchable=True,
        batch_dim=(0, 0),
        max_batch_size=_model_cfg.batch_max_size,
        max_latency_ms=_model_cfg.batch_max_latency_ms,
    )(func)


for _spec in _served:
    setattr(_Classifier, _spec.api, _batch_api(_spec.name, _spec.api))
    setattr(_Classifier, packed_api(_spec.api), _packed_batch_api(_spec.name, _spec.api))

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
    """The public API: ``/predict`` here, jobs and health in ``visionqueue.api``."""

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
        self._limiter = anyio.CapacityLimiter(self.settings.model.preprocess_threads)
        self.metrics = front_metrics()
        model = self.settings.model
        if model.classifier_token.get_secret_value():
            send_token(self.classifier, model.classifier_token.get_secret_value())
        # two calls outstanding per classifier process keep each one's next batch queued
        in_flight = model.calls_in_flight * model.classifier_workers
        # the served models: list, look up by name, classify (one queue and coalescer each)
        self.models = ServedModels(
            _served, self._call_api, self._describe, model.batch_max_size, in_flight
        )
        self._crop_socket = _crop_socket_client()
        resources = build_front_resources(self.settings)
        cache_s = self.settings.server.health_cache_s
        self.backlog = BacklogGauges(resources, cache_s)
        health = FrontHealth(self.models, resources, cache_s)
        attach_front(api_app, resources, health, front=self, models=self.models)

    @bentoml.on_deployment
    def refuse_weak_secrets() -> None:  # type: ignore[misc]
        """Refuse to start, as the worker does, with placeholder or missing production secrets."""
        try:
            get_settings().check_secrets()
        except ValueError as exc:
            raise SystemExit(f"visionqueue: refusing to start: {exc}") from None

    async def _describe(self, name: str) -> dict[str, Any]:
        return dict(await self.classifier.to_async.model_info(name=name))

    async def _call_api(self, api: str, crops: np.ndarray) -> np.ndarray:
        """One call into a model's batched API: ``(N, C + 2)`` rows (timing, tag id last)."""
        try:
            # a classifier that died after loading must not hold the caller for BentoML's
            # 120 s traffic timeout and then answer outside our error envelope
            with anyio.fail_after(CLASSIFY_DEADLINE_S):
                if self._crop_socket is not None:
                    with contextlib.suppress(CropSocketMissing):  # the classifier has none
                        return await self._crop_socket.call(api, crops)
                if _model_cfg.classifier_url:  # over the network: JSON, crops packed
                    call = getattr(self.classifier.to_async, packed_api(api))
                    return np.asarray(await call(pack_crops(crops)))
                return np.asarray(await getattr(self.classifier.to_async, api)(crops))
        except (BentoMLException, TimeoutError, aiohttp.ClientError, CropSocketError) as exc:
            if refused_token(exc):
                raise Unavailable(REFUSED_TOKEN, retry_after=1) from exc
            raise Unavailable(
                "the classifier is overloaded or unavailable; retry shortly", retry_after=1
            ) from exc

    def _observe(self, round_trip: float, answer: Answer) -> None:
        self.metrics.queue_wait.observe(max(0.0, round_trip - answer.forward_s))

    async def model_info(self, model: str | None = None) -> dict[str, Any]:
        """Describe ``model``'s current version (the default model); 503 while it loads."""
        return await self.models.info(model)

    async def classify_images(
        self, images: list[bytes] | list[np.ndarray], model: str | None = None
    ) -> tuple[np.ndarray, list[str], dict[str, Any]]:
        """Classify encoded images (or decoded pixels) together on ``model``, as ``/predict``
        does one; return ``(N, classes)`` probabilities, how each was preprocessed, and the
        version that answered."""
        sent = time.perf_counter()
        probs, how, version, forward_s = await self._classify_images(images, model)
        round_trip = time.perf_counter() - sent
        for seconds in forward_s:
            self.metrics.queue_wait.observe(max(0.0, round_trip - float(seconds)))
        return probs, how, version

    async def _classify_images(
        self, images: list[bytes] | list[np.ndarray], model: str | None
    ) -> tuple[np.ndarray, list[str], dict[str, Any], np.ndarray]:
        return await classify_images(
            images,
            served=self.models,
            model=model,
            max_pixels=self.settings.server.max_image_pixels,
            limiter=self._limiter,
            jpeg_draft=self.settings.model.jpeg_draft,
        )

    async def classify_upload(
        self, data: bytes | Path, top_k: int, model: str | None = None
    ) -> dict[str, Any]:
        """Classify one upload exactly as ``POST /predict`` does; return its response body."""
        return await classify_upload(
            data,
            check_top_k(top_k),
            served=self.models,
            model=model or None,
            on_answer=self._observe,
            max_pixels=self.settings.server.max_image_pixels,
            limiter=self._limiter,
            jpeg_draft=self.settings.model.jpeg_draft,
        )

    def __metrics__(self, content: str) -> str:
        """Append the broker backlog and jobs-by-status gauges to BentoML's metrics."""
        return self.backlog.append_to(content)

    @bentoml.api(route="/predict")
    async def predict(self, image: Path, top_k: int = 5, model: str = "") -> Any:
        """Classify one image (multipart field ``image``) with ``model`` (default: the first
        served); return the top ``top_k`` classes and the exact model version that answered."""
        try:
            return await self.classify_upload(Path(image), top_k, model)
        except VQError as exc:
            return JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers())


def _crop_socket_client() -> CropSocketClient | None:
    """The front's client of the classifier's crop sockets, or None to call over HTTP."""
    if _model_cfg.classifier_url or _model_cfg.classifier_transport != "socket":
        return None
    paths = socket_paths(Classifier.name, _model_cfg.classifier_workers)
    return CropSocketClient(paths) if paths else None


for _middleware, _options in front_middleware(_settings.server, api_app):
    VisionQueue.add_asgi_middleware(_middleware, **_options)  # type: ignore[attr-defined]
