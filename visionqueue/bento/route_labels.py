"""Request metrics labelled by route template, never by the raw path a client sent.

BentoML's ``RunnerTrafficMetricsMiddleware`` labels every request series with
``scope["path"]``: other tenants' job ids and image keys appear on ``/metrics``, and a client
that requests random paths adds series for ever. The ``route-template-labels`` patch
(``patches.py``) wraps its ``__call__`` so the label is the matched route's template
(``/v1/jobs/{job_id}``, ``/predict``) or ``UNMATCHED`` for any path no route serves; the
application below still sees the real path.
"""

from __future__ import annotations

from typing import Any

UNMATCHED = "/{unmatched}"
_REAL_PATH = "vq.real_path"
_MAX_DEPTH = 64


def find_router(app: Any) -> Any | None:
    """Return the Starlette router at the bottom of a middleware chain (``.app`` links)."""
    for _ in range(_MAX_DEPTH):
        if app is None:
            return None
        if hasattr(app, "routes") and hasattr(app, "url_path_for"):
            return app
        app = getattr(app, "app", None)
    return None


def route_template(routes: list[Any], scope: dict[str, Any]) -> str | None:
    """Return the template of the route ``scope`` reaches (mounts followed), or None."""
    from starlette.routing import Match, Mount

    for route in routes:
        match, child = route.matches(scope)
        if match == Match.NONE:
            continue
        included = getattr(route, "original_router", None)  # FastAPI's include_router
        if included is not None:
            inner = route_template(list(included.routes), scope)
            if inner is None:
                continue
            return inner  # an APIRouter's routes carry its prefix already
        if isinstance(route, Mount):
            inner = route_template(list(route.routes), {**scope, **child})
            if inner is None:
                continue
            return route.path.rstrip("/") + inner
        return str(route.path)
    return None


def route_label(router: Any | None, scope: dict[str, Any]) -> str:
    """Return the metrics label of a request: its route template, or ``UNMATCHED``."""
    if router is None:
        return UNMATCHED
    try:
        return route_template(list(router.routes), dict(scope)) or UNMATCHED
    except Exception:  # a route that cannot judge this scope: never fail the request
        return UNMATCHED


class _RestorePath:
    """Hand the app below the metrics middleware the request's real path again."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if _REAL_PATH in scope:
            scope["path"] = scope.pop(_REAL_PATH)
        await self.app(scope, receive, send)


def labelled_by_template(original: Any) -> Any:
    """Wrap BentoML's metrics ``__call__`` so it reads the route template as the path."""

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if not isinstance(self.app, _RestorePath):
            self._vq_router = find_router(self.app)
            self.app = _RestorePath(self.app)
        path = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and path != "/metrics":
            scope[_REAL_PATH] = path
            scope["path"] = route_label(self._vq_router, scope)
        await original(self, scope, receive, send)

    __call__.__wrapped__ = original  # type: ignore[attr-defined]
    return __call__
