"""The ``onnxruntime`` backend: a torch model exported once to ONNX, or an imported ONNX file.

It runs on the execution providers ``model_store.runtimes`` chose (CUDA's when present) and
reports the one the session really enabled (``provider``).

The export is cached next to the torch.compile cache, keyed by the model tag, so a restart
loads it in a fraction of a second. Normalisation is done in NumPy with the same float32
operations, in the same order, as torchvision's preset.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from model_store.preprocess import MEAN, STD
from model_store.runtimes import CPU_PROVIDER

logger = logging.getLogger(__name__)


def export_onnx(module: Any, path: Path, size: int = 224) -> Path:
    """Export an eval-mode classifier to ``path`` with a dynamic batch dimension."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    example = torch.zeros(1, 3, size, size)
    torch.onnx.export(
        module,
        (example,),
        str(tmp),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    os.replace(tmp, path)  # atomic: concurrent workers never load a half-written file
    return path


class OnnxRunner:
    """Callable like the torch module: ``(N, 3, H, W)`` float32 in, logits out."""

    def __init__(
        self, path: Path, threads: int, providers: tuple[str, ...] = (CPU_PROVIDER,)
    ) -> None:
        import onnxruntime as ort

        self.path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle threads sleep instead of spinning: on a small box the front process needs
        # those cycles to decode the next images
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), options, providers=list(providers))
        # what the session really enabled: ORT drops a provider whose libraries fail to load
        self.provider = self._session.get_providers()[0]
        first = self._session.get_inputs()[0]
        self._input = first.name
        # a graph exported with a fixed batch of 1 runs image by image
        self._one_at_a_time = first.shape[0] == 1

    def logits(self, batch: np.ndarray) -> np.ndarray:
        if self._one_at_a_time and len(batch) > 1:
            return np.concatenate([self.logits(batch[i : i + 1]) for i in range(len(batch))])
        return np.asarray(self._session.run(None, {self._input: batch})[0])


def normalize_numpy(
    crops: np.ndarray,
    mean: tuple[float, ...] = MEAN,
    std: tuple[float, ...] = STD,
) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 to the normalised ``(N, 3, H, W)`` float32 batch."""
    n, height, width, _ = crops.shape
    # one C-ordered buffer, every step in place: the same float32 operations in the same
    # order as before (so bit-for-bit the same values), ~5x faster than chained temporaries
    # over a transposed view (1.35 -> 0.28 ms for one image, 17.9 -> 3.9 ms for 16)
    batch = np.empty((n, 3, height, width), dtype=np.float32)
    np.copyto(batch, crops.transpose(0, 3, 1, 2), casting="unsafe")
    np.divide(batch, np.float32(255), out=batch)
    np.subtract(batch, np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1), out=batch)
    np.divide(batch, np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1), out=batch)
    return batch


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
