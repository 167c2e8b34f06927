"""Named points where a fault-injection test may SIGKILL a worker (``VQTEST_CRASH_AT``).

Reliability tests set ``VQTEST_CRASH_AT=<point>`` in a worker's environment to kill it at
the exact instant between two steps (say, after the completion commit and before the
publish), the way a power cut would. Unset, as everywhere outside those tests, each call
is one dictionary lookup. Refused in production (``VQ_ENV=production``).
"""

from __future__ import annotations

import os
import signal

AFTER_COMPLETION_COMMIT = "after_completion_commit"  # job final + outbox row, no message
AFTER_RETRY_PLANNED = "after_retry_planned"  # retry in the row and a countdown message
SWEEP_BEFORE_PUBLISH = "sweep_before_publish"  # sweep committed its claims, sent nothing
BATCH_BEFORE_COMPLETION = "batch_before_completion"  # a batch claimed and classified, not stored
# a dataset batch's chunk classified, its lines not stored
BATCH_CHUNK_BEFORE_STORE = "batch_chunk_before_store"
POINTS = frozenset(
    {
        AFTER_COMPLETION_COMMIT,
        AFTER_RETRY_PLANNED,
        SWEEP_BEFORE_PUBLISH,
        BATCH_BEFORE_COMPLETION,
        BATCH_CHUNK_BEFORE_STORE,
    }
)


def crash_point(name: str) -> None:
    """SIGKILL this process if a test armed ``name``."""
    if os.environ.get("VQTEST_CRASH_AT") != name:
        return
    if os.environ.get("VQ_ENV") == "production":
        return
    os.kill(os.getpid(), signal.SIGKILL)
