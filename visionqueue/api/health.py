"""Liveness and readiness of the front, with the model and weights that answer.

``/livez`` (and ``/healthz``) say the process is up. ``/readyz`` says whether the front can
do its work: the classifier answers with a model, and the database, the image store and
the broker answer. The backend probes are reused for ``VQ_HEALTH_CACHE_S`` (per front
worker), so a flood of probes costs one round of queries per interval.

BentoML answers these paths itself; ``visionqueue.api.middleware.health`` hands them to the
routes below instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from model_store.weights import is_demo
from visionqueue.api.probe_cache import CachedProbe
from visionqueue.api.resources import FrontResources, check_backends
from visionqueue.core.errors import VQError

if TYPE_CHECKING:
    from visionqueue.dataplane.registry import ServedModels

HEALTH_PATHS = ("/livez", "/healthz", "/readyz")


class FrontHealth:
    """The readiness policy of one front worker: every model first, then every backend."""

    def __init__(self, models: ServedModels, resources: FrontResources, ttl_s: float) -> None:
        self._models = models
        self._backends = CachedProbe(lambda: check_backends(resources), ttl_s)

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """Return (status, body): 200 when everything answers, else 503 with the reasons.

        ``model`` is the default model (as before several could be served); ``models``
        reports each served model, and each is a check of its own (``model:NAME``).
        """
        checks: dict[str, str] = {}
        body: dict[str, Any] = {"models": {}}
        demo = []
        for name in self._models.names:
            check = "model" if name == self._models.default.name else f"model:{name}"
            try:
                info = await self._models.info(name)
            except VQError as exc:
                checks[check] = exc.message
                body["models"][name] = {"ready": False, "reason": exc.message}
                continue
            checks[check] = "ok"
            summary = {k: info[k] for k in ("tag", "weights", "device", "backend")}
            body["models"][name] = {"ready": True, **summary}
            if check == "model":
                body["model"] = summary
            if is_demo(info["weights"]):
                demo.append(name)
        if demo:
            body["warning"] = (
                f"serving random-init demo models ({', '.join(demo)}): predictions are meaningless"
            )
        checks.update(await anyio.to_thread.run_sync(self._backends.get))
        ready = all(v == "ok" for v in checks.values())
        reasons = {k: v for k, v in checks.items() if v != "ok"}
        body = {"status": "ready" if ready else "not_ready", "ready": ready, **body}
        body["checks"] = checks
        if reasons:
            body["reason"] = "; ".join(f"{k}: {v}" for k, v in reasons.items())
        return (200 if ready else 503), body


router = APIRouter(include_in_schema=False)


@router.api_route("/livez", methods=["GET", "HEAD"])
@router.api_route("/healthz", methods=["GET", "HEAD"])
async def live() -> JSONResponse:
    """Answer while the process serves requests."""
    return JSONResponse({"status": "alive"})


@router.api_route("/readyz", methods=["GET", "HEAD"])
async def ready(request: Request) -> JSONResponse:
    """Answer 200 when the model and every backend answer, else 503 with the reasons."""
    health: FrontHealth | None = getattr(request.app.state, "health", None)
    if health is None:
        return JSONResponse({"status": "starting", "ready": False}, status_code=503)
    status, body = await health.readiness()
    return JSONResponse(body, status_code=status)
