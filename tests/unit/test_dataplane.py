"""The data plane's own definitions: answer rows, priority classes, crop-for-the-version, and
``DataPlane`` over a classifier that is promoted between two calls.

The classifier here is a stand-in that answers wire rows (``rows.pack``) naming the version it
runs; the real one is exercised by the integration tests (test_predict_answers, test_protocol_*).
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import anyio
import numpy as np
import pytest
from PIL import Image

from model_store.preprocess import Preprocessing
from model_store.serving import ServedSpec, tag_id
from visionqueue.dataplane import rows
from visionqueue.dataplane.crop_retry import ATTEMPTS, CropForVersion
from visionqueue.dataplane.plane import CropLimits, DataPlane
from visionqueue.dataplane.priority import JOB_PRIORITY, SYNC_PRIORITY, Priority
from visionqueue.dataplane.registry import ServedModels
from visionqueue.dataplane.requests import ClassifyRequest


def test_answer_rows_round_trip_with_the_forward_seconds_and_the_tag() -> None:
    probs = np.array([[0.1, 0.9], [0.7, 0.3], [0.5, 0.5]], dtype=np.float32)
    wire = rows.pack(probs, 0.25, "pets:v7")
    assert wire.shape == (3, 2 + rows.EXTRA_COLUMNS) and wire.dtype == np.float32
    answer = rows.unpack(wire)
    assert np.array_equal(answer.probs, probs)
    assert answer.forward_s.tolist() == [0.25] * 3
    assert answer.one_version() == tag_id("pets:v7")  # exact through float32
    assert len(answer) == 3


def test_rows_of_two_versions_name_none_and_malformed_rows_are_refused() -> None:
    split = np.concatenate(
        [rows.pack(np.ones((1, 2)), 0.1, "a:1"), rows.pack(np.ones((1, 2)), 0.1, "a:2")]
    )
    assert rows.unpack(split).one_version() is None
    with pytest.raises(ValueError, match=r"\(N, C \+ 2\)"):
        rows.unpack(np.zeros((3, 2), np.float32))  # no class column left
    with pytest.raises(ValueError):
        rows.unpack(np.zeros(5, np.float32))


def test_priority_classes_order_and_parse() -> None:
    assert SYNC_PRIORITY is Priority.INTERACTIVE and JOB_PRIORITY is Priority.JOBS
    assert sorted([Priority.JOBS, Priority.INTERACTIVE]) == [Priority.INTERACTIVE, Priority.JOBS]
    assert Priority.parse(" Jobs ") is Priority.JOBS
    with pytest.raises(ValueError, match="known: interactive, jobs"):
        Priority.parse("urgent")


def spec(resize: int) -> dict[str, Any]:
    return Preprocessing(resize=resize, crop=8).to_spec()


def test_crop_for_version_stops_once_the_crops_fit_the_version_that_ran() -> None:
    attempts = CropForVersion(Preprocessing(resize=16, crop=8))
    used = []
    ran = iter([{"preprocessing": spec(12)}, {"preprocessing": spec(12)}])
    for prep in attempts:
        used.append(prep.resize)
        attempts.ran(next(ran))
    assert used == [16, 12]  # cropped again once, for the promoted version


def test_crop_for_version_gives_up_after_three_attempts() -> None:
    attempts = CropForVersion(Preprocessing(resize=16, crop=8))
    sizes = iter([10, 11, 12, 13])
    tried = 0
    for _ in attempts:
        tried += 1
        attempts.ran({"preprocessing": spec(next(sizes))})
    assert tried == ATTEMPTS == 3


class PromotingClassifier:
    """Serves ``pets``; the first call runs on v2 (promoted meanwhile), which resizes differently."""

    def __init__(self) -> None:
        self.versions = {
            "pets:v1": {
                "tag": "pets:v1",
                "labels": ["cat", "dog"],
                "weights": "random",
                "preprocessing": spec(16),
            },
            "pets:v2": {
                "tag": "pets:v2",
                "labels": ["cat", "dog"],
                "weights": "random",
                "preprocessing": spec(12),
            },
        }
        self.current = "pets:v1"
        self.calls: list[tuple[tuple[int, ...], Priority]] = []

    async def describe(self, name: str) -> dict[str, Any]:
        by_id = {str(tag_id(t)): v for t, v in self.versions.items()}
        return {"name": name, **self.versions[self.current], "versions": by_id}

    async def call(
        self, api: str, crops: np.ndarray, priority: Priority, timeout_s: float | None = None
    ) -> np.ndarray:
        self.calls.append((crops.shape, priority))
        self.current = "pets:v2"  # promoted before this batch ran
        probs = np.tile(np.array([[0.2, 0.8]], np.float32), (len(crops), 1))
        return rows.pack(probs, 0.01, self.current)


def png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def test_the_data_plane_crops_again_for_a_version_promoted_meanwhile() -> None:
    classifier = PromotingClassifier()
    models = ServedModels([ServedSpec("pets", "pets:v1", "classify")], classifier, 16, 0)
    plane = DataPlane(models, CropLimits(max_pixels=10_000), anyio.CapacityLimiter(2))

    asked = ClassifyRequest([png(20), png(30)], "pets", Priority.JOBS)
    answer = asyncio.run(plane.classify(asked))

    assert answer.model == "pets" and answer.version["tag"] == "pets:v2"
    assert answer.probs.shape == (2, 2) and answer.preprocessing == ["exact", "exact"]
    # the first call's crops were made for v1; v2 answered, so both were cropped and sent again
    assert [priority for _, priority in classifier.calls] == [Priority.JOBS, Priority.JOBS]
    assert len(classifier.calls) == 2


def test_classify_upload_builds_predicts_answer_at_interactive_priority() -> None:
    classifier = PromotingClassifier()
    models = ServedModels([ServedSpec("pets", "pets:v1", "classify")], classifier, 16, 2)
    plane = DataPlane(models, CropLimits(max_pixels=10_000), anyio.CapacityLimiter(2))

    body = asyncio.run(plane.classify_upload(png(20), 1))

    assert body["predictions"][0]["class"] == "dog"
    assert body["model"]["name"] == "pets" and body["model"]["tag"] == "pets:v2"
    assert {priority for _, priority in classifier.calls} == {Priority.INTERACTIVE}
