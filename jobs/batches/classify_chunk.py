"""The one call a batch makes to classify a chunk's crops: the adapter to the classifier path.

Two routes, the same answer: with ``VQ_CLASSIFIER_URL`` the worker calls the classifier
service itself (``ClassifierClient``, packed crops, one call per ``VQ_BATCH_MAX_SIZE``);
on the embedded default, where the classifier runs inside the Bento server and only the
front reaches it, the worker posts the chunk's raw crops to the front's
``POST /v1/batches/crops`` (one request per ``CROPS_PER_CALL``), which puts them on the
model's batching queue. Either way: no per-image request, message or transaction.

Repoint this module, and only this one, when the classifier path moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jobs.classifier_client import front_auth_headers, is_transient, post_classifier
from jobs.resources import Resources
from model_store.answers import model_block, top_k_rows
from visionqueue.core.errors import Unavailable, Unprocessable
from visionqueue.dataplane.priority import Priority

# A batch's calls are bulk work: behind interactive /predict and jobs (docs/priority.md).
PRIORITY = Priority.BULK
CROPS_PER_CALL = 64  # 64 crops of 224x224x3 = 9.6 MB, under VQ_MAX_UPLOAD_BYTES' default


@dataclass(frozen=True)
class ChunkAnswer:
    """Each crop's top-k predictions, the model block and the preprocessing that ran."""

    predictions: list[list[dict[str, Any]]]
    model: dict[str, Any]
    preprocessing: dict[str, Any]


def describe_model(res: Resources, model: str | None) -> tuple[str, dict[str, Any]]:
    """The served model ``model`` means and its current version's preprocessing spec."""
    if res.classifier is not None:
        name = res.classifier.model_name(model)
        return name, dict(res.classifier.current(name)["preprocessing"])
    url = f"{res.settings.front_url}/v1/models"
    resp = _front_get(res, url)
    name = model or str(resp["default"])
    view = _front_get(res, f"{url}/{name}")
    if not view.get("ready"):
        raise Unavailable(f"model {name} is not ready", code="model_not_ready")
    return name, dict(view["preprocessing"])


def classify_chunk(res: Resources, name: str, crops: np.ndarray, top_k: int) -> ChunkAnswer:
    """Classify ``(N, S, S, 3)`` uint8 crops on ``name``; ``Unavailable`` is worth a retry."""
    if res.classifier is not None:
        probs, version = res.classifier.classify(name, crops, PRIORITY)
        return ChunkAnswer(
            [top_k_rows(row, version["labels"], top_k) for row in probs],
            model_block(name, version),
            dict(version["preprocessing"]),
        )
    # a call must fit the front's body cap (VQ_MAX_UPLOAD_BYTES), whatever an operator set
    per_call = max(1, min(CROPS_PER_CALL, res.settings.server.max_upload_bytes // crops[0].nbytes))
    answers = [
        _front_crops(res, name, crops[i : i + per_call], top_k)
        for i in range(0, len(crops), per_call)
    ]
    tags = {a["model"]["tag"] for a in answers}
    if len(tags) != 1:
        raise Unavailable(f"{name} switched versions during the chunk", code="model_not_ready")
    return ChunkAnswer(
        [row for a in answers for row in a["predictions"]],
        answers[0]["model"],
        answers[0]["preprocessing"],
    )


def _front_get(res: Resources, url: str) -> dict[str, Any]:
    try:
        resp = res.http.get(url, headers=front_auth_headers(res.settings.server))
    except Exception as exc:
        raise Unavailable("the front could not be reached", code="classifier_unavailable") from exc
    if resp.status_code != 200:
        _raise(resp.status_code, url)
    return dict(resp.json())


def _front_crops(res: Resources, name: str, crops: np.ndarray, top_k: int) -> dict[str, Any]:
    n, h, w, c = crops.shape
    resp = post_classifier(
        res.http,
        f"{res.settings.front_url}/v1/batches/crops",
        content=np.ascontiguousarray(crops).tobytes(),
        params={
            "model": name,
            "top_k": top_k,
            "shape": f"{n},{h},{w},{c}",
            "priority": PRIORITY.label,
        },
        headers={
            **front_auth_headers(res.settings.server),
            "Content-Type": "application/octet-stream",
        },
    )
    if resp.status_code != 200:
        _raise(resp.status_code, "/v1/batches/crops")
    return dict(resp.json())


def _raise(status: int, route: str) -> None:
    message = f"the front answered {status} to {route}"
    if is_transient(status):
        raise Unavailable(message, code="classifier_unavailable")
    raise Unprocessable(message, code=f"classifier_http_{status}")
