"""Open Inference Protocol v2 over REST (KServe, Triton, MLServer, OpenVINO Model Server).

``tritonclient.http`` and KServe clients work unchanged: server and model metadata,
liveness and readiness, and inference with JSON or binary tensors (``v2_tensors``). The
images of one request are classified together, through the classifier path ``/predict``
uses; errors are ``{"error": "..."}`` with the right status (``error_shapes``).
"""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from visionqueue.api.protocols import v2_tensors
from visionqueue.api.state import current_dataplane
from visionqueue.core.settings import get_settings
from visionqueue.dataplane.plane import tag_version
from visionqueue.dataplane.priority import SYNC_PRIORITY
from visionqueue.dataplane.requests import ClassifyRequest

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
EXTENSIONS = ["binary_tensor_data", "classification"]


class V2Error(BaseModel):
    """Every v2 error: the protocol's ``{"error": "..."}``."""

    error: str = Field(description="What went wrong, for a human.")


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": V2Error} for status in statuses}


MODEL_ERRORS = _errors(401, 404, 503)
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The inference response: JSON, or JSON then binary tensor data.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    **_errors(400, 401, 404, 413, 415, 422, 503),
}
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "An inference request object; with the binary tensor data extension, the JSON "
            "header (Inference-Header-Content-Length bytes) followed by the tensor bytes. "
            "Input IMAGE: BYTES [N] encoded images (JSON: base64 strings) or UINT8 "
            "[N, H, W, 3] RGB pixels. Output PROBABILITIES: FP32 [N, C], or with "
            '"parameters": {"classification": k} BYTES [N, k] of "score:index:label".'
        ),
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _server_version() -> str:
    try:
        return version("visionqueue")
    except PackageNotFoundError:
        return "0"


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> Any:
    """Server metadata: name, version and the protocol extensions supported."""
    return {"name": "visionqueue", "version": _server_version(), "extensions": EXTENSIONS}


@router.get("/health/live")
async def server_live() -> dict[str, bool]:
    """200 while the server process answers."""
    return {"live": True}


@router.get("/health/ready", responses=_errors(503))
async def server_ready(request: Request) -> dict[str, bool]:
    """200 once the model is loaded and can classify; 503 before."""
    await current_dataplane(request).ready()
    return {"ready": True}


def _model_metadata(name: str, model_version: str, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [model_version],
        "platform": f"visionqueue_{info.get('backend', 'resnet18')}",
        "inputs": [{"name": v2_tensors.INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {
                "name": v2_tensors.OUTPUT_NAME,
                "datatype": "FP32",
                "shape": [-1, len(info["labels"])],
            }
        ],
    }


@router.get("/models/{name}", response_model=ModelMetadata, responses=MODEL_ERRORS)
async def model_metadata(request: Request, name: str) -> Any:
    """Model metadata: its version, inputs and outputs."""
    model = await current_dataplane(request).metadata(name)
    return _model_metadata(model.name, model.version, model.info)


@router.get(
    "/models/{name}/versions/{model_version}",
    response_model=ModelMetadata,
    responses=MODEL_ERRORS,
)
async def model_version_metadata(request: Request, name: str, model_version: str) -> Any:
    """Metadata of one version of the model."""
    model = await current_dataplane(request).metadata(name, model_version)
    return _model_metadata(model.name, model.version, model.info)


@router.get("/models/{name}/ready", responses=MODEL_ERRORS)
async def model_ready(request: Request, name: str) -> dict[str, Any]:
    """200 when the model is loaded; 404 for an unknown model, 503 while it loads."""
    model = await current_dataplane(request).metadata(name)
    return {"name": model.name, "ready": True}


@router.get("/models/{name}/versions/{model_version}/ready", responses=MODEL_ERRORS)
async def model_version_ready(request: Request, name: str, model_version: str) -> dict[str, Any]:
    """200 when this version of the model is loaded."""
    model = await current_dataplane(request).metadata(name, model_version)
    return {"name": model.name, "ready": True}


async def _infer(request: Request, name: str, model_version: str | None) -> Response:
    # the answer names the version that ran, so the name is checked against the front's
    # last description: no call into the classifier per request
    model = await current_dataplane(request).metadata(name, model_version, fresh=False)
    limit = get_settings().server.max_upload_bytes
    body = v2_tensors.decompress(
        await request.body(), request.headers.get("content-encoding"), limit
    )
    parsed = v2_tensors.parse_infer_request(
        body, request.headers.get("inference-header-content-length")
    )
    # Triton's request "timeout" parameter bounds the wait (with VQ_PREDICT_DEADLINE_MS)
    deadline = time.monotonic() + parsed.timeout_s if parsed.timeout_s else None
    asked = ClassifyRequest(list(parsed.images), model.name, SYNC_PRIORITY, deadline)
    ran = await current_dataplane(request).classify(asked)
    content, headers = v2_tensors.infer_response(
        parsed, model.name, tag_version(ran.version["tag"]), ran.probs, tuple(ran.version["labels"])
    )
    return Response(content, headers=headers)


@router.post(
    "/models/{name}/infer",
    responses=INFER_RESPONSES,
    openapi_extra=_INFER_BODY,
)
async def infer(request: Request, name: str) -> Response:
    """Classify the images of the IMAGE tensor together, in one batch."""
    return await _infer(request, name, None)


@router.post(
    "/models/{name}/versions/{model_version}/infer",
    responses=INFER_RESPONSES,
    openapi_extra=_INFER_BODY,
)
async def infer_version(request: Request, name: str, model_version: str) -> Response:
    """Classify with one version of the model."""
    return await _infer(request, name, model_version)
