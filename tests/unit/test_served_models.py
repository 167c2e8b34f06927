"""The front's registry of served models asks the classifier to describe a model only when it must.

Inference routes (Open Inference Protocol v2) look the model up on every request; a call into
the classifier per request cost both processes an HTTP round trip carrying every label twice.
The classifier here is a fake that counts its descriptions and can be promoted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import numpy as np
import pytest

from model_store.serving import ServedSpec, tag_id
from visionqueue.api.predict import request_priority
from visionqueue.core.errors import DeadlineExceeded, ModelNotFound, Unprocessable
from visionqueue.dataplane.plane import CropLimits, DataPlane
from visionqueue.dataplane.priority import Priority
from visionqueue.dataplane.registry import ServedModels
from visionqueue.dataplane.requests import ClassifyRequest


class FakeClassifier:
    """Describes ``pets`` at its current tag and answers rows naming that tag."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.served: dict[int, dict[str, Any]] = {}
        self.descriptions = 0
        self.promote(tag)

    def promote(self, tag: str) -> None:
        self.tag = tag
        self.served[tag_id(tag)] = {"tag": tag, "labels": [f"{tag}-a", f"{tag}-b"]}

    async def describe(self, name: str) -> dict[str, Any]:
        self.descriptions += 1
        return {"name": name, **self.served[tag_id(self.tag)], "versions": dict(self.served)}

    async def call(
        self, api: str, crops: np.ndarray, priority: Priority, timeout_s: float | None = None
    ) -> np.ndarray:
        rows = np.zeros((len(crops), 4), dtype=np.float32)
        rows[:, :2] = (0.25, 0.75)
        rows[:, -1] = tag_id(self.tag)
        return rows


def registry(classifier: FakeClassifier) -> ServedModels:
    spec = ServedSpec("pets", "pets:v1", "classify")
    return ServedModels([spec], classifier, 16, calls_in_flight=0)


def test_inference_lookups_reuse_the_last_description() -> None:
    classifier = FakeClassifier("pets:v1")
    models = registry(classifier)

    async def lookups() -> list[dict[str, Any]]:
        return [await models.lookup("pets", version, fresh=False) for version in (None, "v1") * 5]

    found = asyncio.run(lookups())
    assert {d["tag"] for d in found} == {"pets:v1"}
    assert classifier.descriptions == 1
    asyncio.run(models.lookup("pets"))  # metadata and readiness routes still ask every time
    assert classifier.descriptions == 2


def test_a_version_promoted_since_the_last_description_is_found_by_asking_again() -> None:
    classifier = FakeClassifier("pets:v1")
    models = registry(classifier)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        await models.lookup("pets", fresh=False)
        classifier.promote("pets:v2")
        stale = await models.lookup("pets", fresh=False)  # nothing says it changed yet
        pinned = await models.lookup("pets", "v2", fresh=False)
        return stale, pinned

    stale, pinned = asyncio.run(scenario())
    assert stale["tag"] == "pets:v1"
    assert pinned["tag"] == "pets:v2" and pinned["labels"] == ["pets:v2-a", "pets:v2-b"]
    assert classifier.descriptions == 2
    with pytest.raises(ModelNotFound, match="not 'v3'"):
        asyncio.run(models.lookup("pets", "v3", fresh=False))


def test_the_answer_names_the_version_that_ran_not_the_one_looked_up() -> None:
    classifier = FakeClassifier("pets:v1")
    models = registry(classifier)

    async def scenario() -> dict[str, Any]:
        await models.lookup("pets", fresh=False)
        classifier.promote("pets:v2")
        _, ran = await models.classify_many("pets", np.zeros((2, 4, 4, 3), dtype=np.uint8))
        return ran

    ran = asyncio.run(scenario())
    assert ran["tag"] == "pets:v2" and ran["labels"] == ["pets:v2-a", "pets:v2-b"]


class ClassRecorder(FakeClassifier):
    """Records the priority class and the wait limit of every call it answers."""

    def __init__(self, tag: str) -> None:
        super().__init__(tag)
        self.calls: list[tuple[int, Priority, float | None]] = []

    async def call(
        self, api: str, crops: np.ndarray, priority: Priority, timeout_s: float | None = None
    ) -> np.ndarray:
        self.calls.append((len(crops), priority, timeout_s))
        return await super().call(api, crops, priority)


def test_each_call_goes_in_its_class_with_what_is_left_of_its_deadline() -> None:
    classifier = ClassRecorder("pets:v1")
    models = ServedModels([ServedSpec("pets", "pets:v1", "classify")], classifier, 16, 2)
    one, three = np.zeros((1, 224, 224, 3), np.uint8), np.zeros((3, 224, 224, 3), np.uint8)

    async def scenario() -> None:
        await models.classify_many("pets", one)  # a person, no deadline
        await models.classify_many("pets", one, Priority.INTERACTIVE, time.monotonic() + 30)
        await models.classify_many("pets", three, Priority.BULK)
        with pytest.raises(DeadlineExceeded):  # past its deadline: never sent
            await models.classify_many("pets", one, Priority.INTERACTIVE, time.monotonic())

    asyncio.run(scenario())
    assert [(n, c) for n, c, _ in classifier.calls] == [
        (1, Priority.INTERACTIVE),
        (1, Priority.INTERACTIVE),
        (3, Priority.BULK),  # through the bulk class's coalescer: no deadline
    ]
    assert classifier.calls[0][2] is None and classifier.calls[2][2] is None
    assert 29.0 < (classifier.calls[1][2] or 0) <= 30.0
    assert (DeadlineExceeded.status, DeadlineExceeded.code) == (504, "deadline_exceeded")


def test_the_deadline_setting_bounds_interactive_requests_only() -> None:
    models = registry(FakeClassifier("pets:v1"))
    plane = DataPlane(models, CropLimits(10**6), anyio.CapacityLimiter(2), None, 250)
    now = time.monotonic()
    interactive = plane._bounded(ClassifyRequest([b""], None, Priority.INTERACTIVE))
    assert interactive.deadline is not None and now < interactive.deadline <= now + 0.25 + 0.1
    sooner = plane._bounded(ClassifyRequest([b""], None, Priority.INTERACTIVE, now + 0.01))
    assert sooner.deadline == now + 0.01  # the request's own timeout, when shorter
    job = plane._bounded(ClassifyRequest([b""], None, Priority.JOBS))
    assert job.deadline is None  # a job is retried, never dropped
    assert request_priority(None) is Priority.INTERACTIVE
    assert request_priority("bulk") is Priority.BULK
    with pytest.raises(Unprocessable):
        request_priority("vip")
