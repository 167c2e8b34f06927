"""TorchServe's inference API: ``/predictions/{name}[/{version}]`` and ``/ping``.

Scripts written for TorchServe work unchanged: ``curl -T kitten.jpg`` (a PUT of the raw
image), ``curl --data-binary @kitten.jpg`` (a POST) or a multipart form with a ``data``
file. The answer is what TorchServe's ``image_classifier`` handler returns: the top 5
labels mapped to their probabilities, best first, computed exactly as ``POST /predict``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile

from visionqueue.api.state import current_dataplane
from visionqueue.core.errors import BadRequest, MissingField, Unprocessable

router = APIRouter(tags=["TorchServe inference API"])
TOP_K = 5  # the image_classifier handler's topk
MAX_FORM_PARTS = 100


class TorchServeError(BaseModel):
    """TorchServe's error body."""

    code: int
    type: str
    message: str


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": TorchServeError} for status in (400, 401, 404, 413, 415, 422, 503)
}
_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image itself (JPEG, PNG, WebP, BMP, GIF), or a form with a 'data' file.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"data": {"type": "string", "format": "binary"}},
                    "required": ["data"],
                }
            },
        },
    }
}


@router.get(
    "/ping",
    responses={
        503: {
            "description": "The model is not loaded yet.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"status": {"type": "string"}, "message": {"type": "string"}},
                        "required": ["status"],
                    }
                }
            },
        }
    },
)
async def ping(request: Request) -> dict[str, str]:
    """``{"status": "Healthy"}`` once the model can classify."""
    await current_dataplane(request).ready()
    return {"status": "Healthy"}


async def image_bytes(request: Request) -> bytes:
    """Return the image of a prediction request: the raw body, or the form's ``data`` file."""
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        return body  # curl --data-binary says x-www-form-urlencoded: the bytes are the image
    if not options.get(b"boundary"):
        raise BadRequest("the multipart body has no boundary")
    form = await request.form(max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS)
    parts = form.getlist("data")
    if not parts:
        raise MissingField("multipart field 'data' (the image file) is required")
    if len(parts) > 1:
        raise Unprocessable("send exactly one 'data' file", code="too_many_images")
    if not isinstance(parts[0], UploadFile):
        raise Unprocessable("'data' must be a file, not a text field")
    return await parts[0].read()


async def _predict(request: Request, name: str, model_version: str | None) -> dict[str, float]:
    # classify_upload crops for the version that runs: the last description will do
    dataplane = current_dataplane(request)
    model = await dataplane.metadata(name, model_version, fresh=False)
    result = await dataplane.classify_upload(await image_bytes(request), TOP_K, model.name)
    return {p["class"]: p["confidence"] for p in result["predictions"]}


@router.api_route(
    "/predictions/{name}", methods=["POST", "PUT"], responses=ERRORS, openapi_extra=_BODY
)
async def predictions(request: Request, name: str) -> dict[str, float]:
    """Classify one image: the top 5 labels and their probabilities."""
    return await _predict(request, name, None)


@router.api_route(
    "/predictions/{name}/{model_version}",
    methods=["POST", "PUT"],
    responses=ERRORS,
    openapi_extra=_BODY,
)
async def version_predictions(request: Request, name: str, model_version: str) -> dict[str, float]:
    """Classify one image with one version of the model."""
    return await _predict(request, name, model_version)
