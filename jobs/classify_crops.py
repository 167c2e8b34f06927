"""The one way a worker classifies: crop here, send the crops; the adapter to the classifier path.

Jobs and dataset batches both fetch their images, decode and crop them in the worker (with
the front's own code, at the worker's lowered CPU priority: docs/priority.md) and send a
batch's crops in few calls, in their class of work. Three routes, the same answer:

- with ``VQ_CLASSIFIER_URL`` the worker calls the classifier service itself
  (``ClassifierClient`` over ``HttpWire``: packed crops, one call per ``VQ_BATCH_MAX_SIZE``);
- on the embedded default the classifier runs inside the Bento server. A worker on the same
  host sends raw crops straight into its crop sockets (``jobs.crop_socket_wire``, one call
  per ``VQ_BATCH_MAX_SIZE``), which the front names (``GET /v1/batches/crops/classifier``):
  the front, at the server's CPU priority, never touches them;
- a worker that cannot open those sockets (another host or container,
  ``VQ_CLASSIFIER_TRANSPORT=http``, a front from before the route) posts the raw crops to the
  front's ``POST /v1/batches/crops`` (one request per ``CROPS_PER_CALL``), which puts them on
  the model's priority queue.

No per-image request on any of them.

Repoint this module, and only this one, when the classifier path moves.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from jobs.classifier_client import (
    ClassifierClient,
    front_auth_headers,
    is_transient,
    post_classifier,
)
from jobs.crop_socket_wire import CropSocketsGone, SocketWire, reachable
from jobs.metrics import worker_metrics
from jobs.resources import Resources
from model_store.answers import model_block, top_k_rows
from model_store.crops import prepare_crop
from model_store.preprocess import Preprocessing
from visionqueue.core.errors import Unavailable, Unprocessable, VQError
from visionqueue.dataplane.crop_retry import CropForVersion
from visionqueue.dataplane.priority import Priority
from visionqueue.dataplane.registry import configured_specs

CROPS_PER_CALL = 64  # 64 crops of 224x224x3 = 9.6 MB, under VQ_MAX_UPLOAD_BYTES' default
# the front asks the classifier to describe its model within 5 s: under load a first ask can
# miss that, and a job that failed on it waits out a retry's backoff
DESCRIBE_PAUSES_S = (0.5, 1.0)
# how a front from before GET /v1/batches/crops/classifier answers it: unknown, or refused to
# the workers' service token (which opened only the routes that front had)
OLDER_FRONT = frozenset({401, 403, 404})


@dataclass(frozen=True)
class ChunkAnswer:
    """Each crop's top-k predictions, the model block and the preprocessing that ran."""

    predictions: list[list[dict[str, Any]]]
    model: dict[str, Any]
    preprocessing: dict[str, Any]


Predicted = tuple[list[dict[str, Any]], str]  # an image's top-k predictions, how it was cropped


@dataclass(frozen=True)
class Cropped:
    """What became of each image (its predictions, or the error that ends it) and the model
    block of the version that ran (None when no image could be cropped)."""

    outcomes: list[Predicted | VQError]
    model: dict[str, Any] | None


def describe_model(res: Resources, model: str | None) -> tuple[str, dict[str, Any]]:
    """The served model ``model`` means and its current version's preprocessing spec.

    On the embedded default the front is asked once per process and model; an answer made
    by a version with other preprocessing updates it (``crop_and_classify``).
    """
    if res.classifier is not None:
        return _described(res.classifier, model)
    known = res.front_models
    if model in known:
        return known[model]
    for pause in DESCRIBE_PAUSES_S:
        try:
            known[model] = _describe_via_front(res, model)
            return known[model]
        except Unavailable:
            time.sleep(pause)  # a worker's first batch, while the classifier is busy
    known[model] = _describe_via_front(res, model)
    return known[model]


def local_classifier(res: Resources) -> ClassifierClient | None:
    """The crop sockets of the front's classifier, when this process can open them; None:
    post to the front. Asked of the front once per process (again after the sockets went)."""
    if not res.local_checked:
        res.local = _open_local(res)  # the front unreachable: Unavailable, asked next time
        res.local_checked = True
    return res.local


def _open_local(res: Resources) -> ClassifierClient | None:
    model = res.settings.model
    if model.classifier_transport != "socket":
        return None
    url = f"{res.settings.front_url}/v1/batches/crops/classifier"

    def ask_front(name: str | None) -> dict[str, Any]:
        return _front_get(res, url, {"model": name} if name else None)

    try:
        resp = res.http.get(url, headers=front_auth_headers(res.settings.server))
    except httpx.HTTPError as exc:  # asked again on the next attempt
        raise Unavailable("the front could not be reached", code="classifier_unavailable") from exc
    if resp.status_code in OLDER_FRONT:  # a front from before the route: its crops route it is
        return None
    if resp.status_code != 200:
        raise front_error(resp, url)  # starting, overloaded: asked again on the next attempt
    paths = [Path(p) for p in resp.json().get("sockets", [])]
    if not reachable(paths):  # another host or container, another user, or HTTP only
        return None
    return ClassifierClient(
        SocketWire(ask_front, paths), configured_specs(model), model.batch_max_size
    )


def _forget_local(res: Resources) -> None:
    """The crop sockets went (a restarted server): ask the front again on the next call."""
    res.local, res.local_checked = None, False
    res.front_models.clear()


def _described(client: ClassifierClient, model: str | None) -> tuple[str, dict[str, Any]]:
    name = client.model_name(model)
    return name, dict(client.current(name)["preprocessing"])


def _describe_via_front(res: Resources, model: str | None) -> tuple[str, dict[str, Any]]:
    local = local_classifier(res)
    return _described(local, model) if local is not None else _describe_at_front(res, model)


