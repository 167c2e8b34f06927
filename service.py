"""Bento services: ``Classifier`` (batched ResNet18) and ``VisionQueue`` (the public front).

``bentoml serve service:VisionQueue`` starts both; the front calls the classifier through
BentoML's inter-service client, so sync requests and async jobs (which call ``/predict``)
share one adaptive-batching queue. This module only composes: logic lives in
``model_store`` (the model), ``visionqueue.api`` (HTTP: routes, middleware, health, backlog
gauges) and ``visionqueue.bento`` (BentoML patches and metrics).

At import this module does two things, both because BentoML takes their values when the
classes are decorated: it reads the settings (the environment only: workers, port, host,
batch size and deadline, model tag, middleware options) and builds the (empty) FastAPI app
it mounts. Models, engines, clients, threads and BentoML patches are built or applied in the
services' ``__init__``, which BentoML runs in each worker process.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import anyio
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from starlette.responses import JSONResponse

from visionqueue.api.app import attach_front, create_api_app
from visionqueue.api.backlog import BacklogGauges
from visionqueue.api.coalesce import CropCoalescer
from visionqueue.api.health import FrontHealth
from visionqueue.api.middleware import front_middleware
from visionqueue.api.predict import check_top_k, classify_images, classify_upload
from visionqueue.api.resources import build_front_resources
from visionqueue.bento.metrics import classifier_metrics, front_metrics
from visionqueue.bento.patches import NO_SESSION_RECYCLING, apply_bentoml_patches
from visionqueue.core.errors import ModelNotReady, Unavailable, VQError
from visionqueue.core.logging_setup import configure_logging
from visionqueue.core.settings import get_settings

logger = logging.getLogger("visionqueue.service")

_settings = get_settings()  # decoration-time values only (see the module docstring)
_model_cfg = _settings.model

api_app = create_api_app()
CLASSIFY_DEADLINE_S = 90.0


@bentoml.service(
    name="classifier",
    workers=_model_cfg.classifier_workers,
    threads=1,
    traffic={"timeout": 120},
    runner_connection=NO_SESSION_RECYCLING,  # bentoml/BentoML#5540: see visionqueue.bento
    # its only callers are our own services; the front logs the public request
    logging={"access": {"enabled": False}},
)
class Classifier:
    """ResNet18 over uint8 crops, batched adaptively across all callers."""

    model_ref = bentoml.models.BentoModel(_model_cfg.model_tag or f"{_model_cfg.model_name}:latest")

    def __init__(self) -> None:
        from model_store.inference import configure_threads, load_classifier

        configure_logging(_settings)
        apply_bentoml_patches(_model_cfg.batch_wait_policy)
        threads = configure_threads(_model_cfg.torch_threads)
        stored = self.model_ref
        meta = stored.info.metadata
        self.model = load_classifier(
            stored.path,
            tag=str(stored.tag),
            weights_origin=str(meta.get("weights_origin", "unknown")),
            labels=tuple(meta["labels"]),
            device=_model_cfg.device,
            backend=_model_cfg.inference_backend,
            warmup_batch=_model_cfg.batch_max_size,
            compile_cache_dir=_model_cfg.compile_cache_dir
            or str(_settings.data_dir.resolve() / "torch-compile"),
        )
        self.metrics = classifier_metrics()
        info = self.model.info
        logger.info(
            "classifier ready: %s weights=%s device=%s backend=%s threads=%d",
            info.tag,
            info.weights_origin,
            info.device,
            info.backend,
            threads,
        )
        if info.demo:
            logger.warning(
                "SERVING A RANDOM-INIT DEMO MODEL (%s): predictions are meaningless. "
                "Set VQ_WEIGHTS to imagenet1k_v1 (online) or a checkpoint path.",
                info.weights_origin,
            )

    @bentoml.api(
        batchable=True,
        batch_dim=(0, 0),
        max_batch_size=_model_cfg.batch_max_size,
        max_latency_ms=_model_cfg.batch_max_latency_ms,
    )
    def classify(self, crops: np.ndarray) -> np.ndarray:
        """Classify ``(N, 224, 224, 3)`` uint8 crops.

        Returns ``(N, 1001)`` float32: 1000 softmax probabilities, then the forward-pass
        seconds of the batch the row was in (the caller derives its queue wait from it).
        """
        started = time.perf_counter()
        probs = self.model.predict_proba(crops)
        elapsed = time.perf_counter() - started
        self.metrics.batch_seconds.observe(elapsed)
        self.metrics.batch_images.observe(len(probs))
        self.metrics.images.inc(len(probs))
        timing = np.full((len(probs), 1), elapsed, dtype=np.float32)
        return np.concatenate([probs, timing], axis=1)

    @bentoml.api
    def model_info(self) -> dict[str, Any]:
        """Describe the served model: tag, weights origin, device, backend, labels."""
        info = self.model.info
        return {
            "tag": info.tag,
            "weights": info.weights_origin,
            "device": info.device,
            "backend": info.backend,
            "labels": list(info.labels),
        }


@bentoml.service(
    name="visionqueue",
    workers=_settings.server.front_workers,
    traffic={"timeout": 120},
    http={"port": _settings.server.port, "host": _settings.server.host},
)
@bentoml.asgi_app(api_app, path="/")
class VisionQueue:
    """The public API: ``/predict`` here, jobs and health in ``visionqueue.api``."""

    classifier = bentoml.depends(Classifier)

    def __init__(self) -> None:
        self.settings = get_settings()
        configure_logging(self.settings)
        apply_bentoml_patches(self.settings.model.batch_wait_policy)
        self._model_info: dict[str, Any] | None = None
        self._limiter = anyio.CapacityLimiter(self.settings.model.preprocess_threads)
        self.metrics = front_metrics()
        model = self.settings.model
        # two calls outstanding per classifier process keep each one's next batch queued
        in_flight = model.calls_in_flight * model.classifier_workers
        self._coalescer = (
            CropCoalescer(self._classify_batch, model.batch_max_size, in_flight)
            if in_flight
            else None
        )
        resources = build_front_resources(self.settings)
        cache_s = self.settings.server.health_cache_s
        self.backlog = BacklogGauges(resources, cache_s)
        health = FrontHealth(self.model_info, resources, cache_s)
        attach_front(api_app, resources, health, front=self)

    @bentoml.on_deployment
    def refuse_weak_secrets() -> None:  # type: ignore[misc]
        """Refuse to start, as the worker does, with placeholder or missing production secrets."""
        try:
            get_settings().check_secrets()
        except ValueError as exc:
            raise SystemExit(f"visionqueue: refusing to start: {exc}") from None

    async def model_info(self) -> dict[str, Any]:
        """Return (and cache) the classifier's model description; 503 while it loads."""
        if self._model_info is None:
            try:
                # the arbiter holds the classifier's socket even while no worker serves it:
                # without a deadline a probe would wait out the 120 s traffic timeout
                with anyio.fail_after(5):
                    self._model_info = await self.classifier.to_async.model_info()
            except Exception as exc:
                raise ModelNotReady("the classifier is not ready yet", retry_after=2) from exc
        return self._model_info

    async def _classify_batch(self, crops: np.ndarray) -> np.ndarray:
        """One call into the batched service: ``(N, 1001)`` rows, the last column timing."""
        try:
            # a classifier that died after loading must not hold the caller for BentoML's
            # 120 s traffic timeout and then answer outside our error envelope
            with anyio.fail_after(CLASSIFY_DEADLINE_S):
                return np.asarray(await self.classifier.to_async.classify(crops))
        except (BentoMLException, TimeoutError) as exc:
            raise Unavailable(
                "the classifier is overloaded or unavailable; retry shortly", retry_after=1
            ) from exc

    async def classify_crop(self, crop: np.ndarray) -> np.ndarray:
        """Classify one crop through the batched service; return its probabilities."""
        sent = time.perf_counter()
        if self._coalescer is not None:
            out = await self._coalescer.classify(crop)
        else:
            out = await self._classify_batch(crop[np.newaxis])
        round_trip = time.perf_counter() - sent
        self.metrics.queue_wait.observe(max(0.0, round_trip - float(out[0, -1])))
        return out[0, :-1]

    async def classify_crops(self, crops: np.ndarray) -> np.ndarray:
        """Classify one request's ``(N, 224, 224, 3)`` crops together; return their probabilities."""
        sent = time.perf_counter()
        if self._coalescer is not None:
            out = await self._coalescer.classify_many(crops)
        else:
            size = self.settings.model.batch_max_size
            chunks = [crops[i : i + size] for i in range(0, len(crops), size)]
            out = np.concatenate([await self._classify_batch(chunk) for chunk in chunks])
        round_trip = time.perf_counter() - sent
        for forward_s in out[:, -1]:
            self.metrics.queue_wait.observe(max(0.0, round_trip - float(forward_s)))
        return out[:, :-1]

    async def classify_images(self, images: list[bytes] | list[np.ndarray]) -> Any:
        """Classify encoded images (or decoded pixels) in one batch, as ``/predict`` does one."""
        return await classify_images(
            images,
            classify_many=self.classify_crops,
            max_pixels=self.settings.server.max_image_pixels,
            limiter=self._limiter,
            jpeg_draft=self.settings.model.jpeg_draft,
        )

    async def classify_upload(self, data: bytes | Path, top_k: int) -> dict[str, Any]:
        """Classify one upload exactly as ``POST /predict`` does; return its response body."""
        return await classify_upload(
            data,
            check_top_k(top_k),
            classify=self.classify_crop,
            model_info=await self.model_info(),
            max_pixels=self.settings.server.max_image_pixels,
            limiter=self._limiter,
            jpeg_draft=self.settings.model.jpeg_draft,
        )

    def __metrics__(self, content: str) -> str:
        """Append the broker backlog and jobs-by-status gauges to BentoML's metrics."""
        return self.backlog.append_to(content)

    @bentoml.api(route="/predict")
    async def predict(self, image: Path, top_k: int = 5) -> Any:
        """Classify one image (multipart field ``image``); return the top ``top_k`` classes."""
        try:
            return await self.classify_upload(Path(image), top_k)
        except VQError as exc:
            return JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers())


for _middleware, _options in front_middleware(_settings.server, api_app):
    VisionQueue.add_asgi_middleware(_middleware, **_options)  # type: ignore[attr-defined]
