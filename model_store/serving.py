"""The classifier side of serving several models: which ones, their slots, promotions, memory.

``VQ_MODELS`` names the served models (the first is the default). Each gets its own
batchable API on the classifier service (``api_name``), hence its own adaptive batching
queue: a batch never mixes models. A ``ModelSlot`` holds the version a worker runs for a
name; a ``PromotionWatcher`` thread loads a promoted version and swaps it in (load, warm
up, then one reference assignment between two batches).

A batch's answer names the tag that computed it; on the wire (``visionqueue.dataplane.rows``)
each row carries that tag's id (``tag_id``), so every answer can name its exact version.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model_store.weights import WeightsError

if TYPE_CHECKING:
    from model_store.promotions import PromotionRecord

logger = logging.getLogger(__name__)

DEFAULT_API = "classify"
MIB = 1024 * 1024
# a loaded model holds its weights about twice at peak (file read + module, or export +
# ONNX Runtime session), plus the runtime's per-model workspace
LOAD_FACTOR = 2.0
WORKSPACE_BYTES = 96 * MIB


@dataclass(frozen=True)
class ServedSpec:
    """One ``VQ_MODELS`` entry: a name and the tag to start with (``NAME:latest`` if none)."""

    name: str
    tag: str
    api: str


def api_name(name: str, index: int) -> str:
    """Return the classifier API that serves ``name`` (the default keeps ``classify``)."""
    return DEFAULT_API if index == 0 else "classify_" + re.sub(r"[^a-z0-9]", "_", name)


def served_specs(models: list[str], model_name: str, model_tag: str) -> list[ServedSpec]:
    """Parse ``VQ_MODELS`` (or the single-model settings when it is empty)."""
    from bentoml import Tag

    entries = models or [model_tag or f"{model_name}:latest"]
    specs: list[ServedSpec] = []
    for index, entry in enumerate(entries):
        try:
            tag = Tag.from_taglike(entry)
        except ValueError as exc:
            raise ValueError(f"VQ_MODELS entry {entry!r} is not NAME or NAME:TAG: {exc}") from None
        name = tag.name
        spec = ServedSpec(name, f"{name}:{tag.version or 'latest'}", api_name(name, index))
        clash = [s for s in specs if s.name == name or s.api == spec.api]
        if clash:
            raise ValueError(f"VQ_MODELS serves {name!r} twice (or as {clash[0].name!r})")
        specs.append(spec)
    return specs


def tag_id(tag: str) -> int:
    """A 24-bit id of a tag: exact in a float32 output column."""
    return zlib.crc32(tag.encode()) & 0xFFFFFF


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def weights_bytes(path: str) -> int:
    """Bytes of a stored version's files (its weights)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def estimate_bytes(path: str) -> int:
    """Memory one worker needs to load and run the stored version at ``path``."""
    return int(weights_bytes(path) * LOAD_FACTOR) + WORKSPACE_BYTES


def check_memory(paths: dict[str, str], workers: int, limit_mb: int) -> dict[str, int]:
    """Refuse (ValueError naming the models) a set of models that would not fit in memory.

    ``paths`` maps each served name to its stored version's folder. Returns the estimates.
    """
    import psutil

    estimates = {name: estimate_bytes(path) for name, path in paths.items()}
    need = sum(estimates.values()) * workers
    limit = limit_mb * MIB if limit_mb else int(psutil.virtual_memory().available)
    if need > limit:
        parts = ", ".join(f"{n} ~{b / MIB:.0f} MiB" for n, b in estimates.items())
        source = "VQ_MODEL_MEMORY_LIMIT_MB" if limit_mb else "memory available now"
        raise ValueError(
            f"the served models would not fit in memory: {parts}, x {workers} classifier "
            f"worker(s) = ~{need / MIB:.0f} MiB, over the {limit / MIB:.0f} MiB limit ({source}); "
            "serve fewer or smaller models (VQ_MODELS) or fewer classifier workers"
        )
    return estimates


def resolve_served(
    specs: list[ServedSpec],
    record: PromotionRecord | Path,
    fetch: Callable[[str], object] = lambda tag: None,
) -> dict[str, Any]:
    """Return name -> ``StoredModel`` to serve: the promoted version, else the spec's tag.

    ``fetch(tag)`` first brings a version missing here from the shared bucket, if any.
    """
    from model_store.promotions import promoted_tags
    from model_store.store import get_model

    promoted = promoted_tags(record)
    tags = {s.name: promoted.get(s.name, s.tag) for s in specs}
    for tag in tags.values():
        fetch(tag)
    return {name: get_model(tag) for name, tag in tags.items()}


