"""Import any image classifier into the BentoML model store under a name of the user's choosing.

``import_classifier`` verifies everything first (the tag, the file's kind, the architecture,
the head, the output shape, the labels and the preprocessing), then writes the version in
one ``bentoml.models.create`` block: a failure leaves nothing in the store.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_store.formats import (
    ONNX,
    STATE_DICT,
    TORCHSCRIPT,
    detect_format,
    load_state_dict,
    load_torchscript,
    probe_onnx,
    probe_torch,
)
from model_store.labels import LabelsError, labels_for
from model_store.preprocess import (
    IMAGENET_PREPROCESSING,
    Preprocessing,
    PreprocessingError,
    preset_for_architecture,
)
from model_store.store import StoredModel, as_stored
from model_store.weights import WeightsError, file_sha256

logger = logging.getLogger(__name__)

FILES = {STATE_DICT: "state_dict.pt", TORCHSCRIPT: "model.ts", ONNX: "model.onnx"}
DEFAULT_ARCH = "resnet18"


@dataclass(frozen=True)
class PreprocessingOverrides:
    """The ``--resize/--crop/--mean/--std/--interpolation`` flags (None = keep the default)."""

    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None

    def apply(self, base: Preprocessing) -> Preprocessing:
        values: dict[str, Any] = {
            "resize": base.resize,
            "crop": base.crop,
            "mean": base.mean,
            "std": base.std,
            "interpolation": base.interpolation,
        }
        for field in values:
            given = getattr(self, field)
            if given is not None:
                values[field] = given
        if self.crop is not None and self.resize is None and values["resize"] < values["crop"]:
            values["resize"] = values["crop"]
        try:
            return Preprocessing(**values)
        except PreprocessingError as exc:
            raise WeightsError(f"preprocessing: {exc}") from None


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid BentoML model name (no version), else say why."""
    from bentoml import Tag

    if not name or name != name.lower() or ":" in name:
        raise WeightsError(
            f"{name!r} is not a valid model name: use lowercase letters, digits, '_', '-' and '.' "
            "(the version tag is made for you)"
        )
    try:
        Tag.from_taglike(name)
    except ValueError as exc:
        raise WeightsError(
            f"{name!r} is not a valid model name: {str(exc).split(': ')[-1]}"
        ) from None
    return name


def parse_triplet(value: str, flag: str) -> tuple[float, ...]:
    """Parse ``R,G,B`` for ``--mean``/``--std``."""
    try:
        values = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise WeightsError(f"{flag} must be three numbers R,G,B, not {value!r}") from None
    if len(values) != 3:
        raise WeightsError(f"{flag} needs 3 values (R,G,B), got {len(values)}: {value!r}")
    return values


def import_classifier(
    name: str,
    weights: Path,
    *,
    arch: str | None = None,
    labels: Path | None = None,
    overrides: PreprocessingOverrides | None = None,
) -> StoredModel:
    """Verify ``weights`` and save it as a new version of ``name``; raise ``WeightsError``."""
    import bentoml
    import torch

    from model_store.architectures import build_module, check_architecture

    check_name(name)
    kind = detect_format(weights)
    where = f"{kind} {weights}"
    overrides = overrides or PreprocessingOverrides()
    module: Any = None
    if kind == STATE_DICT:
        arch = check_architecture(arch or DEFAULT_ARCH)
        prep = overrides.apply(preset_for_architecture(arch))
        state_dict = load_state_dict(weights)
        module, num_classes = build_module(arch, state_dict, weights)
        probe_torch(module, prep.crop, where)
        architecture = f"torchvision.models.{arch}"
    else:
        if arch is not None:
            raise WeightsError(
                f"--arch applies to state_dict checkpoints only: {weights} is a {kind} file, "
                "which carries its own architecture"
            )
        prep = overrides.apply(IMAGENET_PREPROCESSING)
        if kind == TORCHSCRIPT:
            num_classes = probe_torch(load_torchscript(weights), prep.crop, where)
        else:
            num_classes = probe_onnx(weights, prep.crop, where)
        architecture = kind
    try:
        label_list, label_set = labels_for(num_classes, labels)
    except LabelsError as exc:
        raise WeightsError(str(exc)) from None
    origin = f"file:{file_sha256(weights)}"
    metadata = {
        "architecture": architecture,
        "format": kind,
        "file": FILES[kind],
        "weights_origin": origin,
        "num_classes": num_classes,
        "label_set": label_set,
        "labels": list(label_list),
        "preprocessing": prep.to_spec(),
        "input_size": [3, prep.crop, prep.crop],
        "source_file": weights.name,
    }
    with bentoml.models.create(
        name,
        labels={"weights": "file", "arch": arch or kind, "format": kind},
        metadata=metadata,
        module=__name__,
    ) as ref:
        target = ref.path_of(FILES[kind])
        if kind == STATE_DICT:
            torch.save(module.state_dict(), target)
        else:
            shutil.copyfile(weights, target)
    stored = bentoml.models.get(ref.tag)
    logger.info(
        "imported %s (%s, %d classes) from %s", stored.tag, architecture, num_classes, origin
    )
    return as_stored(stored)
