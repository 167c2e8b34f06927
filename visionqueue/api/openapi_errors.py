"""The error envelope in the OpenAPI document: ``responses=`` for every job route."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. not_found.")
    message: str = Field(description="What went wrong, for a human.")
    details: dict[str, Any] = Field(
        default_factory=dict, description="Extra context (limits, invalid fields), when any."
    )


class ErrorEnvelope(BaseModel):
    """Every error response: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


_MEANINGS = {
    400: "Empty, corrupt or missing image, or a malformed form.",
    401: "API keys are enabled and the key is missing or wrong.",
    404: "Unknown job (or another key's job), or an expired image link.",
    409: "The job is no longer in a state that allows this.",
    413: "The request body is over VQ_MAX_UPLOAD_BYTES.",
    415: "Not a JPEG, PNG, WebP, BMP or GIF image.",
    422: "Invalid parameters: image too large, metadata, webhook URL, query values.",
    429: "The job backlog is full; retry after Retry-After seconds.",
    503: "A dependency is down and nothing was recorded; retry after Retry-After seconds.",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
    503: {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Return FastAPI ``responses=`` documenting the error envelope for ``statuses``."""
    return {
        status: {
            "model": ErrorEnvelope,
            "description": _MEANINGS[status],
            **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
        }
        for status in statuses
    }