def describe(classifier: Any, memory: dict[str, int]) -> dict[str, Any]:
    """Describe a loaded version (what ``/v1/models`` and every answer show)."""
    info = classifier.info
    return {
        "tag": info.tag,
        "id": tag_id(info.tag),
        "weights": info.weights_origin,
        "device": info.device,
        "backend": info.backend,
        "execution_provider": info.provider,
        "architecture": info.architecture,
        "classes": len(info.labels),
        "labels": list(info.labels),
        "preprocessing": info.preprocessing.to_spec(),
        "memory": memory,
        **({"quantization": info.quantization} if info.quantization else {}),
    }


class ModelSlot:
    """The version a classifier worker runs for one model name; swapped on promotion."""

    def __init__(self, name: str, load: Callable[[str], Any]) -> None:
        self.name = name
        self._load = load
        self._lock = threading.Lock()  # one load at a time
        self.current: Any = None
        self.versions: dict[int, dict[str, Any]] = {}

    @property
    def tag(self) -> str:
        return str(self.current.info.tag) if self.current is not None else ""

    def load(self, tag: str) -> dict[str, Any]:
        """Load ``tag``, warm it up, then swap it in; the running version serves meanwhile."""
        with self._lock:
            before = rss_bytes()
            model = self._load(tag)
            grew = max(0, rss_bytes() - before)
            if self.current is not None:
                old, new = self.current.info.preprocessing.crop, model.info.preprocessing.crop
                if old != new:
                    raise WeightsError(
                        f"{tag} takes {new}x{new} crops but {self.tag} takes {old}x{old}: "
                        "a live switch keeps the input size; restart to change it"
                    )
            memory = {
                # the model's tensors (or ONNX initializers) held in memory
                "resident_bytes": int(model.weights_bytes),
                # what the worker's RSS grew by while loading and warming it up (the first
                # model also pays the runtime's one-time initialisation)
                "load_rss_growth_bytes": grew,
            }
            described = describe(model, memory)
            self.versions[described["id"]] = described
            previous = self.tag
            self.current = model  # one assignment: the next batch runs on the new version
        if previous:
            logger.info("model %s switched from %s to %s", self.name, previous, model.info.tag)
        return described

    def run(self, crops: np.ndarray, background: bool = False) -> tuple[np.ndarray, float, str]:
        """Classify a batch on the current version: ``(N, C)`` probabilities, the seconds
        taken, and the tag that ran (``visionqueue.dataplane.rows`` packs them for the wire).
        ``background``: on the version's background session (``BatchClassifier``)."""
        model = self.current  # read once: the whole batch runs on one version
        started = time.perf_counter()
        probs = (
            model.predict_proba(crops, background=True)
            if background
            else model.predict_proba(crops)
        )
        return probs, time.perf_counter() - started, str(model.info.tag)

    @property
    def has_lanes(self) -> bool:
        """Whether the current version runs background passes on a session of their own."""
        return getattr(self.current, "background", None) is not None

    def describe(self) -> dict[str, Any]:
        """The current version, and every version this worker has served (by id)."""
        current = self.versions[tag_id(self.tag)]
        return {"name": self.name, **current, "versions": self.versions}


class PromotionWatcher(threading.Thread):
    """Poll the promotion record; load and swap in every newly promoted version."""

    def __init__(
        self, slots: dict[str, ModelSlot], record: PromotionRecord | Path, poll_s: float
    ) -> None:
        from model_store.promotions import as_record

        super().__init__(name="vq-promotion-watcher", daemon=True)
        self._slots = slots
        self._record = as_record(record)
        self._poll_s = poll_s
        self._seen: object = None
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def check_once(self) -> None:
        from model_store.promotions import promoted_tags

        try:
            stamp = self._record.stamp()
            if stamp is None or stamp == self._seen:
                return
            promoted = promoted_tags(self._record)
        except Exception:  # the database may blink: keep serving, look again next time
            logger.warning("could not read the promotion record; retrying", exc_info=True)
            return
        self._seen = stamp
        for name, tag in promoted.items():
            slot = self._slots.get(name)
            if slot is None or slot.tag == tag:
                continue
            try:
                slot.load(tag)
            except Exception:  # a bad promotion must not take the served version down
                logger.exception("could not switch %s to %s; still serving %s", name, tag, slot.tag)

    def run(self) -> None:
        while not self._stop.wait(self._poll_s):
            self.check_once()
