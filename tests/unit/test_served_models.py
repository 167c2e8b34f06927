"""The front's registry of served models asks the classifier to describe a model only when it must.

Inference routes (Open Inference Protocol v2) look the model up on every request; a call into
the classifier per request cost both processes an HTTP round trip carrying every label twice.
The classifier here is a fake that counts its descriptions and can be promoted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from model_store.priority import WorkClass
from model_store.serving import ServedSpec, tag_id
from visionqueue.api.predict import request_work
from visionqueue.api.served_models import (
    ServedModels,
    current_class,
    interactive_scope,
    work_scope,
)
from visionqueue.core.errors import DeadlineExceeded, ModelNotFound, Unprocessable


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

    async def call_api(self, api: str, crops: np.ndarray, *_: object) -> np.ndarray:
        rows = np.zeros((len(crops), 4), dtype=np.float32)
        rows[:, :2] = (0.25, 0.75)
        rows[:, -1] = tag_id(self.tag)
        return rows


def registry(classifier: FakeClassifier) -> ServedModels:
    spec = ServedSpec("pets", "pets:v1", "classify")
    return ServedModels([spec], classifier.call_api, classifier.describe, 16, calls_in_flight=0)


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
        _, ran, _ = await models.classify_many("pets", np.zeros((2, 4, 4, 3), dtype=np.uint8))
        return ran

    ran = asyncio.run(scenario())
    assert ran["tag"] == "pets:v2" and ran["labels"] == ["pets:v2-a", "pets:v2-b"]


class ClassRecorder(FakeClassifier):
    """Records the class of work and the wait limit of every call it answers."""

    def __init__(self, tag: str) -> None:
        super().__init__(tag)
        self.calls: list[tuple[int, WorkClass, float | None]] = []

    async def call_api(
        self, api: str, crops: np.ndarray, work_class: WorkClass, timeout_s: float | None
    ) -> np.ndarray:
        self.calls.append((len(crops), work_class, timeout_s))
        return await super().call_api(api, crops)


def test_each_call_goes_in_its_requests_class_with_what_is_left_of_its_deadline() -> None:
    classifier = ClassRecorder("pets:v1")
    spec = ServedSpec("pets", "pets:v1", "classify")
    models = ServedModels([spec], classifier.call_api, classifier.describe, 16, 2)
    crop = np.zeros((224, 224, 3), np.uint8)

    async def scenario() -> None:
        await models.classify("pets", crop)  # no scope: a person, no deadline
        with work_scope(WorkClass.INTERACTIVE, 30.0):
            await models.classify("pets", crop)
        with work_scope(WorkClass.BULK):
            await models.classify_many("pets", np.stack([crop] * 3))
        with work_scope(WorkClass.INTERACTIVE, 0.0), pytest.raises(DeadlineExceeded):
            await models.classify("pets", crop)  # past its deadline: never sent

    asyncio.run(scenario())
    assert [(n, c) for n, c, _ in classifier.calls] == [
        (1, WorkClass.INTERACTIVE),
        (1, WorkClass.INTERACTIVE),
        (3, WorkClass.BULK),  # merged by the bulk class's coalescer
    ]
    assert classifier.calls[0][2] is None and classifier.calls[2][2] is None
    assert 29.0 < (classifier.calls[1][2] or 0) <= 30.0
    assert (DeadlineExceeded.status, DeadlineExceeded.code) == (504, "deadline_exceeded")


def test_the_protocols_deadline_applies_only_to_interactive_work_without_one() -> None:
    with interactive_scope(5000):
        assert current_class() is WorkClass.INTERACTIVE
        with work_scope(WorkClass.JOBS), interactive_scope(5000):
            assert current_class() is WorkClass.JOBS
    assert request_work(None, 0) == (WorkClass.INTERACTIVE, None)
    assert request_work(None, 250) == (WorkClass.INTERACTIVE, 0.25)
    assert request_work("bulk", 250) == (WorkClass.BULK, None)  # a job is retried, not dropped
    with pytest.raises(Unprocessable):
        request_work("vip", 250)
