"""The protocol-neutral request and answer of the data plane.

Every route (``/predict``, v2, TorchServe, the web page) and the job workers build a
``ClassifyRequest``; the ``DataPlane`` answers it with ``Classified``. Neither knows HTTP,
BentoML or a protocol's body: the adapters translate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visionqueue.dataplane.priority import SYNC_PRIORITY, Priority

Image = bytes | Path | np.ndarray  # an encoded upload, its spooled file, or decoded RGB pixels
Version = dict[str, Any]  # a served version's description (model_store.serving.describe)


@dataclass(frozen=True)
class ClassifyRequest:
    """Classify ``images`` together with ``model`` (None: the default served model)."""

    images: list[Image]
    model: str | None = None
    priority: Priority = SYNC_PRIORITY
    deadline: float | None = None  # time.monotonic() past which it is not classified (504)


@dataclass(frozen=True)
class Classified:
    """The answer to a ``ClassifyRequest``: one probability row per image, in order."""

    model: str  # the served name that answered
    probs: np.ndarray  # (N, C) float32
    version: Version  # the exact version that ran every row
    preprocessing: list[str]  # how each image was decoded: "exact" or "jpeg-draft-1/N"
    forward_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per row
    decode_s: float = 0.0  # decoding and cropping every image (its last attempt)
    classify_s: float = 0.0  # the round trip to the classifier (its last attempt)


@dataclass
class Timing:
    """Where one request's time went, filled in by the data plane for the route to report
    (``/predict``'s ``Server-Timing`` header): seconds."""

    decode_s: float = 0.0
    classify_s: float = 0.0
    forward_s: float = 0.0

    def record(self, classified: Classified) -> None:
        self.decode_s, self.classify_s = classified.decode_s, classified.classify_s
        self.forward_s = float(classified.forward_s.max()) if len(classified.forward_s) else 0.0
