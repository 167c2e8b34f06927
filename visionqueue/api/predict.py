"""``POST /predict``'s own rule: ``top_k`` (the classifying is the data plane's, ``visionqueue.dataplane``)."""

from __future__ import annotations

from typing import Any

from visionqueue.core.errors import Unprocessable

MAX_TOP_K = 20


def check_top_k(value: Any) -> int:
    """Return ``top_k`` if it is an integer in 1..20, else raise a 422."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise Unprocessable(
            f"top_k must be an integer between 1 and {MAX_TOP_K}", code="invalid_top_k"
        )
    return value