def _describe_at_front(res: Resources, model: str | None) -> tuple[str, dict[str, Any]]:
    url = f"{res.settings.front_url}/v1/models"
    name = model or str(_front_get(res, url)["default"])
    view = _front_get(res, f"{url}/{name}")
    if not view.get("ready"):  # the front could not reach the classifier in time
        raise Unavailable(f"model {name} is not ready", code="model_not_ready")
    return name, dict(view["preprocessing"])


def crop_and_classify(
    res: Resources,
    model: str | None,
    sources: Sequence[bytes | VQError],
    crop_pool: ThreadPoolExecutor,
    top_k: int,
    priority: Priority,
) -> Cropped:
    """Crop every image for the model's current version and classify the crops in few calls.

    ``sources`` are encoded images or the ``VQError`` that already ended one (a missing
    object); a bad image gets its own error, never the others'. Crops made for a version a
    promotion replaced meanwhile are made again for the version that ran. ``Unavailable``
    (the classifier, the front) is worth a retry of the whole call.
    """
    settings = res.settings
    max_pixels, draft = settings.server.max_image_pixels, settings.model.jpeg_draft
    name, spec = describe_model(res, model)

    def crop(data: bytes | VQError, prep: Preprocessing) -> tuple[np.ndarray, str] | VQError:
        if isinstance(data, VQError):
            return data
        try:
            return prepare_crop(data, max_pixels, draft, prep)
        # decode_image maps every decode failure to InvalidImage: anything else is a bug,
        # which fails the caller's attempt (and is retried)
        except VQError as exc:  # corrupt, not an image, too large: its own error
            return exc

    attempts = CropForVersion(Preprocessing.from_spec(spec))
    crops: list[tuple[np.ndarray, str] | VQError] = []
    answer = None
    for prep in attempts:
        crops = list(crop_pool.map(crop, sources, [prep] * len(sources)))
        good = [c for c in crops if not isinstance(c, VQError)]
        if not good:
            return Cropped([c for c in crops if isinstance(c, VQError)], None)
        answer = classify_crops(
            res, name, np.stack([pixels for pixels, _ in good]), top_k, priority
        )
        attempts.ran({"preprocessing": answer.preprocessing})
    assert answer is not None  # CropForVersion hands out at least one attempt
    if res.classifier is None:  # what the next call should crop for
        res.front_models[model] = (name, dict(answer.preprocessing))
    rows = iter(answer.predictions)
    outcomes = [c if isinstance(c, VQError) else (next(rows), c[1]) for c in crops]
    return Cropped(outcomes, answer.model)


def classify_crops(
    res: Resources, name: str, crops: np.ndarray, top_k: int, priority: Priority
) -> ChunkAnswer:
    """Classify ``(N, S, S, 3)`` uint8 crops on ``name`` in ``priority``; ``Unavailable`` is
    worth a retry."""
    direct = res.classifier or res.local
    if direct is not None:
        try:
            probs, version = direct.classify(name, crops, priority)
        except CropSocketsGone:
            _forget_local(res)  # the attempt is retried: through whatever the front says then
            raise
        return ChunkAnswer(
            [top_k_rows(row, version["labels"], top_k) for row in probs],
            model_block(name, version),
            dict(version["preprocessing"]),
        )
    # a call must fit the front's body cap (VQ_MAX_UPLOAD_BYTES), whatever an operator set
    per_call = max(1, min(CROPS_PER_CALL, res.settings.server.max_upload_bytes // crops[0].nbytes))
    answers = [
        _front_crops(res, name, crops[i : i + per_call], top_k, priority)
        for i in range(0, len(crops), per_call)
    ]
    tags = {a["model"]["tag"] for a in answers}
    if len(tags) != 1:
        raise Unavailable(f"{name} switched versions during the call", code="model_not_ready")
    return ChunkAnswer(
        [row for a in answers for row in a["predictions"]],
        answers[0]["model"],
        answers[0]["preprocessing"],
    )


def _front_get(res: Resources, url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
    try:
        resp = res.http.get(url, params=params, headers=front_auth_headers(res.settings.server))
    except httpx.HTTPError as exc:
        raise Unavailable("the front could not be reached", code="classifier_unavailable") from exc
    if resp.status_code != 200:
        raise front_error(resp, url)
    return dict(resp.json())


def _front_crops(
    res: Resources, name: str, crops: np.ndarray, top_k: int, priority: Priority
) -> dict[str, Any]:
    n, h, w, c = crops.shape
    resp = post_classifier(
        res.http,
        f"{res.settings.front_url}/v1/batches/crops",
        content=np.ascontiguousarray(crops).tobytes(),
        params={
            "model": name,
            "top_k": top_k,
            "shape": f"{n},{h},{w},{c}",
            "priority": priority.label,
        },
        headers={
            **front_auth_headers(res.settings.server),
            "Content-Type": "application/octet-stream",
        },
    )
    if resp.status_code != 200:
        raise front_error(resp, "/v1/batches/crops")
    worker_metrics().classifier_calls.labels(via="front").inc()
    return dict(resp.json())


def front_error(resp: httpx.Response, route: str) -> VQError:
    """The error a front's answer means, with the front's own code when it gave one
    (``model_not_found``, ``model_not_ready``...): transient ones are ``Unavailable``."""
    try:
        error = resp.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code = "classifier_unavailable" if is_transient(resp.status_code) else ""
        code = code or f"classifier_http_{resp.status_code}"
        message = f"the front answered {resp.status_code} to {route}"
    if is_transient(resp.status_code):
        return Unavailable(message, code=code)
    return Unprocessable(message, code=code)
