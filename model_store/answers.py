"""The body of a classification answer (``/predict``'s response, a job's result), built in one
place for the front and for the workers' direct path to the classifier."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from model_store.inference import top_k as top_k_rows
from model_store.weights import is_demo

DEMO_WARNING = (
    "random-init weights: this is an untrained demo model and its predictions mean nothing"
)


def model_block(name: str, version: dict[str, Any]) -> dict[str, Any]:
    """Describe the model version that answered, loudly when it is a demo model."""
    block: dict[str, Any] = {
        "name": name,
        "tag": version["tag"],
        "weights": version["weights"],
        "architecture": version.get("architecture"),
        # what ran it, as the classifier reported at load (model_store.runtimes)
        "device": version.get("device"),
        "backend": version.get("backend"),
        "execution_provider": version.get("execution_provider"),
        "demo": is_demo(version["weights"]),
    }
    if block["demo"]:
        block["warning"] = DEMO_WARNING
    return block


def answer_body(
    probs: np.ndarray,
    k: int,
    *,
    name: str,
    version: dict[str, Any],
    started: float,
    preprocessing: str,
    work_class: str | None = None,
) -> dict[str, Any]:
    """Build the answer to one image: top ``k`` of its probability row, the version that ran,
    seconds since ``started`` (``time.perf_counter``), how the image was preprocessed and
    the priority class it ran in (``visionqueue.dataplane.priority``)."""
    return answer_from_rows(
        top_k_rows(probs, version["labels"], k),
        model_block(name, version),
        started=started,
        preprocessing=preprocessing,
        work_class=work_class,
    )


def answer_from_rows(
    predictions: list[dict[str, Any]],
    model: dict[str, Any],
    *,
    started: float,
    preprocessing: str,
    work_class: str | None = None,
) -> dict[str, Any]:
    """Build the answer to one image from its top-k ``predictions`` and ``model`` block."""
    body: dict[str, Any] = {
        "predictions": predictions,
        "model": model,
        "processing_time": round(time.perf_counter() - started, 6),
        "preprocessing": preprocessing,
    }
    if work_class is not None:
        body["work_class"] = work_class
    return body
