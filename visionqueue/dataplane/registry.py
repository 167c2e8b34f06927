"""``ServedModels``: the one registry of the served models, and the versions they answer with.

Built once per process from ``VQ_MODELS`` (``served_specs``): by the front at start-up (with
a ``Transport``), by a worker's direct client (``jobs.classifier_client``, synchronous). Each
``ServedModel`` has its classifier API (its own batching queue), a crop coalescer per priority
class, and a ``VersionBook``: the descriptions of the versions the classifier has answered
with, keyed by the tag id every answer row carries (``visionqueue.dataplane.rows``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from model_store.preprocess import Preprocessing
from model_store.serving import ServedSpec, served_specs
from visionqueue.bento.remote import REFUSED_TOKEN, refused_token
from visionqueue.core.errors import DeadlineExceeded, ModelNotFound, ModelNotReady
from visionqueue.core.settings import ModelSettings
from visionqueue.dataplane import rows as answer_rows
from visionqueue.dataplane.coalesce import CropCoalescer
from visionqueue.dataplane.priority import SYNC_PRIORITY, Priority
from visionqueue.dataplane.requests import Version
from visionqueue.dataplane.transports import Transport

DESCRIBE_DEADLINE_S = 5.0
SWITCH_ATTEMPTS = 3  # a promotion between two calls splits rows across versions: ask again


def configured_specs(model: ModelSettings) -> list[ServedSpec]:
    """The served models the settings name (``VQ_MODELS``, else the single-model settings)."""
    return served_specs(model.models, model.model_name, model.model_tag)


@dataclass
class VersionBook:
    """What one model's classifier said about its versions: the current one, and every one by id."""

    current: Version | None = None
    versions: dict[int, Version] = field(default_factory=dict)

    def learn(self, described: dict[str, Any]) -> Version:
        """Take a classifier's ``model_info`` answer; return the current version's description."""
        self.versions.update({int(k): v for k, v in described["versions"].items()})
        self.current = {k: v for k, v in described.items() if k != "versions"}
        return self.current

    def knows(self, tag_id: int) -> bool:
        return tag_id in self.versions

    def ran(self, name: str, tag_id: int) -> Version:
        """The version a row names, now the current one (503 if the classifier never said)."""
        version = self.versions.get(tag_id)
        if version is None:
            raise ModelNotReady(f"{name} answered from an unknown version", retry_after=1)
        if self.current is None or self.current["tag"] != version["tag"]:
            self.current = version  # the classifier switched (a promotion or a roll back)
        return version


@dataclass
class ServedModel:
    """One model name the deployment serves."""

    name: str
    api: str
    default: bool
    book: VersionBook = field(default_factory=VersionBook)
    coalescers: dict[Priority, CropCoalescer] = field(default_factory=dict)

    @property
    def current(self) -> Version | None:
        return self.book.current


def served_entries(specs: list[ServedSpec]) -> dict[str, ServedModel]:
    """One entry per served name, the default (the first) first."""
    return {
        spec.name: ServedModel(spec.name, spec.api, index == 0) for index, spec in enumerate(specs)
    }


def find_served(entries: dict[str, ServedModel], name: str | None) -> ServedModel:
    """Return the entry called ``name`` (the default for None or ""); 404 otherwise."""
    if not name:
        return next(iter(entries.values()))
    model = entries.get(name)
    if model is None:
        raise ModelNotFound(
            f"no model named {name!r} is served here; served: {', '.join(entries)}",
            details={"served": list(entries)},
        )
    return model


