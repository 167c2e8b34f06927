"""The error envelope in the OpenAPI document: ``responses=`` for every job route.

``/predict`` is a BentoML API, whose generated document lists BentoML's own error bodies;
the front's middleware answers with our envelope instead, and ``document_predict_errors``
makes the served document (``/docs.json``) say so.
"""

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
    404: "Unknown job (or another key's job), an expired image link, or model_not_found.",
    409: "The job is no longer in a state that allows this.",
    413: "The request body is over VQ_MAX_UPLOAD_BYTES.",
    415: "Not a JPEG, PNG, WebP, BMP or GIF image.",
    422: "Invalid parameters: image too large, metadata, webhook URL, query values.",
    429: "The job backlog is full, or a redelivery came too soon; retry after Retry-After seconds.",
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


_PREDICT_MEANINGS = {
    **{status: _MEANINGS[status] for status in (400, 401, 413, 415)},
    404: "model_not_found: the model form field names no served model (GET /v1/models).",
    422: "top_k outside 1..20, or an image over VQ_MAX_IMAGE_PIXELS.",
    503: "The classifier is loading, overloaded or down; retry after Retry-After seconds.",
}
_ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"


def document_predict_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """Replace BentoML's error responses of ``POST /predict`` with the envelope we send."""
    operation = spec.get("paths", {}).get("/predict", {}).get("post")
    if not isinstance(operation, dict):
        return spec
    responses = {
        code: entry
        for code, entry in operation.get("responses", {}).items()
        if not str(code).startswith(("4", "5"))
    }
    for status, meaning in _PREDICT_MEANINGS.items():
        entry: dict[str, Any] = {
            "description": meaning,
            "content": {"application/json": {"schema": {"$ref": _ENVELOPE_REF}}},
        }
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        responses[str(status)] = entry
    operation["responses"] = responses
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    if "ErrorEnvelope" not in schemas:
        envelope = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(envelope.pop("$defs", {}))
        schemas["ErrorEnvelope"] = envelope
    return spec
