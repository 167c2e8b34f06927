"""The FastAPI app mounted on the front: job routes, image downloads, health, API docs.

The app is built when ``service.py`` is imported (BentoML mounts it then) and holds nothing;
the front service hands it its worker's resources at start-up (``attach_front``).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from visionqueue.api.domain_errors import to_http_error
from visionqueue.api.health import FrontHealth
from visionqueue.api.resources import FrontResources
from visionqueue.core.errors import DomainError, VQError
from visionqueue.dataplane.plane import DataPlane


def attach_front(
    app: FastAPI,
    resources: FrontResources,
    health: FrontHealth,
    dataplane: DataPlane | None = None,
) -> None:
    """Give the app the resources its routes use, the readiness policy ``/readyz`` asks, and
    the front worker's data plane, which every route that classifies receives, with its
    registry of served models (``visionqueue.api.state``)."""
    app.state.resources = resources
    app.state.health = health
    app.state.dataplane = dataplane
    app.state.models = dataplane.models if dataplane is not None else None


def create_api_app() -> FastAPI:
    """Build the ASGI app for every route that is not a BentoML API."""
    from visionqueue.api import health
    from visionqueue.api.batches_routes import router as batches_router
    from visionqueue.api.models_routes import router as models_router
    from visionqueue.api.protocols import legacy, torchserve, v2
    from visionqueue.api.routes import router
    from visionqueue.api.webhook_secret_routes import router as webhook_secret_router
    from visionqueue.api.webui import router as web_page

    app = FastAPI(
        title="VisionQueue",
        summary="Image classification: sync /predict, async jobs, signed webhooks.",
        docs_url=None,  # /docs below shows the whole service, /predict included
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    app.include_router(batches_router)  # before /v1/jobs' router: no path overlaps
    app.include_router(router)
    app.include_router(health.router)
    app.include_router(models_router)
    app.include_router(webhook_secret_router)
    app.include_router(web_page)  # `/`: matched before BentoML's own index page
    app.include_router(v2.router)
    app.include_router(torchserve.router)
    app.include_router(legacy.router)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        # BentoML serves the merged OpenAPI (its APIs and these routes) at /docs.json and
        # bundles Swagger UI, so the page works offline too.
        return get_swagger_ui_html(
            openapi_url="/docs.json",
            title="VisionQueue API",
            swagger_js_url="/static_content/swagger-ui-bundle.js",
            swagger_css_url="/static_content/swagger-ui.css",
            swagger_favicon_url="/static_content/favicon-light-32x32.png",
        )

    @app.exception_handler(VQError)
    async def vq_error(_: Request, exc: VQError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        return await vq_error(request, to_http_error(exc))

    return app
