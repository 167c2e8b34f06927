"""Crops on the wire to a classifier served on its own: base64 of each crop's raw uint8 bytes.

BentoML refuses its pickle protocol on a service served alone and sends an array as nested
JSON lists: ~70 ms of CPU to encode one 224x224x3 crop and ~80 ms to parse it, twice the
forward pass. Packed, a crop costs under 1 ms each way. Each model's classifier has a batch API
taking packed crops (``packed_api``); a batch still never mixes models.
"""

from __future__ import annotations

import base64
import math

import numpy as np

PRIORITIZED_PREFIX = "prioritized_"
PACKED_PREFIX = "packed_"


def packed_api(api: str) -> str:
    """The packed twin of a model's batch API (no model's own API starts with the prefix)."""
    return PACKED_PREFIX + api


def prioritized_api(api: str) -> str:
    """The HTTP twin of a model's batch API that joins the classifier's priority queue."""
    return PRIORITIZED_PREFIX + api


def pack_crops(crops: np.ndarray) -> list[str]:
    """Encode ``(N, S, S, 3)`` uint8 crops, one base64 string each."""
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[3] != 3:
        raise ValueError(f"expected (N, S, S, 3) uint8 crops, got {crops.dtype} {crops.shape}")
    return [base64.b64encode(np.ascontiguousarray(crop).tobytes()).decode() for crop in crops]


def unpack_crops(packed: list[str]) -> np.ndarray:
    """Decode ``pack_crops``' strings back to ``(N, S, S, 3)`` uint8 crops (square, RGB)."""
    crops = []
    for item in packed:
        raw = base64.b64decode(item, validate=True)
        side = math.isqrt(len(raw) // 3)
        if not raw or side * side * 3 != len(raw):
            raise ValueError(f"a packed crop of {len(raw)} bytes is not a square RGB image")
        crops.append(np.frombuffer(raw, np.uint8).reshape(side, side, 3))
    if len({c.shape for c in crops}) > 1:
        raise ValueError("packed crops of different sizes in one batch")
    return np.stack(crops) if crops else np.zeros((0, 0, 0, 3), np.uint8)
