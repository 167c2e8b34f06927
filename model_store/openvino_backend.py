"""The ``openvino`` backend: the same ONNX graph as ``onnxruntime``, compiled by OpenVINO for the CPU.

It reads the ONNX file itself (the cached export of a torch model, an imported ONNX file or
an int8 version), so the uint8 crops, their normalisation (``normalize_numpy``) and the
softmax are the ones the ONNX Runtime backend uses: only the forward pass differs.
fp32 graphs are compiled with an f32 inference precision: on CPUs with bf16 units OpenVINO
would otherwise pick bf16 and the answers would drift by ~1e-2.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

DEVICE = "CPU"


class OpenVinoRunner:
    """Callable like ``OnnxRunner``: ``(N, 3, H, W)`` float32 in, logits out."""

    def __init__(self, path: Path, threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time, all threads on it
        }
        self._compiled = core.compile_model(model, DEVICE, config)
        self._request = self._compiled.create_infer_request()
        shape = model.inputs[0].get_partial_shape()
        self._one_at_a_time = shape[0].is_static and shape[0].get_length() == 1
        self.provider = f"openvino:{DEVICE}"
        self._lock = threading.Lock()  # one infer request: one batch at a time

    def logits(self, batch: np.ndarray) -> np.ndarray:
        if self._one_at_a_time and len(batch) > 1:
            return np.concatenate([self.logits(batch[i : i + 1]) for i in range(len(batch))])
        # copy out: the request's output buffer is reused by the next call
        with self._lock:
            return np.array(self._request.infer({0: batch})[0], copy=True)
