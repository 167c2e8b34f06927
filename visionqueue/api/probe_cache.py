"""Reuse a backend probe's answer for a few seconds, so probes cost the same at any request rate."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class CachedProbe(Generic[T]):
    """Call ``probe`` at most once per ``ttl_s`` seconds; callers meanwhile get its last answer.

    Callers that arrive while a probe runs wait for it and share its answer (one query, not
    one per caller). Failures are answers too: ``probe`` reports them in its return value.
    ``ttl_s`` 0 probes on every call.
    """

    def __init__(
        self, probe: Callable[[], T], ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._probe = probe
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._answer: tuple[float, T] | None = None

    def get(self) -> T:
        """Return a fresh-enough answer, probing if the last one is older than ``ttl_s``."""
        with self._lock:
            if self._answer is not None and self._clock() - self._answer[0] < self._ttl_s:
                return self._answer[1]
            value = self._probe()
            self._answer = (self._clock(), value)
            return value
