"""The web page at ``/``: try a model, submit jobs and watch them (static files in ``ui/``).

The page is plain HTML, CSS and JavaScript modules that call the public API from the
browser; nothing here runs on the ``/predict`` or job paths. It replaces BentoML's default
index page (which loads Google Tag Manager): the front's routes are matched before it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

from visionqueue.api.predict import MAX_TOP_K
from visionqueue.api.submit import MAX_IMAGES_PER_REQUEST
from visionqueue.core.errors import NotFound
from visionqueue.core.settings import Settings, get_settings

UI_DIR = Path(__file__).parent / "ui"
# The only files served under /ui/: no directory listing, no path from the request.
ASSETS = {
    "app.js": "text/javascript",
    "api.js": "text/javascript",
    "dom.js": "text/javascript",
    "try.js": "text/javascript",
    "jobs.js": "text/javascript",
    "batches.js": "text/javascript",
    "state.js": "text/javascript",
    "app.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return None


def content_security_policy(settings: Settings) -> str:
    """Return the page's CSP: its own scripts only (no inline script, no eval), no other host.

    Images may also come from the S3 endpoint that signs job image URLs, and from ``blob:``
    (the preview of a file the user picked).
    """
    image_sources = ["'self'", "blob:"]
    s3_origin = _origin(settings.s3.public_endpoint or settings.s3.endpoint)
    if s3_origin:
        image_sources.append(s3_origin)
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {' '.join(image_sources)}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def page_config(settings: Settings) -> dict[str, Any]:
    """What the page needs to know before it calls the API (no secret, nothing per user)."""
    return {
        "api_keys": bool(settings.server.api_keys),
        "max_upload_bytes": settings.server.max_upload_bytes,
        "max_top_k": MAX_TOP_K,
        "max_images_per_request": MAX_IMAGES_PER_REQUEST,
    }


@router.get("/")
async def index() -> FileResponse:
    """Serve the page with its Content-Security-Policy."""
    headers = {
        **COMMON_HEADERS,
        "Content-Security-Policy": content_security_policy(get_settings()),
        "X-Frame-Options": "DENY",
    }
    return FileResponse(UI_DIR / "index.html", media_type="text/html", headers=headers)


@router.get("/ui/config.json")
async def config() -> JSONResponse:
    """Tell the page whether API keys are on and how large an upload may be."""
    return JSONResponse(page_config(get_settings()), headers=COMMON_HEADERS)


@router.get("/ui/{name}")
async def asset(name: str) -> FileResponse:
    """Serve one of the page's own files."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no file {name} in the web page")
    return FileResponse(UI_DIR / name, media_type=media_type, headers=COMMON_HEADERS)
