"""The BentoML model store: the default ResNet18 (``VQ_WEIGHTS``), stored versions, deletion.

Any other classifier is imported by ``model_store.importer``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from model_store.preprocess import PREPROCESSING_SPEC
from model_store.weights import (
    IMAGENET,
    RANDOM,
    WeightsError,
    build_state_dict,
    expected_origin,
    is_demo,
    random_origin,
)
from visionqueue.core.timestamps import iso_z

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "resnet18_state_dict.pt"
ARCHITECTURE = "torchvision.models.resnet18"


@dataclass(frozen=True)
class StoredModel:
    tag: str
    weights_origin: str
    path: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    created_at: str = ""

    @property
    def demo(self) -> bool:
        return is_demo(self.weights_origin)

    @property
    def name(self) -> str:
        return self.tag.split(":")[0]

    def summary(self) -> dict[str, Any]:
        """Describe the version without its label list (``models list``, ``/v1/models``)."""
        meta = self.metadata
        return {
            "tag": self.tag,
            "architecture": meta.get("architecture", ARCHITECTURE),
            "format": meta.get("format", "state_dict"),
            "classes": int(meta.get("num_classes", len(meta.get("labels", [])))),
            "weights": self.weights_origin,
            "preprocessing": meta.get("preprocessing", PREPROCESSING_SPEC),
            "created_at": self.created_at,
            **({"quantization": meta["quantization"]} if meta.get("quantization") else {}),
        }


def as_stored(model: Any) -> StoredModel:
    return StoredModel(
        tag=str(model.tag),
        weights_origin=str(model.info.metadata.get("weights_origin", "unknown")),
        path=model.path,
        metadata=dict(model.info.metadata),
        created_at=iso_z(model.info.creation_time),
    )


def import_model(spec: str, seed: int = 0, name: str = "resnet18") -> StoredModel:
    """Build the weights for ``spec`` and save them as a new model version."""
    import bentoml
    import torch

    from model_store.labels import imagenet_categories

    state_dict, origin = build_state_dict(spec, seed)
    metadata = {
        "architecture": ARCHITECTURE,
        "weights_origin": origin,
        "num_classes": 1000,
        "label_set": "imagenet1k",
        "labels": list(imagenet_categories()),
        "preprocessing": PREPROCESSING_SPEC,
        "format": "state_dict",
        "file": WEIGHTS_FILE,
        "input_size": [3, 224, 224],
    }
    with bentoml.models.create(
        name,
        labels={"weights": origin.split(":")[0], "arch": "resnet18"},
        metadata=metadata,
        module=__name__,
    ) as ref:
        torch.save(state_dict, ref.path_of(WEIGHTS_FILE))
    stored = bentoml.models.get(ref.tag)
    logger.info("imported %s with weights %s", stored.tag, origin)
    return as_stored(stored)


def find_model(origin: str, name: str = "resnet18") -> StoredModel | None:
    """Return the newest stored import of weights ``origin`` (an int8 version made from one
    keeps its origin but is not that import: ``quantization`` in its metadata)."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        models = bentoml.models.list(name)
    except NotFound:
        return None
    candidates = [
        m
        for m in models
        if m.info.metadata.get("weights_origin") == origin
        and not m.info.metadata.get("quantization")
    ]
    if not candidates:
        return None
    return as_stored(max(candidates, key=lambda m: m.info.creation_time))


def get_model(tag: str) -> StoredModel:
    """Return a stored model by tag (``name:version`` or ``name:latest``)."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return as_stored(bentoml.models.get(tag))
    except NotFound:
        raise WeightsError(f"no model {tag!r} in the BentoML store") from None
    except ValueError as exc:  # an invalid tag
        raise WeightsError(f"{tag!r} is not a valid model tag: {exc}") from None


def list_versions(name: str | None = None) -> list[StoredModel]:
    """Return every stored version (of ``name``), newest first."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        models = bentoml.models.list(name)
    except NotFound:
        return []
    ordered = sorted(models, key=lambda m: m.info.creation_time, reverse=True)
    return [as_stored(m) for m in ordered]


def delete_version(tag: str) -> None:
    """Delete one stored version (``NAME:VERSION``)."""
    import bentoml

    stored = get_model(tag)  # refuses unknown tags and NAME:latest resolves first
    bentoml.models.delete(stored.tag)


def ensure_model(
    spec: str, seed: int = 0, name: str = "resnet18", allow_fallback: bool = False
) -> StoredModel:
    """Return a stored model for ``spec``, importing it when the store lacks it.

    With ``allow_fallback`` an unreachable ``imagenet1k_v1`` download falls back to a
    seeded random-init model; the caller must announce that loudly.
    """
    if spec != IMAGENET:
        found = find_model(expected_origin(spec, seed), name)
        return found or import_model(spec, seed, name)
    found = find_model(IMAGENET, name)
    if found:
        return found
    try:
        return import_model(IMAGENET, seed, name)
    except WeightsError:
        if not allow_fallback:
            raise
        logger.warning("pretrained weights unavailable; falling back to %s", random_origin(seed))
        return find_model(random_origin(seed), name) or import_model(RANDOM, seed, name)
