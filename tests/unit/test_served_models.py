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

from model_store.serving import ServedSpec, tag_id
from visionqueue.core.errors import ModelNotFound
from visionqueue.dataplane.priority import Priority
from visionqueue.dataplane.registry import ServedModels


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

    async def call(self, api: str, crops: np.ndarray, priority: Priority) -> np.ndarray:
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
