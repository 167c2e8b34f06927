"""The FastAPI app mounted on the front: job routes, image downloads, API docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from visionqueue.errors import VQError


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    from visionqueue.api.resources import build_front_resources
    from visionqueue.settings import get_settings

    app.state.resources = build_front_resources(get_settings())
    yield


def create_api_app() -> FastAPI:
    """Build the ASGI app for every route that is not a BentoML API."""
    from visionqueue.api.routes import router

    app = FastAPI(
        title="VisionQueue",
        summary="Image classification: sync /predict, async jobs, signed webhooks.",
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.include_router(router)

    @app.exception_handler(VQError)
    async def vq_error(_: Request, exc: VQError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers())

    return app
