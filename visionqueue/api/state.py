"""What a route finds on the app once the front service attached itself (``attach_front``)."""

from __future__ import annotations

from starlette.requests import Request

from visionqueue.core.errors import ModelNotReady
from visionqueue.dataplane.plane import DataPlane
from visionqueue.dataplane.registry import ServedModels


def current_dataplane(request: Request) -> DataPlane:
    """Return the front worker's data plane, which every classifying route receives (503
    while the service starts)."""
    dataplane = getattr(request.app.state, "dataplane", None)
    if not isinstance(dataplane, DataPlane):
        raise ModelNotReady("the service is starting", retry_after=2)
    return dataplane


def served_models(request: Request) -> ServedModels:
    """Return the front's registry of served models (503 while the service starts)."""
    registry = getattr(request.app.state, "models", None)
    if not isinstance(registry, ServedModels):
        raise ModelNotReady("the service is starting", retry_after=2)
    return registry
