"""``ServedModels``: the one place the front lists its models and looks one up by name.

Built by the front service at start-up from ``VQ_MODELS`` (``model_store.serving``), and
reachable from any route as ``served_models(request)`` (``app.state.models``). Each ``ServedModel`` has its classifier API
(its own batching queue), its own crop coalescer, and the descriptions of the versions the
classifier has answered with, keyed by the tag id every output row carries. Protocol
adapters (KServe v2, TorchServe) use ``get(name)``, ``lookup(name, version)`` and
``classify(name, crop)`` too.

Every call goes to the classifier in a class of work (``model_store.priority``) with the time
it may still wait, both taken from the request's ``work_scope`` (interactive, no deadline when
none is open). Interactive calls go one per request, each with its own deadline (the
classifier's priority queue batches them); job and bulk crops are merged per class.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from starlette.requests import Request

from model_store.preprocess import Preprocessing
from model_store.priority import WorkClass
from model_store.serving import ServedSpec
from visionqueue.api.coalesce import CropCoalescer
from visionqueue.bento.remote import REFUSED_TOKEN, refused_token
from visionqueue.core.errors import DeadlineExceeded, ModelNotFound, ModelNotReady

# (api, crops, class of work, seconds it may wait for its forward pass or None) -> rows
CallApi = Callable[[str, np.ndarray, WorkClass, float | None], Awaitable[np.ndarray]]
_WORK: ContextVar[tuple[WorkClass, float | None]] = ContextVar(
    "visionqueue_work", default=(WorkClass.INTERACTIVE, None)
)


@contextlib.contextmanager
def work_scope(work_class: WorkClass, timeout_s: float | None = None) -> Iterator[None]:
    """Classify in ``work_class`` inside the block; ``timeout_s``: from now, at most."""
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    token = _WORK.set((work_class, deadline))
    try:
        yield
    finally:
        _WORK.reset(token)


def interactive_scope(
    deadline_ms: int, timeout_s: float | None = None
) -> contextlib.AbstractContextManager[None]:
    """Give interactive work without a deadline yet the shorter of ``deadline_ms`` (0: none)
    and the request's own ``timeout_s`` from now.

    The protocols' routes (v2, TorchServe) classify through the front with no scope of
    their own: ``VQ_PREDICT_DEADLINE_MS`` holds for them as for ``/predict``.
    """
    work_class, deadline = _WORK.get()
    limits = [s for s in (deadline_ms / 1000 if deadline_ms else None, timeout_s) if s]
    if work_class is not WorkClass.INTERACTIVE or deadline is not None or not limits:
        return contextlib.nullcontext()
    return work_scope(WorkClass.INTERACTIVE, min(limits))


def current_class() -> WorkClass:
    """The class of the work being classified (interactive outside any ``work_scope``)."""
    return _WORK.get()[0]


def current_work() -> tuple[WorkClass, float | None]:
    """The class of the work being classified and the seconds it may still wait (or None).

    Raises ``DeadlineExceeded`` (504) once the deadline has passed.
    """
    work_class, deadline = _WORK.get()
    if deadline is None:
        return work_class, None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the request waited past its deadline; it was not classified")
    return work_class, left


Describe = Callable[[str], Awaitable[dict[str, Any]]]  # name -> classifier's description
DESCRIBE_DEADLINE_S = 5.0


@dataclass
class ServedModel:
    """One model name the deployment serves."""

    name: str
    api: str
    default: bool
    coalescers: dict[WorkClass, CropCoalescer] = field(default_factory=dict)
    current: dict[str, Any] | None = None  # the classifier's last description
    versions: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """One crop's answer: probabilities, the batch's forward seconds, the version that ran."""

    probs: np.ndarray
    forward_s: float
    version: dict[str, Any]


class ServedModels:
    """The served models, the default first."""

    def __init__(
        self,
        specs: list[ServedSpec],
        call_api: CallApi,
        describe: Describe,
        max_batch: int,
        calls_in_flight: int,
    ) -> None:
        self._call_api = call_api
        self._describe = describe
        self._max_batch = max_batch
        self._models: dict[str, ServedModel] = {}
        for index, spec in enumerate(specs):
            model = ServedModel(spec.name, spec.api, index == 0)
            if calls_in_flight:  # job and bulk crops only: interactive calls carry deadlines
                model.coalescers = {
                    work_class: CropCoalescer(
                        self._caller(spec.api, work_class), max_batch, calls_in_flight
                    )
                    for work_class in (WorkClass.JOBS, WorkClass.BULK)
                }
            self._models[spec.name] = model

    def _caller(
        self, api: str, work_class: WorkClass
    ) -> Callable[[np.ndarray], Awaitable[np.ndarray]]:
        async def call(crops: np.ndarray) -> np.ndarray:
            return await self._call_api(api, crops, work_class, None)

        return call

    async def _classify_rows(self, model: ServedModel, crops: np.ndarray) -> np.ndarray:
        """Classify crops in the current class of work; return their rows."""
        work_class, timeout_s = current_work()
        coalescer = model.coalescers.get(work_class)
        if coalescer is not None:
            if len(crops) == 1:
                return await coalescer.classify(crops[0])
            return await coalescer.classify_many(crops)
        size = self._max_batch
        chunks = [crops[i : i + size] for i in range(0, len(crops), size)]
        return np.concatenate(
            [await self._call_api(model.api, c, work_class, timeout_s) for c in chunks]
        )

    @property
    def names(self) -> list[str]:
        return list(self._models)

    @property
    def default(self) -> ServedModel:
        return next(iter(self._models.values()))

    def get(self, name: str | None = None) -> ServedModel:
        """Return the model called ``name`` (the default for None or ""); 404 otherwise."""
        if not name:
            return self.default
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(
                f"no model named {name!r} is served here; served: {', '.join(self._models)}",
                details={"served": self.names},
            )
        return model

    async def info(self, name: str | None = None, fresh: bool = False) -> dict[str, Any]:
        """Return the current version's description (503 while the classifier loads)."""
        model = self.get(name)
        if model.current is None or fresh:
            try:
                # the arbiter holds the classifier's socket even while no worker serves it:
                # without a deadline a probe would wait out the 120 s traffic timeout
                with anyio.fail_after(DESCRIBE_DEADLINE_S):
                    described = await self._describe(model.name)
            except Exception as exc:
                if refused_token(exc):
                    raise ModelNotReady(REFUSED_TOKEN, retry_after=2) from exc
                raise ModelNotReady(
                    f"the classifier is not ready to serve {model.name} yet", retry_after=2
                ) from exc
            model.versions.update({int(k): v for k, v in described["versions"].items()})
            model.current = {k: v for k, v in described.items() if k != "versions"}
        return model.current

    async def lookup(
        self, name: str, version: str | None = None, fresh: bool = True
    ) -> dict[str, Any]:
        """Return the description of ``name`` at ``version`` (a tag or its version part).

        ``fresh=False`` (inference routes, whose answer names the version that ran) trusts
        the last description, asking the classifier again only when ``version`` names
        another one: a promotion may have happened since.
        """
        current = await self.info(name, fresh=fresh)
        if not fresh and not _names(current, version):
            current = await self.info(name, fresh=True)
        if _names(current, version):
            return current
        raise ModelNotFound(
            f"{name} serves version {current['tag']}, not {version!r}",
            details={"served": current["tag"]},
        )

    async def version(self, model: ServedModel, tag_id: int) -> dict[str, Any]:
        """Return the description of the version an output row names."""
        if tag_id not in model.versions:
            await self.info(model.name, fresh=True)  # a promotion happened: learn the new one
        if tag_id not in model.versions:
            raise ModelNotReady(f"{model.name} answered from an unknown version", retry_after=1)
        version = model.versions[tag_id]
        if model.current is None or model.current["tag"] != version["tag"]:
            model.current = version  # the classifier switched (a promotion or a roll back)
        return version

    async def classify(self, name: str | None, crop: np.ndarray) -> Answer:
        """Classify one crop on ``name``'s batching queue."""
        model = self.get(name)
        out = await self._classify_rows(model, crop[np.newaxis])
        version = await self.version(model, int(out[0, -1]))
        return Answer(out[0, :-2], float(out[0, -2]), version)

    async def classify_many(
        self, name: str | None, crops: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
        """Classify one request's crops together on ``name``'s queue.

        Returns ``(N, C)`` probabilities, the version that answered, and each row's batch
        forward seconds. Rows that a promotion split across two versions are classified again.
        """
        model = self.get(name)
        for _ in range(3):
            try:
                out = await self._classify_rows(model, crops)
            except ValueError:  # rows of two versions with different class counts
                continue
            ids = {int(v) for v in out[:, -1]}
            if len(ids) == 1:
                version = await self.version(model, ids.pop())
                return out[:, :-2], version, out[:, -2]
        raise ModelNotReady(f"{model.name} is switching versions; retry", retry_after=1)

    async def preprocessing(self, name: str | None) -> Preprocessing:
        """The current version's preprocessing."""
        return Preprocessing.from_spec((await self.info(name))["preprocessing"])


def _names(description: dict[str, Any], version: str | None) -> bool:
    """Whether ``version`` (none, a tag or its version part) means the described version."""
    tag = description["tag"]
    return version in (None, "", tag, tag.split(":", 1)[1])


def served_models(request: Request) -> ServedModels:
    """Return the front's registry (503 while the service starts)."""
    registry = getattr(request.app.state, "models", None)
    if not isinstance(registry, ServedModels):
        raise ModelNotReady("the service is starting", retry_after=2)
    return registry
