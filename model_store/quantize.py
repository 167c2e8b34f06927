"""int8 versions of a stored model, with the evidence: static quantization to a QDQ graph.

``quantize_version`` takes a stored fp32 version (any format: a torch model is exported to
ONNX first), calibrates activation ranges on a folder of images, writes a QDQ int8 graph
with one of the ``RECIPES`` (the default, ``DEFAULT_RECIPE``: ONNX Runtime, 7-bit int8
weights per channel, uint8 activations, MinMax ranges; every recipe is measured for
agreement and speed in docs/benchmarks-int8.md) and stores it as a new version of the same
name, with an agreement report against the fp32 version on held-out images, measured on
the runtime the recipe is served on (``Recipe.runtime``): top-1 agreement, mean top-5 overlap
and the largest probability difference. ``nncf-accuracy`` also sets aside every second
calibration image to validate NNCF's accuracy control on. Both sides run the
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
BATCH = 16


@dataclass(frozen=True)
class Recipe:
    """One way to make the int8 graph; its ``text`` is stored with the version."""

    name: str
    tool: str  # "onnxruntime" (quantize_static) or "nncf" (OpenVINO's NNCF)
    text: str
    calibration: str = "minmax"  # onnxruntime: minmax, percentile or entropy
    reduce_range: bool = False  # onnxruntime: 7-bit weights
    keep_float: bool = False  # the first and last weighted layers stay float
    keep_depthwise: bool = False  # with keep_float: every depthwise conv stays float too
    # nncf: NNCF's accuracy control, on validation images taken from the calibration folder
    accuracy_control: bool = False
    runtime: str = "onnxruntime"  # the backend to serve it with; its report is measured there


RECIPES = {
    r.name: r
    for r in (
        Recipe("ort-minmax", "onnxruntime", "onnxruntime static QDQ, MinMax ranges"),
        Recipe(
            "ort-minmax-7bit",
            "onnxruntime",
            "onnxruntime static QDQ, MinMax ranges, 7-bit weights",
            reduce_range=True,
        ),
        Recipe(
            "ort-percentile-7bit",
            "onnxruntime",
            "onnxruntime static QDQ, Percentile ranges, 7-bit weights",
            calibration="percentile",
            reduce_range=True,
        ),
        Recipe(
            "ort-entropy-7bit",
            "onnxruntime",
            "onnxruntime static QDQ, Entropy ranges, 7-bit weights",
            calibration="entropy",
            reduce_range=True,
        ),
        Recipe(
            "ort-minmax-7bit-ends-float",
            "onnxruntime",
            "onnxruntime static QDQ, MinMax ranges, 7-bit weights, first and last layer float",
            reduce_range=True,
            keep_float=True,
        ),
        Recipe(
            "ort-minmax-7bit-dw-float",
            "onnxruntime",
            "onnxruntime static QDQ, MinMax ranges, 7-bit weights, first, last and depthwise "
            "layers float",
            reduce_range=True,
            keep_float=True,
            keep_depthwise=True,
        ),
        Recipe("nncf", "nncf", "NNCF (OpenVINO) post-training quantization, QDQ graph"),
        Recipe(
            "nncf-ends-float",
            "nncf",
            "NNCF (OpenVINO) post-training quantization, QDQ graph, first and last layer float",
            keep_float=True,
        ),
        Recipe(
            "nncf-accuracy",
            "nncf",
            "NNCF (OpenVINO) accuracy-controlled quantization, QDQ graph: layers go back to "
            "float until top-1 agreement with fp32 on validation images (every 2nd calibration "
            "image) on OpenVINO is >= 99.5%",
            accuracy_control=True,
            runtime="openvino",
        ),
    )
}
DEFAULT_RECIPE = "ort-minmax-7bit"  # the levers measured: docs/benchmarks-int8.md


@dataclass(frozen=True)
class Agreement:
    """How an int8 version's answers compare with its fp32 source's on the same images."""

    images: int
    top1: float  # share of images whose best class is the same
    top5_overlap: float  # mean share of the fp32 top 5 found in the int8 top 5
    max_prob_diff: float  # largest |p_int8 - p_fp32| over every class of every image
    holdout: str  # where the images came from (never used for calibration)
    runtime: str = "onnxruntime"  # the backend both sides ran on

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


def agreement(
    fp32: np.ndarray, int8: np.ndarray, holdout: str, runtime: str = "onnxruntime"
) -> Agreement:
    """Compare two ``(N, C)`` probability tables row by row."""
    top1 = float(np.mean(fp32.argmax(axis=1) == int8.argmax(axis=1)))
    k = min(5, fp32.shape[1])
    a = np.argsort(-fp32, axis=1, kind="stable")[:, :k]
    b = np.argsort(-int8, axis=1, kind="stable")[:, :k]
    overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))
    diff = float(np.abs(fp32 - int8).max())
    return Agreement(len(fp32), round(top1, 6), round(overlap, 6), round(diff, 6), holdout, runtime)


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


def float_nodes(graph: Path, depthwise: bool = False) -> list[str]:
    """The first and last weighted nodes (conv, gemm, matmul), and maybe every depthwise conv."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    if not weighted:
        return []
    keep = {weighted[0].name, weighted[-1].name}
    if depthwise:
        keep |= {n.name for n in weighted if is_depthwise(n)}
    return sorted(keep)


