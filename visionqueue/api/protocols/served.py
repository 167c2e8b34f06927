"""What the protocol adapters serve: the front service and the served models.

Each served model (``VQ_MODELS``, ``visionqueue.api.served_models``) answers to its name and
to its current version (the tag's version); any other name or version is a 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
from starlette.requests import Request

from visionqueue.api.served_models import served_models
from visionqueue.core.errors import ModelNotReady


class Front(Protocol):
    """The front service's methods the adapters call (``service.VisionQueue``)."""

    async def model_info(self, model: str | None = None) -> dict[str, Any]: ...

    async def classify_images(
        self, images: list[bytes] | list[np.ndarray], model: str | None = None
    ) -> tuple[np.ndarray, list[str], dict[str, Any]]: ...

    async def classify_upload(
        self, data: bytes | Path, top_k: int, model: str | None = None
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    info: dict[str, Any]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.info["labels"])


def current_front(request: Request) -> Front:
    """Return the front service this app was attached to (503 while the server starts)."""
    front = getattr(request.app.state, "front", None)
    if front is None:
        raise ModelNotReady("the service is starting", retry_after=2)
    return cast(Front, front)


def name_and_version(tag: str) -> tuple[str, str]:
    """Split a model tag ``name:version``."""
    name, _, version = tag.partition(":")
    return name, version


async def served_model(
    request: Request, name: str, version: str | None = None, fresh: bool = True
) -> ServedModel:
    """Return the served model called ``name`` (at ``version``, if given); 404 otherwise.

    ``fresh=False`` answers from the last description the classifier gave (no call into it
    per request); ``ServedModels.lookup`` says when it asks again.
    """
    registry = served_models(request)
    info = await registry.lookup(name, version, fresh)
    # the name clients use is the served name, whatever the stored model behind it is called
    return ServedModel(registry.get(name).name, name_and_version(info["tag"])[1], info)
