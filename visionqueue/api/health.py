"""Liveness and readiness of the front, with the model and weights that answer."""

from __future__ import annotations

from typing import Any


async def front_health(kind: str) -> tuple[int, dict[str, Any]]:
    """Answer ``/livez`` (process up) or ``/readyz`` (model loaded, backends reachable)."""
    import bentoml

    if kind == "live":
        return 200, {"status": "alive"}
    service = bentoml.get_current_service()
    if service is None:
        return 503, {"status": "starting", "ready": False}
    return await service.readiness()
