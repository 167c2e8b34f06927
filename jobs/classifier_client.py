"""The classifier service over HTTP, for workers on the direct path (``VQ_CLASSIFIER_URL``).

BentoML's JSON protocol, as the front's remote dependency speaks it: ``POST
/prioritized_{api}`` with ``{"crops": [...], "work_class": ...}`` (``model_store.wire``; the
classifier's priority queue, ``model_store.priority``) answers ``(N, C + 2)`` rows (probabilities,
the batch's forward seconds, the id of the tag that ran it; ``service.py``), and
``POST /model_info`` describes a model's current version and every version it has served.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np

from model_store.priority import WorkClass
from model_store.serving import ServedSpec
from model_store.wire import pack_crops, prioritized_api
from visionqueue.core.errors import ModelNotFound, ModelNotReady, Unavailable, Unprocessable


def post_classifier(http: httpx.Client, url: str, **request: Any) -> httpx.Response:
    """POST to the classifier (or the front's ``/predict``); one that cannot be reached is
    ``Unavailable``, so the job is retried."""
    try:
        return http.post(url, **request)
    except httpx.HTTPError as exc:
        raise Unavailable(
            f"the classifier could not be reached ({type(exc).__name__})",
            code="classifier_unavailable",
        ) from exc


REFUSED_CREDENTIALS = (401, 403)


def is_transient(status: int) -> bool:
    """Whether an error status is worth a retry: a timeout, throttling, a server error, or our
    own service refusing the worker's credentials (``VQ_CLASSIFIER_TOKEN``, ``VQ_API_KEYS``).

    A refused credential is the deployment's fault, not the job's: during a token rotation,
    or until an operator fixes a typo, the job waits out its retries instead of failing.
    """
    return status in (408, 429, *REFUSED_CREDENTIALS) or status >= 500


class ClassifierClient:
    """Classify crops on a model's batch API; learn the versions its rows name."""

    def __init__(
        self,
        url: str,
        http: httpx.Client,
        specs: list[ServedSpec],
        max_batch: int,
        token: str = "",
    ) -> None:
        self.url = url.rstrip("/")
        self._http = http
        self._headers = {"Content-Type": "application/json"}
        if token:  # VQ_CLASSIFIER_TOKEN
            self._headers["Authorization"] = f"Bearer {token}"
        self._specs = {spec.name: spec for spec in specs}
        self._default = specs[0].name
        self._max_batch = max_batch
        self._current: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, dict[int, dict[str, Any]]] = {}

    def model_name(self, model: str | None) -> str:
        """The served model called ``model`` (the default for None or ""); 404 otherwise."""
        if not model:
            return self._default
        if model not in self._specs:
            raise ModelNotFound(
                f"no model named {model!r} is served here; served: {', '.join(self._specs)}"
            )
        return model

    def current(self, name: str, fresh: bool = False) -> dict[str, Any]:
        """The description of ``name``'s current version (asked once, then on a new tag id)."""
        if fresh or name not in self._current:
            described = self._post("model_info", {"name": name})
            self._versions.setdefault(name, {}).update(
                {int(k): v for k, v in described["versions"].items()}
            )
            self._current[name] = {k: v for k, v in described.items() if k != "versions"}
        return self._current[name]

    def classify(
        self, name: str, crops: np.ndarray, work_class: WorkClass = WorkClass.JOBS
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Classify ``(N, H, W, 3)`` uint8 crops on ``name``'s priority queue in ``work_class``
        (one call per ``VQ_BATCH_MAX_SIZE``); return ``(N, C)`` probabilities and the version
        that ran."""
        api = prioritized_api(self._specs[name].api)
        size = self._max_batch
        calls = [
            {"crops": pack_crops(crops[i : i + size]), "work_class": work_class.label}
            for i in range(0, len(crops), size)
        ]
        rows = np.concatenate([np.asarray(self._post(api, call), np.float32) for call in calls])
        ids = {int(v) for v in rows[:, -1]}
        if len(ids) != 1:
            raise ModelNotReady(f"{name} is switching versions; retry", retry_after=1)
        tag_id = ids.pop()
        if tag_id not in self._versions.get(name, {}):
            self.current(name, fresh=True)  # a promotion happened: learn the new version
        version = self._versions[name].get(tag_id)
        if version is None:
            raise ModelNotReady(f"{name} answered from an unknown version", retry_after=1)
        self._current[name] = version
        return rows[:, :-2], version

    def _post(self, route: str, body: dict[str, Any]) -> Any:
        resp = post_classifier(
            self._http,
            f"{self.url}/{route}",
            content=json.dumps(body).encode(),
            headers=self._headers,
        )
        if resp.status_code == 200:
            return resp.json()
        message = f"the classifier answered {resp.status_code} to /{route}"
        if resp.status_code in REFUSED_CREDENTIALS:
            raise Unavailable(message, code=f"classifier_http_{resp.status_code}")
        if is_transient(resp.status_code):
            raise Unavailable(message, code="classifier_unavailable")
        raise Unprocessable(message, code=f"classifier_http_{resp.status_code}")
