"""Bento services: ``Classifier`` (batched ResNet18) and ``VisionQueue`` (the public front).

``bentoml serve service:VisionQueue`` starts both; the front calls the classifier through
BentoML's inter-service client, so sync requests and async jobs (which call ``/predict``)
share one adaptive-batching queue. Logic lives in ``model_store`` and ``visionqueue``.
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

from model_store.weights import is_demo
from visionqueue.api.app import create_api_app
from visionqueue.api.coalesce import CropCoalescer
from visionqueue.api.envelope import FrontMiddleware
from visionqueue.api.health import front_health
from visionqueue.api.predict import check_top_k, classify_upload
from visionqueue.bentoml_patches import apply as apply_bentoml_patches
from visionqueue.core.errors import ModelNotReady, Unavailable, VQError
from visionqueue.core.logging_setup import configure_logging
from visionqueue.core.settings import get_settings
from visionqueue.service_metrics import backlog_exposition, classifier_metrics, front_metrics

logger = logging.getLogger("visionqueue.service")
apply_bentoml_patches()

# Reading settings here only reads the environment: BentoML needs these values at
# decoration time. Models, threads and clients are built in __init__ (worker start-up).
_settings = get_settings()
_model_cfg = _settings.model

api_app = create_api_app()
CLASSIFY_DEADLINE_S = 90.0

# BentoML 1.4.40 recycles the inter-service aiohttp session every 100 requests / 300 s
# and closes it under in-flight requests (ServerDisconnectedError -> HTTP 500 at
# concurrency >= 8). The upstream ``runner_connection`` setting turns recycling off;
# tests/integration/test_predict_concurrency.py fails without it.
_NO_SESSION_RECYCLING = {"max_requests": 2**62, "max_age": 1e12}


@bentoml.service(
    name="classifier",
    workers=_model_cfg.classifier_workers,
    threads=1,
    traffic={"timeout": 120},
    runner_connection=_NO_SESSION_RECYCLING,
    # its only callers are our own services; the front logs the public request
    logging={"access": {"enabled": False}},
)
class Classifier:
    """ResNet18 over uint8 crops, batched adaptively across all callers."""

    model_ref = bentoml.models.BentoModel(_model_cfg.model_tag or f"{_model_cfg.model_name}:latest")

    def __init__(self) -> None:
        from model_store.batching import apply_policy
        from model_store.inference import configure_threads, load_classifier

        apply_policy(_model_cfg.batch_wait_policy)

        configure_logging(_settings)
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

    def __metrics__(self, content: str) -> str:
        """Append the broker backlog and jobs-by-status gauges to BentoML's metrics."""
        from jobs.queue_depth import queue_depths
        from persistence import jobs_repo
        from persistence.db import session_scope

        resources = getattr(api_app.state, "resources", None)
        if resources is None:
            return content
        try:
            depths = queue_depths(resources.celery)
            with session_scope(resources.engine) as session:
                statuses = jobs_repo.count_by_status(session)
        except Exception:  # a down broker or database must not break /metrics
            logger.warning("backlog gauges unavailable for this scrape")
            return content
        return content + backlog_exposition(depths, statuses)

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """Report readiness: the model that answers, and every backend jobs need."""
        from visionqueue.api.resources import check_backends

        checks: dict[str, str] = {}
        body: dict[str, Any] = {}
        try:
            info = await self.model_info()
            checks["model"] = "ok"
            body["model"] = {k: info[k] for k in ("tag", "weights", "device", "backend")}
            if is_demo(info["weights"]):
                body["warning"] = "serving a random-init demo model: predictions are meaningless"
        except VQError as exc:
            checks["model"] = exc.message
        resources = getattr(api_app.state, "resources", None)
        if resources is None:
            checks["backends"] = "starting"
        else:
            checks.update(await anyio.to_thread.run_sync(check_backends, resources))
        ready = all(v == "ok" for v in checks.values())
        reasons = {k: v for k, v in checks.items() if v != "ok"}
        body = {"status": "ready" if ready else "not_ready", "ready": ready, **body}
        body["checks"] = checks
        if reasons:
            body["reason"] = "; ".join(f"{k}: {v}" for k, v in reasons.items())
        return (200 if ready else 503), body

    @bentoml.api(route="/predict")
    async def predict(self, image: Path, top_k: int = 5) -> Any:
        """Classify one image (multipart field ``image``); return the top ``top_k`` classes."""
        try:
            k = check_top_k(top_k)
            return await classify_upload(
                Path(image),
                k,
                classify=self.classify_crop,
                model_info=await self.model_info(),
                max_pixels=self.settings.server.max_image_pixels,
                limiter=self._limiter,
                jpeg_draft=self.settings.model.jpeg_draft,
            )
        except VQError as exc:
            return JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers())


VisionQueue.add_asgi_middleware(  # type: ignore[attr-defined]
    FrontMiddleware,
    max_body_bytes=_settings.server.max_upload_bytes,
    health=front_health,
    api_keys=[key.get_secret_value() for key in _settings.server.api_keys],
)
