"""int8 versions of a stored model, with the evidence: ONNX Runtime static quantization.

``quantize_version`` takes a stored fp32 version (any format: a torch model is exported to
ONNX first), calibrates activation ranges on a folder of images, writes a QDQ int8 graph
(int8 weights per channel, uint8 activations) and stores it as a new version of the same
name, with an agreement report against the fp32 version on held-out images: top-1
agreement, mean top-5 overlap and the largest probability difference. Both sides run the
same uint8 crops (``to_model_input``) and the same normalisation (``normalize_numpy``), so
the report measures the quantization and nothing else. ``promotions.promote`` refuses a
version whose top-1 agreement is below ``VQ_INT8_MIN_AGREEMENT`` unless forced.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_store.preprocess import Preprocessing
from model_store.store import StoredModel
from model_store.weights import WeightsError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
INT8_FILE = "model.int8.onnx"
METHOD = "onnxruntime static QDQ: int8 weights per channel, uint8 activations, MinMax calibration"
BATCH = 16


@dataclass(frozen=True)
class Agreement:
    """How an int8 version's answers compare with its fp32 source's on the same images."""

    images: int
    top1: float  # share of images whose best class is the same
    top5_overlap: float  # mean share of the fp32 top 5 found in the int8 top 5
    max_prob_diff: float  # largest |p_int8 - p_fp32| over every class of every image
    holdout: str  # where the images came from (never used for calibration)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def image_files(folder: Path) -> list[Path]:
    """The images in ``folder`` (recursively, sorted), or ``WeightsError`` when there are none."""
    if not folder.is_dir():
        raise WeightsError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise WeightsError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_crops(files: list[Path], prep: Preprocessing) -> np.ndarray:
    """Decode and crop every image exactly as the front does: ``(N, crop, crop, 3)`` uint8."""
    from PIL import Image

    from model_store.preprocess import to_model_input

    crops = []
    for path in files:
        try:
            with Image.open(path) as image:
                crops.append(to_model_input(image.convert("RGB"), prep))
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{path} is not a readable image ({type(exc).__name__})") from None
    return np.stack(crops)


def split_files(calibration: Path, holdout: Path | None) -> tuple[list[Path], list[Path], str]:
    """Calibration and held-out images; without ``holdout``, every 2nd calibration image."""
    files = image_files(calibration)
    if holdout is not None:
        held = image_files(holdout)
        overlap = {p.resolve() for p in files} & {p.resolve() for p in held}
        if overlap:
            raise WeightsError(
                f"{len(overlap)} held-out image(s) are also calibration images: the agreement "
                "must be measured on images the calibration never saw"
            )
        return files, held, str(holdout)
    if len(files) < 2:
        raise WeightsError(f"{calibration} needs 2 images or more (half are held out)")
    return files[0::2], files[1::2], f"every 2nd image of {calibration} (not calibrated on)"


def softmax_of(runner: Any, crops: np.ndarray, prep: Preprocessing) -> np.ndarray:
    from model_store.onnx_backend import normalize_numpy, softmax

    rows = [
        softmax(runner.logits(normalize_numpy(crops[i : i + BATCH], prep.mean, prep.std)))
        for i in range(0, len(crops), BATCH)
    ]
    return np.concatenate(rows)


def agreement(fp32: np.ndarray, int8: np.ndarray, holdout: str) -> Agreement:
    """Compare two ``(N, C)`` probability tables row by row."""
    top1 = float(np.mean(fp32.argmax(axis=1) == int8.argmax(axis=1)))
    k = min(5, fp32.shape[1])
    a = np.argsort(-fp32, axis=1, kind="stable")[:, :k]
    b = np.argsort(-int8, axis=1, kind="stable")[:, :k]
    overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))
    diff = float(np.abs(fp32 - int8).max())
    return Agreement(len(fp32), round(top1, 6), round(overlap, 6), round(diff, 6), holdout)


def fp32_graph(stored: StoredModel, folder: Path) -> Path:
    """The stored version as an ONNX graph (its own file, or an export of its torch module)."""
    from model_store.onnx_backend import export_onnx

    meta = stored.metadata
    kind = str(meta.get("format", "state_dict"))
    file = Path(stored.path) / str(meta.get("file", "resnet18_state_dict.pt"))
    if meta.get("quantization"):
        raise WeightsError(f"{stored.tag} is already quantized; quantize its fp32 source")
    if kind == "onnx":
        return file
    crop = Preprocessing.from_spec(meta.get("preprocessing")).crop
    if kind == "torchscript":
        from model_store.formats import load_torchscript

        module = load_torchscript(file)
    else:
        import torch

        from model_store.architectures import build_stored

        state_dict = torch.load(file, map_location="cpu", weights_only=True)
        arch = str(meta.get("architecture", "resnet18")).rsplit(".", 1)[-1]
        module = build_stored(arch, int(meta.get("num_classes", 1000)), state_dict)
    return export_onnx(module.eval(), folder / "fp32.onnx", crop)


def quantize_graph(source: Path, target: Path, crops: np.ndarray, prep: Preprocessing) -> Path:
    """Write the static int8 (QDQ) version of the graph at ``source`` to ``target``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from model_store.formats import onnx_input
    from model_store.onnx_backend import normalize_numpy

    name, _ = onnx_input(source)
    prepared = target.with_suffix(".prep.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    batches = [normalize_numpy(crops[i : i + 1], prep.mean, prep.std) for i in range(len(crops))]

    class CropReader(CalibrationDataReader):  # type: ignore[misc]
        """The normalised calibration crops, one at a time."""

        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {name: batch}

    quantize_static(
        str(prepared),
        str(target),
        CropReader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        # int8 weights: ONNX Runtime's fast u8s8 kernels. On AVX2 CPUs without VNNI they
        # can saturate; uint8 weights agreed more on a trained EfficientNet-Lite0 (71% vs
        # 47% top-1) but ran 4x slower than fp32 (docs/benchmarks-int8.md)
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    prepared.unlink(missing_ok=True)
    return target


def quantize_version(
    name: str, source_tag: str, calibration: Path, holdout: Path | None = None
) -> tuple[StoredModel, Agreement]:
    """Store an int8 version of ``source_tag`` under ``name``; return it and its agreement."""
    import bentoml
    import torch

    from model_store.importer import check_name
    from model_store.onnx_backend import OnnxRunner
    from model_store.store import as_stored, get_model

    check_name(name)
    source = get_model(source_tag)
    prep = Preprocessing.from_spec(source.metadata.get("preprocessing"))
    calib_files, held_files, held_from = split_files(calibration, holdout)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="vq-int8-") as tmp:
        folder = Path(tmp)
        fp32 = fp32_graph(source, folder)
        int8 = quantize_graph(fp32, folder / INT8_FILE, load_crops(calib_files, prep), prep)
        held = load_crops(held_files, prep)
        report = agreement(
            softmax_of(OnnxRunner(fp32, threads), held, prep),
            softmax_of(OnnxRunner(int8, threads), held, prep),
            held_from,
        )
        metadata = {
            **source.metadata,
            "format": "onnx",
            "file": INT8_FILE,
            "quantization": {
                "precision": "int8",
                "method": METHOD,
                "source": source.tag,
                "calibration": {"folder": str(calibration), "images": len(calib_files)},
                "agreement": report.to_dict(),
            },
        }
        with bentoml.models.create(
            name,
            labels={"weights": "int8", "format": "onnx", "precision": "int8"},
            metadata=metadata,
            module=__name__,
        ) as ref:
            Path(ref.path_of(INT8_FILE)).write_bytes(int8.read_bytes())
    stored = as_stored(bentoml.models.get(ref.tag))
    logger.info("quantized %s to int8 as %s: %s", source.tag, stored.tag, report)
    return stored, report


def top1_agreement(metadata: dict[str, Any]) -> float | None:
    """The stored top-1 agreement of an int8 version (None for an fp32 one)."""
    quantization = metadata.get("quantization") or {}
    value = (quantization.get("agreement") or {}).get("top1")
    return None if value is None else float(value)
