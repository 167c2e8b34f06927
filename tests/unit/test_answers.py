"""The answer body the front's ``/predict`` and the workers' direct path both build."""

from __future__ import annotations

import time

import numpy as np

from model_store.answers import DEMO_WARNING, answer_body, model_block

VERSION = {
    "tag": "resnet18:abc",
    "weights": "imagenet1k_v1",
    "architecture": "resnet18",
    "labels": ["cat", "dog", "fish", "bird"],
    "device": "cuda",
    "backend": "onnxruntime",
    "execution_provider": "CUDAExecutionProvider",
}


def test_answer_body_ranks_labels_and_names_the_version() -> None:
    probs = np.array([0.1, 0.6, 0.05, 0.25], dtype=np.float32)
    started = time.perf_counter()
    body = answer_body(
        probs, 3, name="resnet18", version=VERSION, started=started, preprocessing="exact"
    )
    assert list(body) == ["predictions", "model", "processing_time", "preprocessing"]
    assert body["predictions"] == [
        {"class": "dog", "index": 1, "confidence": float(np.float32(0.6))},
        {"class": "bird", "index": 3, "confidence": float(np.float32(0.25))},
        {"class": "cat", "index": 0, "confidence": float(np.float32(0.1))},
    ]
    assert body["model"] == {
        "name": "resnet18",
        "tag": "resnet18:abc",
        "weights": "imagenet1k_v1",
        "architecture": "resnet18",
        # what ran it, as the classifier reported
        "device": "cuda",
        "backend": "onnxruntime",
        "execution_provider": "CUDAExecutionProvider",
        "demo": False,
    }
    assert 0 <= body["processing_time"] < 5
    assert body["preprocessing"] == "exact"


def test_a_float64_row_of_float32_values_gives_the_same_answer() -> None:
    """A row that crossed JSON (float64) ranks and reports exactly as the float32 row."""
    rng = np.random.default_rng(3)
    row = rng.random(1000, dtype=np.float32)
    row[[10, 20]] = row[5]  # ties keep index order either way
    version = {**VERSION, "labels": [f"c{i}" for i in range(1000)]}

    def top(probs: np.ndarray) -> list[dict[str, object]]:
        body = answer_body(probs, 20, name="m", version=version, started=0.0, preprocessing="exact")
        return list(body["predictions"])

    via_json = np.asarray(row.tolist(), dtype=np.float64)
    assert top(via_json) == top(row)


def test_a_demo_model_is_flagged_loudly() -> None:
    block = model_block("toy", {**VERSION, "weights": "random-init-seed-0"})
    assert block["demo"] is True
    assert block["warning"] == DEMO_WARNING
