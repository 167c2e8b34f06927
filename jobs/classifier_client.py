"""The workers' client of the classifier service, for the crops they classify without the front.

``ClassifierClient`` chunks a batch's crops, reads the answer's wire rows
(``visionqueue.dataplane.rows``) and keeps the versions they name (the registry's
``VersionBook``) over a ``Wire``:

- ``HttpWire``, a classifier served on its own (``VQ_CLASSIFIER_URL``): the synchronous twin
  of the data plane's remote transport (docs/dataplane.md), BentoML's JSON protocol:
  ``POST /prioritized_{api}`` with packed crops (``visionqueue.dataplane.crops_wire``), ``POST
  /model_info`` for a model's current version and every version it has served;
- ``jobs.crop_socket_wire.SocketWire``, the crop sockets of the classifier the front started
  on this host.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import httpx
import numpy as np

from jobs.metrics import worker_metrics
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


class Wire(Protocol):
    """How a worker reaches the classifier: its batch APIs and its model descriptions."""

    via: str  # vq_worker_classifier_calls_total's label for the calls it carries

    def call(self, api: str, crops: np.ndarray, priority: Priority) -> np.ndarray:
        """Classify ``(N, S, S, 3)`` uint8 crops with the batch API ``api`` in ``priority``;
        return the wire rows."""
        ...

    def describe(self, name: str) -> dict[str, Any]:
        """The classifier's ``model_info`` for ``name``."""
        ...


class HttpWire:
    """A classifier served on its own (``VQ_CLASSIFIER_URL``), over BentoML's JSON protocol."""

    via = "classifier_url"

    def __init__(self, url: str, http: httpx.Client, token: str = "") -> None:
        self.url = url.rstrip("/")
        self._http = http
        self._headers = {"Content-Type": "application/json"}
        if token:  # VQ_CLASSIFIER_TOKEN
            self._headers["Authorization"] = f"Bearer {token}"

    def call(self, api: str, crops: np.ndarray, priority: Priority) -> np.ndarray:
        body = {"crops": pack_crops(crops), "priority": priority.label}
        return np.asarray(self._post(prioritized_api(api), body), np.float32)

    def describe(self, name: str) -> dict[str, Any]:
        return dict(self._post("model_info", {"name": name}))

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


class ClassifierClient:
    """Classify crops on a model's batch API over ``wire``; learn the versions its rows name."""

    def __init__(self, wire: Wire, specs: list[ServedSpec], max_batch: int) -> None:
        self.wire = wire
        self._models = served_entries(specs)  # the front's registry entries, without transport
        self._max_batch = max_batch

    def model_name(self, model: str | None) -> str:
        """The served model called ``model`` (the default for None or ""); 404 otherwise."""
        return find_served(self._models, model).name

    def current(self, name: str, fresh: bool = False) -> dict[str, Any]:
        """The description of ``name``'s current version (asked once, then on a new tag id)."""
        book = self._models[name].book
        if fresh or book.current is None:
            return book.learn(self.wire.describe(name))
        return book.current

    def classify(
        self, name: str, crops: np.ndarray, priority: Priority = JOB_PRIORITY
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Classify ``(N, H, W, 3)`` uint8 crops on ``name``'s priority queue in ``priority``
        (one call per ``VQ_BATCH_MAX_SIZE``, docs/priority.md); return ``(N, C)``
        probabilities and the version that ran."""
        api, size = self._models[name].api, self._max_batch
        calls = worker_metrics().classifier_calls.labels(via=self.wire.via)
        rows = []
        for i in range(0, len(crops), size):
            rows.append(self.wire.call(api, crops[i : i + size], priority))
            calls.inc()
        answer = answer_rows.unpack(np.concatenate(rows))
        tag_id = answer.one_version()
        if tag_id is None:
            raise ModelNotReady(f"{name} is switching versions; retry", retry_after=1)
        book = self._models[name].book
        if not book.knows(tag_id):
            self.current(name, fresh=True)  # a promotion happened: learn the new version
        return answer.probs, book.ran(name, tag_id)
