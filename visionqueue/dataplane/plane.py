"""``DataPlane``: what every route that classifies receives, whatever protocol it speaks.

Shaped after KServe's model server: one object per front worker with ``live``, ``ready``,
``metadata`` and the classify calls; ``/predict``, the v2 and TorchServe adapters and the web
page translate their bodies to a ``ClassifyRequest`` and render a ``Classified``. Under it: the
registry (``ServedModels``: names, versions) and its transport (``transports``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from model_store.answers import answer_body
from model_store.crops import prepare_crop, prepare_pixels
from model_store.preprocess import Preprocessing
from visionqueue.dataplane.crop_retry import CropForVersion
from visionqueue.dataplane.priority import SYNC_PRIORITY, Priority
from visionqueue.dataplane.registry import ServedModels
from visionqueue.dataplane.requests import Classified, ClassifyRequest, Image, Timing, Version

# (seconds from sending to answer, each row's forward seconds): the front's queue-wait metric
RoundTrip = Callable[[float, np.ndarray], None]


def tag_version(tag: str) -> str:
    """The version part of a model tag ``name:version``."""
    return tag.partition(":")[2]


@dataclass(frozen=True)
class ResolvedModel:
    """A served model as a protocol names it: served name, current version, its description."""

    name: str
    version: str
    info: Version

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.info["labels"])


@dataclass(frozen=True)
class CropLimits:
    """How uploads are decoded and cropped (``VQ_MAX_IMAGE_PIXELS``, ``VQ_JPEG_DRAFT``)."""

    max_pixels: int
    jpeg_draft: bool = False


class DataPlane:
    """Classify images on a served model, and say what is served; one per front worker."""

    def __init__(
        self,
        models: ServedModels,
        limits: CropLimits,
        limiter: anyio.CapacityLimiter,
        on_round_trip: RoundTrip | None = None,
        deadline_ms: int = 0,
        crop_sockets: tuple[Path, ...] = (),
    ) -> None:
        self.models = models
        # the classifier's crop sockets, which a worker on this host may call itself
        # (``jobs.classify_crops``); empty when the front calls its classifier over HTTP
        self.crop_sockets = crop_sockets
        self._deadline_s = deadline_ms / 1000 if deadline_ms else None  # VQ_PREDICT_DEADLINE_MS
        self._limits = limits
        self._limiter = limiter  # VQ_PREPROCESS_THREADS: decodes (and their memory) at once
        # a person's decode never queues behind the job images our workers send to /predict:
        # interactive requests have VQ_PREPROCESS_THREADS of their own
        self._interactive_limiter = anyio.CapacityLimiter(limiter.total_tokens)
        self._on_round_trip = on_round_trip

    async def live(self) -> bool:
        return True

    async def ready(self, model: str | None = None) -> Version:
        """Describe ``model``'s current version (the default model); 503 while it loads."""
        return await self.models.info(model)

    async def metadata(
        self, name: str, version: str | None = None, fresh: bool = True
    ) -> ResolvedModel:
        """Return the served model called ``name`` (at ``version``, if given); 404 otherwise.

        ``fresh=False`` answers from the last description the classifier gave (no call into it
        per request); ``ServedModels.lookup`` says when it asks again.
        """
        info = await self.models.lookup(name, version, fresh)
        # the name clients use is the served name, whatever the stored model behind it is called
        return ResolvedModel(self.models.get(name).name, tag_version(info["tag"]), info)

    async def classify(self, request: ClassifyRequest) -> Classified:
        """Crop ``request``'s images for the model's running version and classify them together.

        One bad image fails the whole request, as one bad ``/predict`` upload does.
        """
        sent = time.perf_counter()
        request = self._bounded(request)
        classified = await self._classify(request, observe=False)
        if self._on_round_trip is not None:
            self._on_round_trip(time.perf_counter() - sent, classified.forward_s)
        return classified

    async def classify_upload(
        self,
        data: bytes | Path,
        top_k: int,
        model: str | None = None,
        priority: Priority = SYNC_PRIORITY,
        deadline: float | None = None,
        timing: Timing | None = None,
    ) -> dict[str, Any]:
        """Classify one upload exactly as ``POST /predict`` does; return its response body
        (and fill ``timing`` in, when given)."""
        started = time.perf_counter()
        request = self._bounded(ClassifyRequest([data], model or None, priority, deadline))
        classified = await self._classify(request, observe=True)
        if timing is not None:
            timing.record(classified)
        return answer_body(
            classified.probs[0],
            top_k,
            name=classified.model,
            version=classified.version,
            started=started,
            preprocessing=classified.preprocessing[0],
            work_class=priority.label,
        )

    def _bounded(self, request: ClassifyRequest) -> ClassifyRequest:
        """An interactive request gets ``VQ_PREDICT_DEADLINE_MS`` from now, or its own
        deadline when that is sooner; job work has none (a job is retried, never dropped)."""
        if request.priority is not Priority.INTERACTIVE or self._deadline_s is None:
            return request
        ours = time.monotonic() + self._deadline_s
        deadline = ours if request.deadline is None else min(ours, request.deadline)
        return dataclasses.replace(request, deadline=deadline)

    async def _classify(self, request: ClassifyRequest, observe: bool) -> Classified:
        name = self.models.get(request.model).name
        attempts = CropForVersion(await self.models.preprocessing(name))
        for prep in attempts:
            # the first bad image answers the request; the others' threads finish on their own
            limiter = (
                self._interactive_limiter
                if request.priority is Priority.INTERACTIVE
                else self._limiter
            )
            cropping = time.perf_counter()
            crops = await asyncio.gather(
                *(self._crop(image, prep, limiter) for image in request.images)
            )
            sent = time.perf_counter()
            answer, version = await self.models.classify_many(
                name, np.stack([c for c, _ in crops]), request.priority, request.deadline
            )
            round_trip = time.perf_counter() - sent
            if observe and self._on_round_trip is not None:
                self._on_round_trip(round_trip, answer.forward_s)
            attempts.ran(version)
        return Classified(
            name,
            answer.probs,
            version,
            [how for _, how in crops],
            answer.forward_s,
            decode_s=sent - cropping,
            classify_s=round_trip,
        )

    async def _crop(
        self, image: Image, prep: Preprocessing, limiter: anyio.CapacityLimiter
    ) -> tuple[np.ndarray, str]:
        limits = self._limits
        if isinstance(image, np.ndarray):
            return await anyio.to_thread.run_sync(
                prepare_pixels, image, limits.max_pixels, prep, limiter=limiter
            )
        return await anyio.to_thread.run_sync(
            prepare_crop, image, limits.max_pixels, limits.jpeg_draft, prep, limiter=limiter
        )
