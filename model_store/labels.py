"""Class labels: ImageNet's (shipped inside torchvision) or a user's labels file.

A labels file is one of:
- a text file, one label per line;
- a JSON list of strings;
- TorchServe's ``index_to_name.json``: ``{"0": "cat", "1": "dog"}`` (values may also be
  ``["n02123045", "tabby"]`` pairs, as in ``imagenet_class_index.json``: the last item is
  the label).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any


class LabelsError(ValueError):
    """A labels file is unreadable, malformed, or does not fit the model."""


@functools.cache
def imagenet_categories() -> tuple[str, ...]:
    """Return the 1000 ImageNet class names in index order."""
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _from_mapping(mapping: dict[str, Any], path: Path) -> list[Any]:
    try:
        indexed = {int(key): value for key, value in mapping.items()}
    except ValueError:
        raise LabelsError(
            f'labels file {path}: a JSON object must map class indexes ("0", "1", ...) '
            "to names, as TorchServe's index_to_name.json does"
        ) from None
    if sorted(indexed) != list(range(len(indexed))):
        missing = sorted(set(range(len(indexed))) - set(indexed))
        raise LabelsError(
            f"labels file {path}: indexes must run 0..{len(indexed) - 1} without gaps "
            f"(missing {missing[:5] or 'none; some are negative'})"
        )
    return [
        indexed[i][-1] if isinstance(indexed[i], list) and indexed[i] else indexed[i]
        for i in range(len(indexed))
    ]


def read_labels(path: Path) -> tuple[str, ...]:
    """Read a labels file (text lines, JSON list, or index_to_name.json); refuse bad ones."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelsError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"labels file {path} is unreadable ({type(exc).__name__})") from None
    stripped = text.lstrip()
    raw: list[Any]
    if stripped.startswith(("[", "{")):
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise LabelsError(f"labels file {path} is not valid JSON: {exc}") from None
        raw = _from_mapping(parsed, path) if isinstance(parsed, dict) else parsed
    else:
        raw = text.splitlines()
        while raw and not raw[-1].strip():
            raw.pop()  # a trailing newline is not a class
    return check_labels(raw, str(path))


def check_labels(raw: list[Any], source: str) -> tuple[str, ...]:
    """Return the labels as strings; refuse empty, non-string and duplicate labels."""
    if not raw:
        raise LabelsError(f"labels file {source} holds no labels")
    labels: list[str] = []
    seen: dict[str, int] = {}
    for index, value in enumerate(raw):
        if not isinstance(value, str):
            raise LabelsError(f"labels file {source}: label {index} is not a string: {value!r}")
        label = value.strip()
        if not label:
            raise LabelsError(f"labels file {source}: label {index} is empty")
        if label in seen:
            raise LabelsError(
                f"labels file {source}: duplicate label {label!r} (classes {seen[label]} "
                f"and {index})"
            )
        seen[label] = index
        labels.append(label)
    return tuple(labels)


def labels_for(num_classes: int, path: Path | None) -> tuple[tuple[str, ...], str]:
    """Return (labels, label set name) for a model with ``num_classes`` outputs."""
    if path is not None:
        labels = read_labels(path)
        if len(labels) != num_classes:
            raise LabelsError(
                f"labels file {path} has {len(labels)} labels but the model has "
                f"{num_classes} outputs"
            )
        return labels, f"file:{path.name}"
    if num_classes == 1000:
        return imagenet_categories(), "imagenet1k"
    raise LabelsError(
        f"the model has {num_classes} outputs: pass --labels FILE with {num_classes} labels "
        "(ImageNet's labels are used only for 1000 outputs)"
    )
