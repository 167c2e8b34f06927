"""The raw limit: decode + preprocess + forward in one process, no serving at all."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from model_store.inference import BatchClassifier
from model_store.preprocess import IMAGENET_PREPROCESSING, Preprocessing, to_model_input
from visionqueue.core.images import decode_image

MAX_PIXELS = 60_000_000


@dataclass(frozen=True)
class RawResult:
    backend: str
    batch: int
    images_per_s: float
    p50_ms: float  # per call (one batch)


def _crop(data: bytes, prep: Preprocessing = IMAGENET_PREPROCESSING) -> np.ndarray:
    return to_model_input(decode_image(data, MAX_PIXELS), prep)


def measure_batch(
    model: BatchClassifier, payloads: list[bytes], batch: int, seconds: float
) -> RawResult:
    """Run decode+preprocess+forward on batches of ``batch`` images for ``seconds``."""
    prep = model.info.preprocessing
    for _ in range(2):  # warm-up
        model.predict_proba(
            np.stack([_crop(payloads[i % len(payloads)], prep) for i in range(batch)])
        )
    latencies: list[float] = []
    done = 0
    i = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        crops = [_crop(payloads[(i + k) % len(payloads)], prep) for k in range(batch)]
        model.predict_proba(np.stack(crops))
        latencies.append(time.perf_counter() - t0)
        done += batch
        i += batch
    elapsed = time.perf_counter() - start
    return RawResult(model.info.backend, batch, done / elapsed, statistics.median(latencies) * 1000)
