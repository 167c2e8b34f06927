"""``GET /v1/models`` and ``GET /v1/models/{name}``: what this deployment serves, and how."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from model_store.weights import is_demo
from visionqueue.api.openapi_errors import error_responses
from visionqueue.api.state import served_models
from visionqueue.core.errors import VQError
from visionqueue.dataplane.registry import ServedModels

router = APIRouter(tags=["models"])

SUMMARY_FIELDS = (
    "tag",
    "architecture",
    "classes",
    "weights",
    "preprocessing",
    "device",
    "backend",
    "memory",
)


async def model_view(registry: ServedModels, name: str, labels: bool = False) -> dict[str, Any]:
    """Describe one served model: its current version, readiness and memory."""
    model = registry.get(name)
    view: dict[str, Any] = {"name": model.name, "default": model.default}
    try:
        info = await registry.info(model.name, fresh=True)
    except VQError as exc:
        return {**view, "ready": False, "reason": exc.message}
    view.update({"ready": True, **{k: info.get(k) for k in SUMMARY_FIELDS}})
    view["input_size"] = [3, info["preprocessing"]["crop"], info["preprocessing"]["crop"]]
    view["demo"] = is_demo(str(info["weights"]))
    if labels:
        view["labels"] = info["labels"]
    return view


@router.get("/v1/models", responses=error_responses(401, 503))
async def list_models(request: Request) -> Any:
    """List the served models (the default first) with their current versions."""
    registry = served_models(request)
    return {
        "default": registry.default.name,
        "models": [await model_view(registry, name) for name in registry.names],
    }


@router.get("/v1/models/{name}", responses=error_responses(401, 404, 503))
async def get_model(request: Request, name: str) -> Any:
    """Describe one served model, its labels included; 404 ``model_not_found`` otherwise."""
    return await model_view(served_models(request), name, labels=True)
