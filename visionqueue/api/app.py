"""The FastAPI app mounted on the front: job routes, image downloads, API docs."""

from __future__ import annotations

from fastapi import FastAPI


def create_api_app() -> FastAPI:
    """Build the ASGI app for every route that is not a BentoML API."""
    app = FastAPI(
        title="VisionQueue",
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    return app
