"""Importing any classifier: formats by content, labels, preprocessing, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from model_store.importer import PreprocessingOverrides, import_classifier
from model_store.store import list_versions
from model_store.weights import WeightsError, file_sha256
from tests.support import checkpoints

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        "pets": checkpoints.resnet18_pets(folder),
        "tools": checkpoints.mobilenet_tools(folder),
        "shapes": checkpoints.torchscript_shapes(folder),
        "fruit": checkpoints.onnx_fruit(folder),
        "folder": folder,
    }


def _store_names() -> set[str]:
    return {v.tag for v in list_versions()}


def test_state_dict_import_reads_classes_from_the_head(files: dict[str, Any]) -> None:
    weights, labels, _ = files["pets"]
    stored = import_classifier("u-pets", weights, labels=labels)
    meta = stored.metadata
    assert meta["architecture"] == "torchvision.models.resnet18"
    assert meta["format"] == "state_dict"
    assert meta["num_classes"] == 5 and tuple(meta["labels"]) == checkpoints.PETS
    assert meta["weights_origin"] == f"file:{file_sha256(weights)}"
    assert meta["input_size"] == [3, 224, 224]
    assert meta["preprocessing"]["resize"] == 256 and meta["preprocessing"]["crop"] == 224


def test_other_architecture_takes_its_torchvision_preset(files: dict[str, Any]) -> None:
    weights, labels, _ = files["tools"]  # wrapped {"state_dict": ...}, index_to_name.json
    stored = import_classifier("u-tools", weights, arch="mobilenet_v3_small", labels=labels)
    meta = stored.metadata
    assert meta["architecture"] == "torchvision.models.mobilenet_v3_small"
    assert tuple(meta["labels"]) == checkpoints.TOOLS
    # torchvision's MobileNet_V3_Small preset
    assert meta["preprocessing"]["interpolation"] == "bilinear"
    assert meta["preprocessing"]["resize"] == 256


def test_an_architecture_preset_differs_where_torchvision_says(tmp_path: Path) -> None:
    from model_store.preprocess import preset_for_architecture

    assert preset_for_architecture("efficientnet_b0").interpolation == "bicubic"
    assert preset_for_architecture("efficientnet_b1").crop == 240
    assert preset_for_architecture("convnext_tiny").resize == 236
    assert preset_for_architecture("inception_v3").crop == 299


def test_torchscript_and_onnx_are_detected_by_content(files: dict[str, Any]) -> None:
    ts, ts_labels, _ = files["shapes"]
    renamed = files["folder"] / "shapes-archive.bin"  # the name says nothing
    renamed.write_bytes(ts.read_bytes())
    stored = import_classifier("u-shapes", renamed, labels=ts_labels)
    assert stored.metadata["format"] == "torchscript"
    assert stored.metadata["num_classes"] == 4

    onnx_file, onnx_labels, _ = files["fruit"]
    prep = checkpoints.ONNX_PREP
    overrides = PreprocessingOverrides(
        resize=prep["resize"],  # type: ignore[arg-type]
        crop=prep["crop"],  # type: ignore[arg-type]
        mean=prep["mean"],  # type: ignore[arg-type]
        std=prep["std"],  # type: ignore[arg-type]
        interpolation=prep["interpolation"],  # type: ignore[arg-type]
    )
    stored = import_classifier("u-fruit", onnx_file, labels=onnx_labels, overrides=overrides)
    meta = stored.metadata
    assert meta["format"] == "onnx" and meta["num_classes"] == 6
    assert meta["input_size"] == [3, 160, 160]
    assert meta["preprocessing"]["interpolation"] == "bicubic"
    assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]


def test_label_formats(tmp_path: Path) -> None:
    from model_store.labels import read_labels

    (tmp_path / "a.txt").write_text("cat\ndog\n\n")
    (tmp_path / "b.json").write_text('["cat", "dog"]')
    (tmp_path / "c.json").write_text('{"1": "dog", "0": "cat"}')
    (tmp_path / "d.json").write_text('{"0": ["n1", "cat"], "1": ["n2", "dog"]}')
    for name in ("a.txt", "b.json", "c.json", "d.json"):
        assert read_labels(tmp_path / name) == ("cat", "dog"), name


def test_imagenet_labels_only_for_1000_outputs(files: dict[str, Any]) -> None:
    weights, _, _ = files["pets"]
    with pytest.raises(WeightsError, match="5 outputs: pass --labels"):
        import_classifier("u-nolabels", weights)
    torch.manual_seed(0)
    from torchvision.models import resnet18

    full = files["folder"] / "full.pt"
    torch.save(resnet18(weights=None).state_dict(), full)
    stored = import_classifier("u-imagenet", full)
    assert stored.metadata["label_set"] == "imagenet1k"
    assert stored.metadata["labels"][1] == "goldfish"


def _write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


class _NotAClassifier(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)  # (N, H, W): not (N, C)


def _bad_inputs(files: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    folder = files["folder"]
    pets, pets_labels, _ = files["pets"]
    onnx_file = files["fruit"][0]
    scripted = folder / "not-a-classifier.ts"
    with warnings.catch_warnings():  # torch.jit's FutureWarning: still a supported format
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_NotAClassifier()), str(scripted))
    data = pets.read_bytes()
    return [
        ("wrong arch", {"weights": pets, "arch": "mobilenet_v3_small", "labels": pets_labels},
         "does not fit --arch mobilenet_v3_small"),
        ("wrong arch, same family", {"weights": pets, "arch": "resnet50", "labels": pets_labels},
         "does not fit --arch resnet50"),
        ("unknown arch", {"weights": pets, "arch": "resnet19", "labels": pets_labels},
         "unknown architecture 'resnet19'"),
        ("label count", {"weights": pets, "labels": _write(folder, "three.txt", "a\nb\nc\n")},
         "has 3 labels but the model has 5 outputs"),
        ("duplicate labels", {"weights": pets,
                              "labels": _write(folder, "dup.txt", "a\nb\nc\nb\ne\n")},
         "duplicate label 'b'"),
        ("empty label", {"weights": pets, "labels": _write(folder, "empty.json",
                                                            '["a", "b", " ", "d", "e"]')},
         "label 2 is empty"),
        ("corrupt file", {"weights": _write(folder, "noise.pt", bytes(range(256)) * 40)},
         "not a torch state_dict checkpoint, a TorchScript archive or an ONNX model"),
        ("truncated checkpoint", {"weights": _write(folder, "half.pt", data[: len(data) // 2])},
         "corrupt or truncated zip"),
        ("truncated onnx", {"weights": _write(folder, "half.onnx",
                                              onnx_file.read_bytes()[:100_000])},
         "not a torch state_dict checkpoint"),
        ("empty file", {"weights": _write(folder, "empty.pt", b"")}, "is empty"),
        ("output not (N, C)", {"weights": scripted}, "output is not (N, C)"),
        ("mean length", {"weights": pets, "labels": pets_labels,
                         "overrides": PreprocessingOverrides(mean=(0.5, 0.5))},
         "mean needs 3 values"),
        ("std zero", {"weights": pets, "labels": pets_labels,
                      "overrides": PreprocessingOverrides(std=(0.2, 0.0, 0.2))},
         "std values must be positive"),
        ("crop over resize", {"weights": pets, "labels": pets_labels,
                              "overrides": PreprocessingOverrides(resize=200, crop=224)},
         "crop (224) must not exceed resize (200)"),
        ("arch for onnx", {"weights": onnx_file, "arch": "resnet18"},
         "--arch applies to state_dict checkpoints only"),
    ]  # fmt: skip


def test_every_bad_input_is_refused_clearly_and_leaves_nothing(files: dict[str, Any]) -> None:
    before = _store_names()
    failures = []
    for case, kwargs, expected in _bad_inputs(files):
        weights = kwargs.pop("weights")
        try:
            import_classifier("u-bad", weights, **kwargs)
        except WeightsError as exc:
            if expected not in str(exc):
                failures.append(f"{case}: {exc}")
        else:
            failures.append(f"{case}: imported")
    assert failures == []
    assert _store_names() == before  # nothing half-written


@pytest.mark.parametrize("name", ["Pets", "my pets", "pets:v2", "../pets", "x" * 64, ""])
def test_invalid_model_names_are_refused(files: dict[str, Any], name: str) -> None:
    weights, labels, _ = files["pets"]
    with pytest.raises(WeightsError, match="not a valid model name"):
        import_classifier(name, weights, labels=labels)


def test_cli_reports_a_bad_input_in_one_line_and_exits_2(files: dict[str, Any]) -> None:
    weights, _, _ = files["pets"]
    bad = _write(files["folder"], "bad-mean.txt", "\n".join(checkpoints.PETS))
    done = subprocess.run(
        [sys.executable, "-m", "visionqueue.cli", "import-model", "cli-pets", "--weights",
         str(weights), "--labels", str(bad), "--mean", "0.5,0.5", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --mean needs 3 values (R,G,B), got 2: '0.5,0.5'"
    )
    done = subprocess.run(
        [sys.executable, "-m", "model_store", "import", "cli-pets", "--weights", str(weights),
         "--labels", str(bad), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["tag"].startswith("cli-pets:") and out["classes"] == 5
    assert out["weights"] == f"file:{file_sha256(weights)}"
