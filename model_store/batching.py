"""Batch-forming policy for BentoML's adaptive batching dispatcher.

BentoML 1.4's dispatcher holds a request back while the mean wait of recent batches says
more may come. Under load that mean grows with queueing delay, and it keeps growing once
load stops: a lone request then waits hundreds of ms for company that never comes (and
its own wait feeds the mean). ``greedy`` keeps BentoML's batching and latency deadline
but never waits on purpose: a batch is dispatched as soon as the model is free, holding
everything that queued while the previous batch ran. An idle server answers at once; a
busy one forms full batches by itself.
"""

from __future__ import annotations

import functools
from typing import Any

POLICIES = ("greedy", "bentoml")


@functools.cache
def use_greedy_batching() -> None:
    """Make every dispatcher in this process dispatch without an intentional wait."""
    from bentoml._internal.marshal.dispatcher import Optimizer

    original = Optimizer.trigger_refresh

    @functools.wraps(original)
    def trigger_refresh(self: Any) -> None:
        original(self)
        self.wait = 0  # learned o_a/o_b still drive BentoML's deadline checks

    Optimizer.trigger_refresh = trigger_refresh  # type: ignore[method-assign]


def apply_policy(policy: str) -> None:
    """Apply ``VQ_BATCH_WAIT_POLICY`` in the classifier process."""
    if policy not in POLICIES:
        raise ValueError(f"unknown batch policy {policy!r}; choose from {POLICIES}")
    if policy == "greedy":
        use_greedy_batching()
