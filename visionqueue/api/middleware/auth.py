"""API-key authentication of the job and predict routes, and the optional /metrics token.

With ``VQ_API_KEYS`` set, ``/predict``, ``/classify``, ``/task-status``, ``/v1/jobs``, ``/v1/batches`` and the
protocol routes (``/v2/models``, ``/predictions``, ``/api``) need ``Authorization: Bearer KEY``; the caller's owner id (a hash of the key, never the key) goes
into ``scope["state"]["vq_owner"]`` for the job routes. Without keys they are open and the
owner is None. With ``VQ_METRICS_TOKEN`` set, ``/metrics`` needs ``Authorization: Bearer
TOKEN``. ``VQ_SERVICE_TOKEN`` opens the workers' calls (``/predict``, ``POST
/v1/batches/crops``, ``GET /v1/batches/crops/classifier``, ``GET /v1/models[/NAME]``) and
nothing else, with no owner: the workers then need no tenant's key. Keys are compared in
constant time.

``ClassifierTokenAuth`` guards the classifier service the same way (``VQ_CLASSIFIER_TOKEN``):
every route but the health probes, so that its unauthenticated port can leave a private network.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from visionqueue.api.middleware.asgi import ASGIApp, Receive, Scope, Send, header, send_json
from visionqueue.core.errors import error_body

# "/predict" covers TorchServe's /predictions too
PROTECTED_PREFIXES = (
    "/predict",
    "/classify",
    "/task-status",
    "/v1/jobs",
    "/v1/batches",
    "/v1/models",
    "/v1/webhook-secret",
    "/v2/models",
    "/api/",
)
METRICS_PATH = "/metrics"
# what VQ_SERVICE_TOKEN opens, and nothing else: the workers' calls to the front (the crops
# of a batch of jobs or a batch chunk, the model descriptions they read first; /predict for
# workers of an earlier release during a rolling upgrade)
SERVICE_PATH = "/predict"
SERVICE_ROUTES = frozenset(
    {
        ("POST", "/v1/batches/crops"),
        ("GET", "/v1/batches/crops/classifier"),
        ("GET", "/v1/models"),
    }
)
SERVICE_PREFIXES = (("GET", "/v1/models/"),)
# BentoML's own probes on the classifier: orchestrators ask them without credentials
PROBE_PATHS = frozenset({"/livez", "/readyz", "/healthz"})


def key_owner(api_key: str) -> str:
    """Return the owner id jobs are filed under for ``api_key`` (never the key itself)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


def bearer_token(scope: Scope) -> str | None:
    """Return the request's bearer token, or None when it sends none."""
    value = (header(scope, b"authorization") or b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


@dataclass(frozen=True)
class Verdict:
    """The outcome of an API-key check: allowed or not, and the owner the caller acts as."""

    allowed: bool
    owner: str | None = None  # None when keys are off (the anonymous owner)


class ApiKeys:
    """The configured API keys, indexed by owner id."""

    def __init__(self, keys: list[str]) -> None:
        self._by_owner = {key_owner(k): k for k in keys}

    @property
    def enabled(self) -> bool:
        return bool(self._by_owner)

    def check(self, token: str | None) -> Verdict:
        """Allow anyone when no keys are set; else only a known key, as its owner."""
        if not self.enabled:
            return Verdict(allowed=True)
        if token is None:
            return Verdict(allowed=False)
        owner = key_owner(token)
        known = self._by_owner.get(owner)
        if known is None or not hmac.compare_digest(known, token):
            return Verdict(allowed=False)
        return Verdict(allowed=True, owner=owner)


def is_service_route(method: str, path: str) -> bool:
    """Say whether ``VQ_SERVICE_TOKEN`` may open this route (the workers' calls only)."""
    return (
        path == SERVICE_PATH
        or (method, path) in SERVICE_ROUTES
        or any(method == m and path.startswith(prefix) for m, prefix in SERVICE_PREFIXES)
    )


async def refuse(send: Send, message: str) -> None:
    """Answer 401 with the envelope and a Bearer challenge."""
    await send_json(send, 401, error_body("unauthorized", message), {"www-authenticate": "Bearer"})


class ApiKeyAuth:
    """Refuse protected routes without a valid key, /metrics without its token when set."""

    def __init__(
        self, app: ASGIApp, api_keys: list[str], metrics_token: str = "", service_token: str = ""
    ) -> None:
        self.app = app
        self.keys = ApiKeys(api_keys)
        self.metrics_token = metrics_token
        self.service_token = service_token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path.startswith(PROTECTED_PREFIXES):
            token = bearer_token(scope)
            verdict = self.keys.check(token)
            if not verdict.allowed and self._service_call(scope.get("method", ""), path, token):
                verdict = Verdict(allowed=True)  # the workers' own calls: no owner, no jobs
            if not verdict.allowed:
                await refuse(send, "a valid API key is required (Authorization: Bearer KEY)")
                return
            scope.setdefault("state", {})["vq_owner"] = verdict.owner
        elif path == METRICS_PATH and self.metrics_token:
            token = bearer_token(scope) or ""
            if not hmac.compare_digest(token.encode(), self.metrics_token.encode()):
                await refuse(send, "a valid metrics token is required (Authorization: Bearer)")
                return
        await self.app(scope, receive, send)

    def _service_call(self, method: str, path: str, token: str | None) -> bool:
        """Say whether this is the workers' own credential on a route it may use."""
        return (
            bool(self.service_token)
            and is_service_route(method, path)
            and hmac.compare_digest((token or "").encode(), self.service_token)
        )


class ClassifierTokenAuth:
    """Refuse every classifier route but the probes without ``Authorization: Bearer TOKEN``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "") not in PROBE_PATHS:
            token = (bearer_token(scope) or "").encode()
            if not hmac.compare_digest(token, self.token):
                await refuse(
                    send, "a valid classifier token is required (Authorization: Bearer TOKEN)"
                )
                return
        await self.app(scope, receive, send)
