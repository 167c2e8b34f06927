"""Send the health probes to the front's own routes (``visionqueue.api.health``).

BentoML serves ``/livez``, ``/healthz`` and ``/readyz`` itself, ahead of any mounted app, with
a bare body; the front answers them with the model that serves and the backends' state.
Probes skip authentication, limits and the envelope: a 503 keeps its readiness body.
"""

from __future__ import annotations

from visionqueue.api.health import HEALTH_PATHS
from visionqueue.api.middleware.asgi import ASGIApp, Receive, Scope, Send


class HealthRoutes:
    """Hand GET/HEAD health probes to ``health_app``; everything else to the next app."""

    def __init__(self, app: ASGIApp, health_app: ASGIApp) -> None:
        self.app = app
        self.health_app = health_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope.get("path") in HEALTH_PATHS
            and scope["method"] in ("GET", "HEAD")
        ):
            await self.health_app(scope, receive, send)
            return
        await self.app(scope, receive, send)
