"""Hot-path fixes for BentoML 1.4, applied in every Bento worker (``service.py`` imports it).

``IOMixin.mime_type`` builds a pydantic ``TypeAdapter`` and a full JSON schema of the IO
model on every call, and BentoML calls it on every response (and on the client side of
every inter-service call) to pick the ``Content-Type``. The answer depends on the class
only, so it is computed once per class. Measured with py-spy on the classifier: ~5% of
the event loop's samples at concurrency 1 went to building that schema.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def cache_io_mime_types() -> None:
    """Memoise ``IOMixin.mime_type`` per IO class (idempotent)."""
    from _bentoml_sdk.io_models import IOMixin

    compute = IOMixin.mime_type.__func__  # type: ignore[attr-defined]
    cache: dict[type, str] = {}

    def mime_type(cls: Any) -> str:
        try:
            return cache[cls]
        except KeyError:
            return cache.setdefault(cls, compute(cls))

    mime_type.__wrapped__ = compute  # type: ignore[attr-defined]
    IOMixin.mime_type = classmethod(mime_type)  # type: ignore[assignment,method-assign]


def apply() -> None:
    cache_io_mime_types()
