"""The classifier service over HTTP, for workers on the direct path (``VQ_CLASSIFIER_URL``).

The synchronous twin of the data plane's remote transport, on the same definitions
(docs/dataplane.md): BentoML's JSON protocol, as the front's remote dependency speaks it:
``POST /packed_{api}`` with ``{"crops": [...]}`` (``visionqueue.dataplane.crops_wire``) answers
wire rows (``visionqueue.dataplane.rows``), ``POST /model_info`` describes a model's current
version and every version it has served (kept in the registry's ``VersionBook``).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np

from model_store.serving import ServedSpec
from visionqueue.core.errors import ModelNotReady, Unavailable, Unprocessable
from visionqueue.core.settings import ServerSettings
from visionqueue.dataplane import rows as answer_rows
from visionqueue.dataplane.crops_wire import pack_crops, prioritized_api
from visionqueue.dataplane.priority import JOB_PRIORITY, Priority
from visionqueue.dataplane.registry import find_served, served_entries


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


def front_auth_headers(server: ServerSettings) -> dict[str, str]:
    """The workers' credential for their calls to the front: ``VQ_SERVICE_TOKEN``, else
    (before it existed) the first of ``VQ_API_KEYS``, else none (keys off)."""
    token = server.service_token.get_secret_value()
    if not token and server.api_keys:
        token = server.api_keys[0].get_secret_value()
    return {"Authorization": f"Bearer {token}"} if token else {}


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
        self._models = served_entries(specs)  # the front's registry entries, without transport
        self._max_batch = max_batch

    def model_name(self, model: str | None) -> str:
        """The served model called ``model`` (the default for None or ""); 404 otherwise."""
        return find_served(self._models, model).name

    def current(self, name: str, fresh: bool = False) -> dict[str, Any]:
        """The description of ``name``'s current version (asked once, then on a new tag id)."""
        book = self._models[name].book
        if fresh or book.current is None:
            return book.learn(self._post("model_info", {"name": name}))
        return book.current

    def classify(
        self, name: str, crops: np.ndarray, priority: Priority = JOB_PRIORITY
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Classify ``(N, H, W, 3)`` uint8 crops on ``name``'s priority queue in ``priority``
        (one call per ``VQ_BATCH_MAX_SIZE``; ``prioritized_{api}``, docs/priority.md); return
        ``(N, C)`` probabilities and the version that ran."""
        api = prioritized_api(self._models[name].api)
        size = self._max_batch
        calls = [
            {"crops": pack_crops(crops[i : i + size]), "priority": priority.label}
            for i in range(0, len(crops), size)
        ]
        answer = answer_rows.unpack(
            np.concatenate([np.asarray(self._post(api, call), np.float32) for call in calls])
        )
        tag_id = answer.one_version()
        if tag_id is None:
            raise ModelNotReady(f"{name} is switching versions; retry", retry_after=1)
        book = self._models[name].book
        if not book.knows(tag_id):
            self.current(name, fresh=True)  # a promotion happened: learn the new version
        return answer.probs, book.ran(name, tag_id)

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