def is_depthwise(node: Any) -> bool:
    """A grouped conv with more than one group (one filter per channel, in practice)."""
    groups = [a.i for a in node.attribute if a.name == "group"]
    return node.op_type == "Conv" and bool(groups) and groups[0] > 1


def weight_kinds(graph: Path) -> dict[str, str]:
    """Each weighted node (conv, gemm, matmul) of ``graph``: ``int8`` if it reads its weight
    through a DequantizeLinear, else ``float``."""
    import onnx

    model = onnx.load(str(graph))
    producers = {out: node for node in model.graph.node for out in node.output}
    kinds = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            weight = producers.get(node.input[1])
            int8 = weight is not None and weight.op_type == "DequantizeLinear"
            kinds[node.name] = "int8" if int8 else "float"
    return kinds


def quantize_graph(
    source: Path,
    target: Path,
    crops: np.ndarray,
    prep: Preprocessing,
    recipe: Recipe | None = None,
    validation: np.ndarray | None = None,
) -> Path:
    """Write the static int8 (QDQ) version of the graph at ``source`` to ``target``.

    ``validation`` (uint8 crops, not calibrated on) is what an accuracy-control recipe checks.
    """
    from model_store.formats import onnx_input
    from model_store.int8_graphs import nncf_accuracy_control, nncf_static, ort_static
    from model_store.onnx_backend import normalize_numpy

    recipe = recipe or RECIPES[DEFAULT_RECIPE]
    name, _ = onnx_input(source)
    batches = [normalize_numpy(crops[i : i + 1], prep.mean, prep.std) for i in range(len(crops))]
    keep = float_nodes(source, recipe.keep_depthwise) if recipe.keep_float else []
    if recipe.accuracy_control:
        if validation is None or not len(validation):
            raise WeightsError(f"recipe {recipe.name} needs validation images")
        checks = [
            normalize_numpy(validation[i : i + 1], prep.mean, prep.std)
            for i in range(len(validation))
        ]
        out = nncf_accuracy_control(source, target, name, batches, checks)
        if "int8" not in weight_kinds(out).values():
            raise WeightsError(
                f"recipe {recipe.name}: accuracy control put every layer back to float to agree "
                "on the validation images, which leaves an fp32 graph, not an int8 version (int8 "
                "answers differ most on CPUs without int8 dot products, VNNI)"
            )
        return out
    if recipe.tool == "nncf":
        return nncf_static(source, target, name, batches, keep)
    return ort_static(source, target, name, batches, keep, recipe)


def quantize_version(
    name: str,
    source_tag: str,
    calibration: Path,
    holdout: Path | None = None,
    recipe: str = DEFAULT_RECIPE,
) -> tuple[StoredModel, Agreement]:
    """Store an int8 version of ``source_tag`` under ``name``; return it and its agreement."""
    import bentoml
    import torch

    from model_store.importer import check_name
    from model_store.onnx_backend import OnnxRunner
    from model_store.openvino_backend import OpenVinoRunner
    from model_store.store import as_stored, get_model

    check_name(name)
    if recipe not in RECIPES:
        raise WeightsError(f"unknown int8 recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    chosen = RECIPES[recipe]
    source = get_model(source_tag)
    prep = Preprocessing.from_spec(source.metadata.get("preprocessing"))
    calib_files, held_files, held_from = split_files(calibration, holdout)
    check_files: list[Path] = []
    if chosen.accuracy_control:  # its validation images are calibration images set aside
        if len(calib_files) < 2:
            raise WeightsError(f"recipe {recipe} needs 2 calibration images or more")
        calib_files, check_files = calib_files[0::2], calib_files[1::2]
    runner = OpenVinoRunner if chosen.runtime == "openvino" else OnnxRunner
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="vq-int8-") as tmp:
        folder = Path(tmp)
        fp32 = fp32_graph(source, folder)
        crops = load_crops(calib_files, prep)
        checks = load_crops(check_files, prep) if check_files else None
        int8 = quantize_graph(fp32, folder / INT8_FILE, crops, prep, chosen, checks)
        held = load_crops(held_files, prep)
        report = agreement(
            softmax_of(runner(fp32, threads), held, prep),
            softmax_of(runner(int8, threads), held, prep),
            held_from,
            chosen.runtime,
        )
        calibrated: dict[str, Any] = {"folder": str(calibration), "images": len(calib_files)}
        if check_files:
            calibrated["validation_images"] = len(check_files)
        metadata = {
            **source.metadata,
            "format": "onnx",
            "file": INT8_FILE,
            "quantization": {
                "precision": "int8",
                "method": chosen.text,
                "recipe": recipe,
                "runtime": chosen.runtime,
                "source": source.tag,
                "calibration": calibrated,
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
