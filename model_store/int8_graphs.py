"""The tools that write an int8 QDQ graph for ``model_store.quantize``: ONNX Runtime's and NNCF's.

Each takes the fp32 ONNX graph, its input name and the normalised calibration crops (one per
batch) and writes the quantized graph to ``target``; ``quantize.quantize_graph`` picks one by
recipe.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from model_store.quantize import Recipe

# accuracy control's target on its validation images: 99% (issue #29) plus a margin, as the
# held-out figure came out 0.6 points below it (99.7% -> 98.9%, docs/benchmarks-int8.md)
MIN_TOP1 = 0.995
RANKING_IMAGES = 150  # validation images NNCF ranks the layers on


def ort_static(
    source: Path,
    target: Path,
    name: str,
    batches: list[np.ndarray],
    keep: list[str],
    recipe: Recipe,
) -> Path:
    """ONNX Runtime's ``quantize_static``: int8 weights per channel, uint8 activations."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_suffix(".prep.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)

    class CropReader(CalibrationDataReader):  # type: ignore[misc]
        """The normalised calibration crops, one at a time."""

        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {name: batch}

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    quantize_static(
        str(prepared),
        str(target),
        CropReader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        # 7-bit weights: on AVX2 CPUs without VNNI the u8s8 kernels add pairs of
        # products in int16, which saturates with full-range weights
        reduce_range=recipe.reduce_range,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        calibrate_method=methods[recipe.calibration],
        nodes_to_exclude=keep,
    )
    prepared.unlink(missing_ok=True)
    return target


def nncf_static(
    source: Path, target: Path, name: str, batches: list[np.ndarray], keep: list[str]
) -> Path:
    """OpenVINO's NNCF post-training quantization of the ONNX graph (a QDQ graph out)."""
    import nncf
    import onnx

    model = onnx.load(str(source))
    dataset = nncf.Dataset(batches, lambda batch: {name: batch})
    quantized = nncf.quantize(
        model,
        dataset,
        subset_size=len(batches),
        ignored_scope=nncf.IgnoredScope(names=keep) if keep else None,
    )
    onnx.save(quantized, str(target))
    return target


def nncf_accuracy_control(
    source: Path, target: Path, name: str, batches: list[np.ndarray], checks: list[np.ndarray]
) -> Path:
    """NNCF's accuracy control: put layers back to float until top-1 agreement holds.

    The metric is the share of ``checks`` (normalised crops, one per item) whose best class on
    OpenVINO, the runtime these versions are served on, is fp32's; NNCF ranks the quantizers
    by how far they move the outputs and reverts the worst first.
    """
    import nncf
    import onnx
    import torch
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from model_store.openvino_backend import OpenVinoRunner

    threads = torch.get_num_threads()
    fp32 = OpenVinoRunner(source, threads)
    items = [(check, int(fp32.logits(check)[0].argmax())) for check in checks]

    def agreeing(candidate: Any, data: Iterable[tuple[np.ndarray, int]]) -> tuple[float, None]:
        with tempfile.TemporaryDirectory(prefix="vq-int8-check-") as tmp:
            path = Path(tmp) / "candidate.onnx"
            onnx.save(candidate, str(path))
            runner = OpenVinoRunner(path, threads)
        hits = [int(runner.logits(check)[0].argmax()) == best for check, best in data]
        return float(np.mean(hits)), None  # None: NNCF ranks layers by output differences

    quantized = nncf.quantize_with_accuracy_control(
        onnx.load(str(source)),
        nncf.Dataset(batches, lambda batch: {name: batch}),
        nncf.Dataset(items, lambda item: {name: item[0]}),
        agreeing,
        max_drop=1 - MIN_TOP1,  # fp32 agrees with itself: 1.0
        subset_size=len(batches),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            ranking_subset_size=min(RANKING_IMAGES, len(items))
        ),
    )
    onnx.save(quantized, str(target))
    return target
