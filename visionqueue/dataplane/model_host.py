"""The classifier worker's side of the data plane: hold each served model's running version,
run a batch on it, describe it.

The ``Classifier`` service (``service.py``) builds one ``ModelHost`` per worker process: it
loads the promoted version of each served name (else its ``VQ_MODELS`` tag), warms it up, and
a ``PromotionWatcher`` swaps in newly promoted versions between two batches.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from bentoml.exceptions import BentoMLException

from model_store.promotions import PromotionRecord
from model_store.serving import ModelSlot, PromotionWatcher, ServedSpec, resolve_served
from visionqueue.core.settings import Settings
from visionqueue.dataplane import rows
from visionqueue.dataplane.cpu_priority import background_executor
from visionqueue.dataplane.lane_process import LaneProcess
from visionqueue.dataplane.priority import Priority
from visionqueue.dataplane.priority_queue import PriorityBatchQueue, QueueMetrics
from visionqueue.dataplane.turns import PassTurns

Dispatch = Callable[[str, np.ndarray], Awaitable[np.ndarray]]

logger = logging.getLogger("visionqueue.service")


def model_sources(settings: Settings) -> tuple[PromotionRecord, Callable[[str], object]]:
    """Return the promotion record every replica reads (the database) and the fetch of a
    version only the shared model bucket holds (``VQ_S3_MODELS_BUCKET``; none: no-op).

    Neither does I/O until used: ``service.py`` builds them at import.
    """
    from model_store.shared import fetch
    from persistence.model_bucket import build_model_bucket
    from persistence.promotions_repo import DatabasePromotions

    archives = build_model_bucket(settings)
    return DatabasePromotions(settings.database_url), functools.partial(fetch, archives=archives)


class ModelHost:
    """Every served model of one classifier worker: slots, promotions, batch metrics."""

    def __init__(
        self,
        settings: Settings,
        specs: list[ServedSpec],
        metrics: Any,
        class_metrics: QueueMetrics | None = None,
        promotions: PromotionRecord | None = None,
        fetch: Callable[[str], object] | None = None,
    ) -> None:
        from model_store.inference import configure_threads
        from model_store.promotions import record_path

        self._settings = settings
        # the promotion record every replica reads (the database; a host's file by default)
        # and how a version only the shared model bucket holds is brought here
        record = promotions if promotions is not None else record_path()
        self._fetch = fetch or (lambda tag: None)
        self._default = specs[0].name
        self.metrics = metrics
        self.threads = configure_threads(settings.model.torch_threads)
        model, most = settings.model, settings.model.batch_max_size
        nice = model.background_nice
        idle = model.background_policy == "idle"
        # job and bulk passes run in a process (and scheduling group) of their own, where lanes
        # run (docs/priority.md); the lanes' threads here normalise, send and wait
        self.lane_process = (
            LaneProcess(self.threads, nice, idle) if nice and model.background_process else None
        )
        # a promoted version wins over VQ_MODELS for its name, also across restarts
        stored = resolve_served(specs, record, self._fetch)
        self.slots = {name: ModelSlot(name, self._load) for name in stored}
        for name, version in stored.items():
            self.slots[name].load(version.tag)
        self.watcher = PromotionWatcher(self.slots, record, settings.model.promotion_poll_s)
        self.watcher.start()
        self._api_models = {spec.api: spec.name for spec in specs}
        # interactive > jobs > bulk, across every served model; no class's pass exceeds
        # BentoML's dispatcher's largest batch. Job and bulk passes run side by side in
        # ``threads`` lanes of lowered CPU priority (docs/priority.md), VQ_BACKGROUND_NICE=0:
        # one forward pass at a time
        self._turns = PassTurns()
        self._lanes = background_executor(self.threads, nice, "vq-lane", idle) if nice else None
        self.queue = PriorityBatchQueue(
            self._forward,
            {
                Priority.INTERACTIVE: most,
                Priority.JOBS: min(most, model.batch_max_size_jobs),
                Priority.BULK: min(most, model.batch_max_size_bulk),
            },
            model.priority_share_every,
            class_metrics,
            background=self._background_forward if nice else None,
            lanes=self.threads if nice else 0,
        )
        self.dispatch: Dispatch | None = None  # BentoML's batch_infer, found at start-up

    async def prioritized(
        self, api: str, crops: np.ndarray, priority: int, timeout_s: float | None
    ) -> np.ndarray:
        """Run ``crops`` on ``api`` through the priority queue (the crop socket's entry)."""
        return await self.queue.submit(api, crops, Priority(priority), timeout_s)

    async def _forward(self, api: str, crops: np.ndarray, first: bool = True) -> np.ndarray:
        """A pass on the serial path (interactive passes, and any without lanes)."""
        async with self._turns.turn(first):
            if self.dispatch is not None:  # one batch at a time: it never merges or reorders
                return await self.dispatch(api, crops)
            return await asyncio.to_thread(self.run_batch, self._api_models[api], crops)

    async def _background_forward(self, api: str, crops: np.ndarray) -> np.ndarray:
        """A job or bulk pass: in a lane on the model's single-threaded session if it has
        one, else on the serial path after any waiting interactive pass."""
        name = self._api_models[api]
        if self._lanes is None or not self.slots[name].has_lanes:
            return await self._forward(api, crops, first=False)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._lanes, self.run_batch, name, crops, True)

    def run_batch(self, name: str, crops: np.ndarray, background: bool = False) -> np.ndarray:
        """Classify one adaptive batch of ``name``'s crops; return its wire rows (``rows.pack``)."""
        probs, elapsed, tag = self.slots[name].run(crops, background)
        self.metrics.batch_seconds.observe(elapsed)
        self.metrics.batch_images.observe(len(probs))
        self.metrics.images.inc(len(probs))
        return rows.pack(probs, elapsed, tag)

    def describe(self, name: str = "") -> dict[str, Any]:
        """Describe a served model (default: the first): its version, and versions served."""
        slot = self.slots.get(name or self._default)
        if slot is None:
            raise BentoMLException(f"no served model {name!r}")
        return slot.describe()

    def _load(self, tag: str) -> Any:
        """Load one stored version and warm it up (start-up and promotions)."""
        from model_store.inference import load_classifier
        from model_store.store import get_model

        model_cfg = self._settings.model
        self._fetch(tag)  # a version promoted after this host started may be in the bucket only
        stored = get_model(tag)
        model = load_classifier(
            stored.path,
            tag=stored.tag,
            weights_origin=stored.weights_origin,
            labels=tuple(stored.metadata["labels"]),
            device=model_cfg.device,
            backend=model_cfg.backend_by_model.get(stored.name, model_cfg.inference_backend),
            warmup_batch=model_cfg.batch_max_size,
            compile_cache_dir=model_cfg.compile_cache_dir
            or str(self._settings.data_dir.resolve() / "torch-compile"),
            metadata=stored.metadata,
            background_session=bool(model_cfg.background_nice),
            background_runner=self.lane_process.runner if self.lane_process else None,
        )
        info = model.info
        logger.info(
            "classifier loaded %s (%s, %d classes) weights=%s device=%s backend=%s (%s) "
            "threads=%d background lanes=%s",
            info.tag,
            info.architecture,
            len(info.labels),
            info.weights_origin,
            info.device,
            info.backend,
            info.provider,
            self.threads,
            self.threads if getattr(model, "background", None) is not None else "none",
        )
        if info.demo:
            logger.warning(
                "SERVING A RANDOM-INIT DEMO MODEL (%s, %s): predictions are meaningless. "
                "Set VQ_WEIGHTS to imagenet1k_v1 (online) or a checkpoint path.",
                info.tag,
                info.weights_origin,
            )
        return model