class ServedModels:
    """The served models, the default first; classify through ``transport``.

    The workers' synchronous client (``jobs.classifier_client``) keeps the same entries
    (``served_entries``, ``find_served``) without a transport.
    """

    def __init__(
        self,
        specs: list[ServedSpec],
        transport: Transport,
        max_batch: int,
        calls_in_flight: int,
    ) -> None:
        self._transport = transport
        self._max_batch = max_batch
        self._calls_in_flight = calls_in_flight
        self._models = served_entries(specs)

    @property
    def names(self) -> list[str]:
        return list(self._models)

    @property
    def default(self) -> ServedModel:
        return next(iter(self._models.values()))

    def get(self, name: str | None = None) -> ServedModel:
        """Return the model called ``name`` (the default for None or ""); 404 otherwise."""
        return find_served(self._models, name)

    async def info(self, name: str | None = None, fresh: bool = False) -> Version:
        """Return the current version's description (503 while the classifier loads)."""
        model = self.get(name)
        if model.current is None or fresh:
            try:
                # the arbiter holds the classifier's socket even while no worker serves it:
                # without a deadline a probe would wait out the 120 s traffic timeout
                with anyio.fail_after(DESCRIBE_DEADLINE_S):
                    described = await self._transport.describe(model.name)
            except Exception as exc:
                if refused_token(exc):
                    raise ModelNotReady(REFUSED_TOKEN, retry_after=2) from exc
                raise ModelNotReady(
                    f"the classifier is not ready to serve {model.name} yet", retry_after=2
                ) from exc
            return model.book.learn(described)
        return model.current

    async def described(self, name: str | None = None) -> dict[str, Any]:
        """The classifier's ``model_info`` for ``name`` as the book now holds it, asked afresh:
        the current version and every version it has answered with, by tag id."""
        model = self.get(name)
        current = await self.info(model.name, fresh=True)
        versions = {str(tag_id): version for tag_id, version in model.book.versions.items()}
        return {**current, "versions": versions}

    async def lookup(self, name: str, version: str | None = None, fresh: bool = True) -> Version:
        """Return the description of ``name`` at ``version`` (a tag or its version part).

        ``fresh=False`` (inference routes, whose answer names the version that ran) trusts
        the last description, asking the classifier again only when ``version`` names
        another one: a promotion may have happened since.
        """
        current = await self.info(name, fresh=fresh)
        if not fresh and not names_version(current, version):
            current = await self.info(name, fresh=True)
        if names_version(current, version):
            return current
        raise ModelNotFound(
            f"{name} serves version {current['tag']}, not {version!r}",
            details={"served": current["tag"]},
        )

    async def version(self, model: ServedModel, tag_id: int) -> Version:
        """Return the description of the version an answer row names."""
        if not model.book.knows(tag_id):
            await self.info(model.name, fresh=True)  # a promotion happened: learn the new one
        return model.book.ran(model.name, tag_id)

    def _coalescer(self, model: ServedModel, priority: Priority) -> CropCoalescer | None:
        """The coalescer of ``model``'s crops of one priority class (crops of two never merge).

        Interactive calls have none: each request's call carries its own deadline, and the
        classifier's priority queue batches them.
        """
        if not self._calls_in_flight or priority is Priority.INTERACTIVE:
            return None
        coalescer = model.coalescers.get(priority)
        if coalescer is None:

            async def call(crops: np.ndarray) -> np.ndarray:
                return await self._transport.call(model.api, crops, priority)

            coalescer = CropCoalescer(call, self._max_batch, self._calls_in_flight)
            model.coalescers[priority] = coalescer
        return coalescer

    async def classify_many(
        self,
        name: str | None,
        crops: np.ndarray,
        priority: Priority = SYNC_PRIORITY,
        deadline: float | None = None,
    ) -> tuple[answer_rows.AnswerRows, Version]:
        """Classify one request's crops together on ``name``'s queue.

        Returns the unpacked answer rows and the version that computed every one of them.
        Rows that a promotion split across two versions are classified again. ``deadline``
        (``time.monotonic``): past it, a 504 ``DeadlineExceeded``, the crops not classified.
        """
        model = self.get(name)
        coalescer = self._coalescer(model, priority)
        for _ in range(SWITCH_ATTEMPTS):
            try:
                if coalescer is not None:
                    out = await coalescer.classify_many(crops)
                else:
                    size = self._max_batch
                    chunks = [crops[i : i + size] for i in range(0, len(crops), size)]
                    calls = [
                        await self._transport.call(model.api, c, priority, time_left(deadline))
                        for c in chunks
                    ]
                    out = np.concatenate(calls)
            except ValueError:  # rows of two versions with different class counts
                continue
            answer = answer_rows.unpack(out)
            tag_id = answer.one_version()
            if tag_id is not None:
                return answer, await self.version(model, tag_id)
        raise ModelNotReady(f"{model.name} is switching versions; retry", retry_after=1)

    async def preprocessing(self, name: str | None) -> Preprocessing:
        """The current version's preprocessing."""
        return Preprocessing.from_spec((await self.info(name))["preprocessing"])


def time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (``time.monotonic``; None: no limit); 504 once it passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the request waited past its deadline; it was not classified")
    return left


def names_version(description: Version, version: str | None) -> bool:
    """Whether ``version`` (none, a tag or its version part) means the described version."""
    tag = description["tag"]
    return version in (None, "", tag, tag.split(":", 1)[1])
